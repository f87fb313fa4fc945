package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
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
	url := startEcho(t, h)
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
	url := startEcho(t, h)
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
	url := startEcho(t, h)
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

// flakyCollect fails the first failFirst Collect calls with unavailable:
// with early set, at once, before reading any request; otherwise after
// reading them all. It records what each call received.
type flakyCollect struct {
	echo.Handler
	failFirst atomic.Int64
	early     bool
	calls     atomic.Int64
	mu        sync.Mutex
	got       [][]string
}

func (h *flakyCollect) Collect(ctx context.Context, stream *server.ClientStream[echov1.CollectRequest]) (*echov1.CollectResponse, error) {
	n := h.calls.Add(1)
	fail := n <= h.failFirst.Load()
	if fail && h.early {
		return nil, tether.Errorf(tether.CodeUnavailable, "not yet (call %d)", n)
	}
	var texts []string
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		texts = append(texts, req.GetText())
	}
	h.mu.Lock()
	h.got = append(h.got, texts)
	h.mu.Unlock()
	if fail {
		return nil, tether.Errorf(tether.CodeUnavailable, "not yet (call %d)", n)
	}
	return &echov1.CollectResponse{Joined: strings.Join(texts, " "), Count: uint32(len(texts))}, nil
}

// collectWithRetry is Collect with a declared retry policy (no dead letter:
// the generator refuses it on client streams).
var collectWithRetry = &client.Method{
	Spec:  tether.Spec{Procedure: echov1.EchoServiceCollectProcedure, StreamType: tether.StreamTypeClient},
	Retry: &client.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond},
}

func collect(ctx context.Context, c *client.Client, texts ...string) (*echov1.CollectResponse, error) {
	return collectPaced(ctx, c, 0, texts...)
}

// collectPaced sends texts with a pause between them, so that an attempt
// the server fails at once ends while the client is still sending.
func collectPaced(ctx context.Context, c *client.Client, pause time.Duration, texts ...string) (*echov1.CollectResponse, error) {
	s, err := client.CallClientStream[echov1.CollectRequest, echov1.CollectResponse](ctx, c, collectWithRetry)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	for _, t := range texts {
		time.Sleep(pause)
		if err := s.Send(&echov1.CollectRequest{Text: t}); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, err
		}
	}
	return s.CloseAndReceive()
}

// TestClientStreamRetried (issue 10 item 22): a client stream with
// max_attempts 3 whose server fails the first two attempts, after reading
// every request or at once while the client is still sending, succeeds on
// the third with every request re-sent in order.
func TestClientStreamRetried(t *testing.T) {
	for _, early := range []bool{false, true} {
		t.Run(map[bool]string{false: "after_reading", true: "at_once"}[early], func(t *testing.T) {
			h := &flakyCollect{early: early}
			h.failFirst.Store(2)
			url := startEcho(t, h)
			c := dial(t, url)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			texts := make([]string, 50)
			for i := range texts {
				texts[i] = fmt.Sprint("m", i)
			}
			var pause time.Duration
			if early {
				pause = time.Millisecond
			}
			res, err := collectPaced(ctx, c, pause, texts...)
			if err != nil || res.GetJoined() != strings.Join(texts, " ") {
				t.Fatalf("collect: %q, %v; want every message joined (handler ran %d times)", res.GetJoined(), err, h.calls.Load())
			}
			if n := h.calls.Load(); n != 3 {
				t.Errorf("handler ran %d times, want 3", n)
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			for i, got := range h.got {
				if i == len(h.got)-1 && len(got) != len(texts) {
					t.Errorf("the successful attempt got %d requests, want %d", len(got), len(texts))
				}
			}
		})
	}
}

// TestClientStreamCommittedPastBuffer: a client stream that sent more than
// RetryBufferSize is committed and not retried.
func TestClientStreamCommittedPastBuffer(t *testing.T) {
	h := &flakyCollect{}
	h.failFirst.Store(2)
	url := startEcho(t, h)
	c := dial(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	big := strings.Repeat("x", 64<<10)
	texts := []string{big, big, big, big, big} // 320 KiB > 256 KiB
	_, err := collect(ctx, c, texts...)
	if tether.CodeOf(err) != tether.CodeUnavailable {
		t.Fatalf("collect: %v, want unavailable (not retried)", err)
	}
	if n := h.calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// flakyChat fails the first failFirst Chat calls with unavailable after
// reading one message and before answering.
type flakyChat struct {
	echo.Handler
	failFirst atomic.Int64
	calls     atomic.Int64
}

func (h *flakyChat) Chat(ctx context.Context, stream *server.BidiStream[echov1.ChatRequest, echov1.ChatResponse]) error {
	n := h.calls.Add(1)
	if n <= h.failFirst.Load() {
		if _, err := stream.Receive(); err != nil {
			return err
		}
		return tether.Errorf(tether.CodeUnavailable, "not yet (call %d)", n)
	}
	return h.Handler.Chat(ctx, stream)
}

// TestBidiStreamRetried (issue 10 item 22): a bidi call whose server fails
// before its first response is retried with the messages sent so far; once
// a response has arrived it is committed.
func TestBidiStreamRetried(t *testing.T) {
	h := &flakyChat{}
	h.failFirst.Store(2)
	url := startEcho(t, h)
	c := dial(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m := &client.Method{
		Spec:  tether.Spec{Procedure: echov1.EchoServiceChatProcedure, StreamType: tether.StreamTypeBidi},
		Retry: &client.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond},
	}
	s, err := client.CallBidiStream[echov1.ChatRequest, echov1.ChatResponse](ctx, c, m)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Send(&echov1.ChatRequest{Text: "a"}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	res, err := s.Receive()
	if err != nil || res.GetText() != "echo: a" {
		t.Fatalf("first response: %v, %v; want \"echo: a\" after 2 retries (handler ran %d times)", res, err, h.calls.Load())
	}
	if err := s.Send(&echov1.ChatRequest{Text: "b"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	res, err = s.Receive()
	if err != nil || res.GetText() != "echo: b" {
		t.Fatalf("second response: %v, %v", res, err)
	}
	if _, err := s.Receive(); !errors.Is(err, io.EOF) {
		t.Fatalf("end: %v, want io.EOF", err)
	}
	if n := h.calls.Load(); n != 3 {
		t.Errorf("handler ran %d times, want 3", n)
	}
}

// TestStreamRetryStopsOnClose: Close during a retry's backoff ends the call
// at once with canceled, and a canceled call is not dead-lettered.
func TestStreamRetryStopsOnClose(t *testing.T) {
	h := &flakyCountdown{}
	h.failFirst.Store(-1)
	url := startEcho(t, h)
	store := dlq.NewMemoryStore()
	defer store.Close()
	c := dial(t, url, client.WithDeadLetterQueue(store))
	m := &client.Method{
		Spec:  countdownWithRetry.Spec,
		Retry: &client.RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Hour, MaxBackoff: time.Hour, DeadLetter: true},
	}
	// No deadline: a backoff past the deadline would end the call at once.
	ctx := context.Background()
	s, err := client.CallServerStream[echov1.CountdownRequest, echov1.CountdownResponse](ctx, c, m, &echov1.CountdownRequest{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Receive()
		done <- err
	}()
	for h.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	s.Close()
	select {
	case err := <-done:
		if errors.Is(err, client.ErrDeadLettered) || err == nil {
			t.Errorf("Receive after Close: %v, want the call's error, not a dead letter", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Receive still waiting 20s after Close")
	}
	if n, _ := store.Len(context.Background()); n != 0 {
		t.Errorf("%d entries parked for a closed call", n)
	}
}

// TestDefaultPolicyDoesNotRetryStreams: the client-wide default retry policy
// asserts dedup by key, which the server gives unary calls only; a client
// stream of a method with no policy of its own and no idempotency level is
// not repeated on the default's say-so (the fault checker saw handlers of
// such streams run twice).
func TestDefaultPolicyDoesNotRetryStreams(t *testing.T) {
	h := &flakyCollect{}
	h.failFirst.Store(2)
	url := startEcho(t, h)
	c := dial(t, url, client.WithDefaultRetryPolicy(&client.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := echov1.NewEchoServiceClient(c).Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, text := range []string{"a", "b"} {
		if err := s.Send(&echov1.CollectRequest{Text: text}); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
	}
	if _, err := s.CloseAndReceive(); tether.CodeOf(err) != tether.CodeUnavailable {
		t.Fatalf("CloseAndReceive: %v; want the first attempt's unavailable", err)
	}
	if n := h.calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times; want 1 (the default policy must not repeat a stream)", n)
	}
}
