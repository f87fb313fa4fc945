package client_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// flakyCountdown fails the first failFirst Countdown calls with unavailable
// before sending anything, and records each call's idempotency key and
// attempt header.
type flakyCountdown struct {
	echo.Handler
	failFirst atomic.Int64
	calls     atomic.Int64
	mu        sync.Mutex
	keys      []string
	attempts  []string
}

func (h *flakyCountdown) Countdown(ctx context.Context, req *echov1.CountdownRequest, stream *server.ServerStream[echov1.CountdownResponse]) error {
	n := h.calls.Add(1)
	if ci, ok := server.CallInfoFromContext(ctx); ok {
		h.mu.Lock()
		h.keys = append(h.keys, ci.RequestHeader().Get(tether.MetadataIdempotencyKey))
		h.attempts = append(h.attempts, ci.RequestHeader().Get(tether.MetadataAttempt))
		h.mu.Unlock()
	}
	if ff := h.failFirst.Load(); ff < 0 || n <= ff {
		return tether.Errorf(tether.CodeUnavailable, "not yet (call %d)", n)
	}
	return h.Handler.Countdown(ctx, req, stream)
}

// countdownWithRetry is Countdown with a declared retry policy, as the
// generator emits it for (tether.v1.retry) on a server-streaming method.
var countdownWithRetry = &client.Method{
	Spec: tether.Spec{Procedure: echov1.EchoServiceCountdownProcedure, StreamType: tether.StreamTypeServer},
	Retry: &client.RetryPolicy{
		MaxAttempts:    3,
		InitialBackoff: time.Millisecond,
		MaxBackoff:     10 * time.Millisecond,
		DeadLetter:     true,
	},
}

func countdown(ctx context.Context, c *client.Client, n uint32) ([]uint32, error) {
	s, err := client.CallServerStream[echov1.CountdownRequest, echov1.CountdownResponse](ctx, c, countdownWithRetry, &echov1.CountdownRequest{Count: n})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var got []uint32
	for {
		res, err := s.Receive()
		if errors.Is(err, io.EOF) {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got = append(got, res.GetValue())
	}
}

// TestServerStreamRetried (issue 10 item 22): a server stream with
// max_attempts 3 against a server that fails the first two attempts with
// unavailable before any message succeeds on the third, with the same
// idempotency key and numbered attempts.
func TestServerStreamRetried(t *testing.T) {
	h := &flakyCountdown{}
	h.failFirst.Store(2)
	url := startServer(t, h)
	c := dial(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got, err := countdown(ctx, c, 3)
	if err != nil || len(got) != 3 || got[0] != 3 || got[2] != 1 {
		t.Fatalf("countdown: %v, %v; want [3 2 1] after 2 retries (handler ran %d times)", got, err, h.calls.Load())
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.keys) != 3 || h.keys[0] == "" || h.keys[1] != h.keys[0] || h.keys[2] != h.keys[0] {
		t.Errorf("idempotency keys %q, want one key on 3 attempts", h.keys)
	}
	if h.attempts[0] != "" || h.attempts[1] != "2" || h.attempts[2] != "3" {
		t.Errorf("attempt headers %q, want \"\", 2, 3", h.attempts)
	}
}

// TestServerStreamDeadLettered (issue 10 item 22): a server stream whose
// every attempt fails before any message is parked with its request after
// max_attempts, and its replay reads the stream to the end.
func TestServerStreamDeadLettered(t *testing.T) {
	h := &flakyCountdown{}
	h.failFirst.Store(-1)
	url := startServer(t, h)
	store := dlq.NewMemoryStore()
	defer store.Close()
	c := dial(t, url, client.WithDeadLetterQueue(store))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	_, err := countdown(ctx, c, 2)
	var dl *client.DeadLetterError
	if !errors.Is(err, client.ErrDeadLettered) || !errors.As(err, &dl) || tether.CodeOf(err) != tether.CodeUnavailable {
		t.Fatalf("countdown against a failing server: %v, want a dead letter with code unavailable (handler ran %d times)", err, h.calls.Load())
	}
	if n := h.calls.Load(); n != 3 {
		t.Errorf("handler ran %d times, want 3 (max_attempts)", n)
	}
	e, err := store.Get(ctx, dl.ID)
	if err != nil {
		t.Fatal(err)
	}
	if e.Procedure != echov1.EchoServiceCountdownProcedure || !e.ServerStreaming || e.Attempts != 3 || len(e.Request) == 0 {
		t.Errorf("entry %+v, want the Countdown request, server-streaming, 3 attempts", e)
	}

	// Once the server is healthy, the replay reads the stream and deletes
	// the entry.
	h.failFirst.Store(0)
	h.calls.Store(1 << 20)
	if _, err := dlq.Replay(ctx, store, c, dl.ID); err != nil {
		t.Fatalf("replay: %v", err)
	}
	if n, _ := store.Len(ctx); n != 0 {
		t.Errorf("%d entries left after a successful replay", n)
	}
}

// TestServerStreamNotRetriedAfterFirstMessage: once a response has been
// delivered, the call is committed: its error is the caller's.
func TestServerStreamNotRetriedAfterFirstMessage(t *testing.T) {
	h := &failAfterOne{}
	url := startServer(t, h)
	c := dial(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got, err := countdown(ctx, c, 3)
	if tether.CodeOf(err) != tether.CodeUnavailable || errors.Is(err, client.ErrDeadLettered) || len(got) != 1 {
		t.Fatalf("countdown: %v, %v; want one message, then unavailable", got, err)
	}
	if n := h.calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

type failAfterOne struct {
	echo.Handler
	calls atomic.Int64
}

func (h *failAfterOne) Countdown(ctx context.Context, req *echov1.CountdownRequest, stream *server.ServerStream[echov1.CountdownResponse]) error {
	h.calls.Add(1)
	if err := stream.Send(&echov1.CountdownResponse{Value: req.GetCount()}); err != nil {
		return err
	}
	return tether.Errorf(tether.CodeUnavailable, "gone after one")
}
