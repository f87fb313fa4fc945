package client_test

import (
	"context"
	"errors"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// flakySay fails the first failFirst Say calls with unavailable and records
// each call's request metadata.
type flakySay struct {
	echo.Handler
	failFirst int64
	calls     atomic.Int64
	mu        sync.Mutex
	headers   []tether.Metadata
}

func (h *flakySay) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	n := h.calls.Add(1)
	if ci, ok := server.CallInfoFromContext(ctx); ok {
		h.mu.Lock()
		h.headers = append(h.headers, ci.RequestHeader().Clone())
		h.mu.Unlock()
	}
	if n <= h.failFirst {
		return nil, tether.Errorf(tether.CodeUnavailable, "not yet (call %d)", n)
	}
	return h.Handler.Say(ctx, req)
}

// TestGeneratedKeyReachesServer (issue 15): a unary call without
// interceptors keeps its generated idempotency key out of a header map; the
// key still reaches the server with the caller's metadata, is the same on
// every attempt, and is the one its dead letter records.
func TestGeneratedKeyReachesServer(t *testing.T) {
	h := &flakySay{failFirst: 3}
	srv := server.New(server.WithLogger(quietLogger()))
	echov1.RegisterEchoServiceHandler(srv, h)
	store := dlq.NewMemoryStore()
	defer store.Close()
	c := dial(t, startServer(t, srv), client.WithDeadLetterQueue(store))
	// Say as a method with side effects and a retry policy.
	m := &client.Method{
		Spec:  tether.Spec{Procedure: echov1.EchoServiceSayProcedure, StreamType: tether.StreamTypeUnary},
		Retry: &client.RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Millisecond, DeadLetter: true},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	md := tether.Metadata{"a-first": {"1"}, "x-user": {"ada"}}
	req := &echov1.SayRequest{Text: "hello"}
	hexKey := regexp.MustCompile(`^[0-9a-f]{32}$`)

	// Two failed attempts, then the dead letter.
	err := c.Invoke(ctx, m, req, &echov1.SayResponse{}, client.WithHeader(md))
	var dl *client.DeadLetterError
	if !errors.As(err, &dl) {
		t.Fatalf("err = %v, want a dead letter", err)
	}
	// Then a call that succeeds on its second attempt.
	res := &echov1.SayResponse{}
	if err := c.Invoke(ctx, m, req, res, client.WithHeader(md)); err != nil {
		t.Fatal(err)
	}
	if res.GetText() != "hello" {
		t.Fatalf("response %q", res.GetText())
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.headers) != 4 {
		t.Fatalf("%d attempts reached the server, want 4", len(h.headers))
	}
	for i, got := range h.headers {
		key := got.Get(tether.MetadataIdempotencyKey)
		if !hexKey.MatchString(key) {
			t.Errorf("attempt %d: key %q, want 32 hex digits", i, key)
		}
		if got.Get("a-first") != "1" || got.Get("x-user") != "ada" {
			t.Errorf("attempt %d: metadata %v lost the caller's", i, got)
		}
	}
	k1, k2 := h.headers[0].Get(tether.MetadataIdempotencyKey), h.headers[2].Get(tether.MetadataIdempotencyKey)
	if h.headers[1].Get(tether.MetadataIdempotencyKey) != k1 || h.headers[3].Get(tether.MetadataIdempotencyKey) != k2 {
		t.Errorf("a call's attempts carried different keys: %v", h.headers)
	}
	if k1 == k2 {
		t.Errorf("two calls carried the same key %q", k1)
	}
	if h.headers[1].Get(tether.MetadataAttempt) != "2" {
		t.Errorf("second attempt: attempt header %q", h.headers[1].Get(tether.MetadataAttempt))
	}
	e, err := store.Get(ctx, dl.ID)
	if err != nil {
		t.Fatal(err)
	}
	if e.IdempotencyKey != k1 || tether.Metadata(e.Metadata).Get(tether.MetadataIdempotencyKey) != k1 || tether.Metadata(e.Metadata).Get("x-user") != "ada" {
		t.Errorf("dead letter: key %q, metadata %v; want key %q", e.IdempotencyKey, e.Metadata, k1)
	}
	want, _ := proto.Marshal(req)
	if string(e.Request) != string(want) {
		t.Errorf("dead letter request %x, want %x", e.Request, want)
	}
}
