package client_test

import (
	"context"
	"strings"
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

// downEcho is the echo service whose Say always fails with unavailable,
// counting the runs.
type downEcho struct {
	echo.Handler
	runs atomic.Int64
}

func (h *downEcho) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	h.runs.Add(1)
	return nil, tether.Errorf(tether.CodeUnavailable, "down for maintenance")
}

// startServer serves the handler on 127.0.0.1 and returns its ws:// URL.
// startEcho serves h as the echo service on 127.0.0.1.
func startEcho(t *testing.T, h echov1.EchoServiceHandler, opts ...server.Option) string {
	t.Helper()
	srv := server.New(opts...)
	echov1.RegisterEchoServiceHandler(srv, h)
	return startServer(t, srv)
}

func dial(t *testing.T, url string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestReplayNeverParks (issue 10 item 5): a client whose default retry
// policy dead-letters replays an entry to a server that keeps failing. The
// replay must update the entry it replays, never park a new copy, and
// ReplayAll must end after the entries that existed when it started.
func TestReplayNeverParks(t *testing.T) {
	h := &downEcho{}
	url := startEcho(t, h)
	store := dlq.NewMemoryStore()
	defer store.Close()
	c := dial(t, url,
		client.WithDefaultRetryPolicy(&client.RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Millisecond, DeadLetter: true}),
		client.WithDeadLetterQueue(store))

	req, _ := proto.Marshal(&echov1.SayRequest{Text: "again"})
	id, err := store.Put(context.Background(), &dlq.Entry{
		Procedure:      echov1.EchoServiceSayProcedure,
		Request:        req,
		IdempotencyKey: "k1",
		Attempts:       3,
		LastCode:       uint32(tether.CodeUnavailable),
	})
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ok, failed, err := dlq.ReplayAll(ctx, store, c, dlq.ListOptions{})
	n, _ := store.Len(context.Background())
	if err != nil || ok != 0 || failed != 1 {
		t.Errorf("ReplayAll: %d ok, %d failed, err %v; want 0, 1, nil (store now holds %d entries, handler ran %d times)",
			ok, failed, err, n, h.runs.Load())
	}
	if n != 1 {
		t.Fatalf("store holds %d entries after one failed replay, want 1 (handler ran %d times)", n, h.runs.Load())
	}
	e, err := store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if e.Replays != 1 || e.LastReplay.IsZero() || !strings.Contains(e.LastReplayError, "down for maintenance") {
		t.Errorf("entry after a failed replay: %d replays, last %v, error %q", e.Replays, e.LastReplay, e.LastReplayError)
	}
	if runs := h.runs.Load(); runs != 1 {
		t.Errorf("handler ran %d times for one replay, want 1 (a replay is one attempt)", runs)
	}

	// The same through Replay, and through InvokeRaw directly.
	if _, err := dlq.Replay(ctx, store, c, id); err == nil || errorsIsDeadLettered(err) {
		t.Errorf("Replay: %v, want the call's error, not a dead letter", err)
	}
	if _, err := c.InvokeRaw(ctx, echov1.EchoServiceSayProcedure, req, nil); tether.CodeOf(err) != tether.CodeUnavailable || errorsIsDeadLettered(err) {
		t.Errorf("InvokeRaw: %v, want unavailable and no dead letter", err)
	}
	if n, _ := store.Len(context.Background()); n != 1 {
		t.Errorf("store holds %d entries, want 1", n)
	}
}

func errorsIsDeadLettered(err error) bool {
	return err != nil && strings.Contains(err.Error(), "dead-letter queue as")
}

// recorder is an interceptor that records the unary calls it sees.
type recorder struct {
	mu    sync.Mutex
	calls []recorded
}

type recorded struct {
	procedure        string
	replay           bool
	reqSize, resSize int
	err              error
	key              string
}

func (r *recorder) WrapUnary(next client.UnaryFunc) client.UnaryFunc {
	return func(ctx context.Context, call *client.Call, req, res proto.Message) error {
		err := next(ctx, call, req, res)
		r.mu.Lock()
		r.calls = append(r.calls, recorded{call.Spec.Procedure, call.Replay, proto.Size(req), proto.Size(res), err, call.Header.Get(tether.MetadataIdempotencyKey)})
		r.mu.Unlock()
		return err
	}
}

func (r *recorder) WrapStream(next client.StreamFunc) client.StreamFunc { return next }

// TestReplayGoesThroughInterceptors (issue 10 item 19): a replay is seen by
// the client's interceptors, marked as a replay, with its request and
// response.
func TestReplayGoesThroughInterceptors(t *testing.T) {
	url := startEcho(t, &echo.Handler{})
	rec := &recorder{}
	c := dial(t, url, client.WithInterceptors(rec))
	store := dlq.NewMemoryStore()
	defer store.Close()

	req, _ := proto.Marshal(&echov1.SayRequest{Text: "seen"})
	id, err := store.Put(context.Background(), &dlq.Entry{Procedure: echov1.EchoServiceSayProcedure, Request: req, IdempotencyKey: "k2"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := dlq.Replay(ctx, store, c, id)
	if err != nil {
		t.Fatal(err)
	}
	var out echov1.SayResponse
	if err := proto.Unmarshal(res, &out); err != nil || out.GetText() != "seen" {
		t.Fatalf("replay response %q (%v), want text \"seen\"", res, err)
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.calls) != 1 {
		t.Fatalf("interceptor saw %d calls of one replay, want 1", len(rec.calls))
	}
	got := rec.calls[0]
	if got.procedure != echov1.EchoServiceSayProcedure || !got.replay || got.err != nil || got.key != "k2" ||
		got.reqSize != len(req) || got.resSize != len(res) {
		t.Errorf("interceptor saw %+v, want the replay of %s (key k2, %d-byte request, %d-byte response)", got, echov1.EchoServiceSayProcedure, len(req), len(res))
	}
}
