package client_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/server"
)

// TestUnaryResponseThatDoesNotDecode: a unary response is decoded before
// the call's status is read (the stream lends it only until then). One
// that does not decode fails the call with internal once the server has
// answered OK: it is neither retried nor dead-lettered, since the server
// applied the call; and the next call on the connection is unaffected.
func TestUnaryResponseThatDoesNotDecode(t *testing.T) {
	const procedure = "/tether.test.v1.Odd/Get"
	var runs atomic.Int64
	srv := server.New(server.WithLogger(quietLogger()))
	srv.Register(server.NewUnaryHandler(tether.Spec{Procedure: procedure, StreamType: tether.StreamTypeUnary},
		func(_ context.Context, req *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
			runs.Add(1)
			return &wrapperspb.BytesValue{Value: req.GetValue()}, nil
		}))
	store := dlq.NewMemoryStore()
	defer store.Close()
	c := dial(t, startServer(t, srv), client.WithLogger(quietLogger()), client.WithDeadLetterQueue(store))
	m := &client.Method{
		Spec:  tether.Spec{Procedure: procedure, StreamType: tether.StreamTypeUnary, IdempotencyLevel: tether.IdempotencyIdempotent},
		Retry: &client.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond, DeadLetter: true},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Field 1 as bytes that are not UTF-8: a StringValue cannot take them.
	res := &wrapperspb.StringValue{}
	err := c.Invoke(ctx, m, &wrapperspb.BytesValue{Value: []byte{0xff, 0xfe}}, res)
	if tether.CodeOf(err) != tether.CodeInternal || !strings.Contains(err.Error(), "unmarshal") {
		t.Fatalf("err = %v, want internal: unmarshal", err)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("the handler ran %d times, want 1 (no retry of an answered call)", n)
	}
	if entries, err := store.List(ctx, dlq.ListOptions{}); err != nil || len(entries) != 0 {
		t.Fatalf("dead letters: %d (%v), want none", len(entries), err)
	}

	// The same connection, a response that decodes.
	if err := c.Invoke(ctx, m, &wrapperspb.BytesValue{Value: []byte("fine")}, res); err != nil {
		t.Fatal(err)
	}
	if res.GetValue() != "fine" {
		t.Fatalf("response %q, want %q", res.GetValue(), "fine")
	}
}
