package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/internal/faultproxy"
	"github.com/tetherrpc/tether/server"
)

// floodHandler streams as fast as flow control lets it and counts what it
// managed to send; its Say reports when its context ends.
type floodHandler struct {
	echo.Handler
	sent     atomic.Int64
	started  chan struct{}
	canceled chan time.Time
	panicky  bool
}

func newFloodHandler() *floodHandler {
	return &floodHandler{started: make(chan struct{}, 16), canceled: make(chan time.Time, 16)}
}

func (h *floodHandler) Countdown(ctx context.Context, req *echov1.CountdownRequest, stream *server.ServerStream[echov1.CountdownResponse]) error {
	for i := req.GetCount(); i > 0; i-- {
		if err := stream.Send(&echov1.CountdownResponse{Value: i, Payload: req.GetPayload()}); err != nil {
			return err
		}
		h.sent.Add(int64(len(req.GetPayload())))
	}
	return nil
}

func (h *floodHandler) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	if h.panicky && req.GetText() == "panic" {
		panic("boom")
	}
	if req.GetSleepMillis() == 0 {
		return h.Handler.Say(ctx, req)
	}
	h.started <- struct{}{}
	select {
	case <-ctx.Done():
		h.canceled <- time.Now()
		return nil, ctx.Err()
	case <-time.After(time.Duration(req.GetSleepMillis()) * time.Millisecond):
		return &echov1.SayResponse{Text: req.GetText()}, nil
	}
}

// TestSlowConsumerDoesNotBlockOthers: a server stream whose client stops
// reading fills its window and stops; the other calls on the same
// connection go on, and what the server managed to send stays bounded by the
// stream window plus the writer's queue.
func TestSlowConsumerDoesNotBlockOthers(t *testing.T) {
	h := newFloodHandler()
	e := newEnv(t, envConfig{handler: h})
	ctx := testCtx(t)
	stream, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: 1 << 30, Payload: make([]byte, 1024)})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if _, err := stream.Receive(); err != nil { // one message, then stop reading
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := mixedCall(ctx, e.echo, i); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	time.Sleep(200 * time.Millisecond) // let the flooder hit its limit
	sent := h.sent.Load()
	time.Sleep(200 * time.Millisecond)
	if again := h.sent.Load(); again != sent {
		t.Fatalf("server kept sending to a client that does not read: %d then %d bytes", sent, again)
	}
	// The client's window (1 MiB by default) plus framing overhead.
	if limit := int64(client.DefaultStreamWindow + 64<<10); sent > limit {
		t.Fatalf("server sent %d bytes to a stalled stream; want at most %d", sent, limit)
	}
	t.Logf("stalled stream holds %d bytes in flight", sent)
}

func TestCancelReachesHandler(t *testing.T) {
	h := newFloodHandler()
	e := newEnv(t, envConfig{handler: h})
	ctx, cancel := context.WithCancel(testCtx(t))
	errc := make(chan error, 1)
	go func() {
		_, err := e.echo.Say(ctx, &echov1.SayRequest{SleepMillis: 10_000})
		errc <- err
	}()
	<-h.started
	at := time.Now()
	cancel()
	if err := <-errc; tether.CodeOf(err) != tether.CodeCanceled {
		t.Fatalf("err = %v, want canceled", err)
	}
	select {
	case when := <-h.canceled:
		if d := when.Sub(at); d > 100*time.Millisecond {
			t.Fatalf("cancel reached the handler after %v, want within 100ms", d)
		}
	case <-time.After(time.Second):
		t.Fatal("the handler's context was not canceled")
	}
}

func TestDeadline(t *testing.T) {
	h := newFloodHandler()
	e := newEnv(t, envConfig{handler: h})
	// Connect first so the deadline measures the call alone.
	if _, err := e.echo.Say(testCtx(t), &echov1.SayRequest{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := e.echo.Say(ctx, &echov1.SayRequest{SleepMillis: 10_000})
	if tether.CodeOf(err) != tether.CodeDeadlineExceeded {
		t.Fatalf("err = %v, want deadline_exceeded", err)
	}
	select {
	case <-h.canceled:
	case <-time.After(time.Second):
		t.Fatal("the handler's context was not canceled at the deadline")
	}
}

// TestServerEnforcesDeadline: the server cancels the handler at the
// deadline carried in OPEN even when the client does not reset the stream.
func TestServerEnforcesDeadline(t *testing.T) {
	h := newFloodHandler()
	e := newEnv(t, envConfig{handler: h})
	ctx, cancel := context.WithTimeout(testCtx(t), 80*time.Millisecond)
	defer cancel()
	stream, err := e.echo.Countdown(testCtx(t), &echov1.CountdownRequest{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	stream.Close()
	if _, err := e.echo.Say(ctx, &echov1.SayRequest{SleepMillis: 10_000}); tether.CodeOf(err) != tether.CodeDeadlineExceeded {
		t.Fatalf("err = %v, want deadline_exceeded", err)
	}
	select {
	case <-h.canceled:
	case <-time.After(time.Second):
		t.Fatal("handler not canceled")
	}
}

func TestMessageTooLarge(t *testing.T) {
	e := newEnv(t, envConfig{
		srvOpts: []server.Option{server.WithMaxMessageSize(1 << 20)},
		cliOpts: []client.Option{client.WithMaxMessageSize(4 << 20)},
	})
	ctx := testCtx(t)
	chat, err := e.echo.Chat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer chat.Close()
	if err := chat.Send(&echov1.ChatRequest{Text: "before"}); err != nil {
		t.Fatal(err)
	}
	if _, err := chat.Receive(); err != nil {
		t.Fatal(err)
	}
	// Request over the server's limit: resource_exhausted for this call.
	_, err = e.echo.Say(ctx, &echov1.SayRequest{Payload: make([]byte, 2<<20)})
	if tether.CodeOf(err) != tether.CodeResourceExhausted {
		t.Fatalf("err = %v, want resource_exhausted", err)
	}
	if !strings.Contains(err.Error(), "exceeds the limit") {
		t.Fatalf("error does not explain the limit: %v", err)
	}
	// Request over the client's own limit: refused before sending.
	_, err = e.echo.Say(ctx, &echov1.SayRequest{Payload: make([]byte, 5<<20)})
	if tether.CodeOf(err) != tether.CodeResourceExhausted {
		t.Fatalf("err = %v, want resource_exhausted", err)
	}
	// The connection's other call is unaffected.
	if err := chat.Send(&echov1.ChatRequest{Text: "after"}); err != nil {
		t.Fatal(err)
	}
	if res, err := chat.Receive(); err != nil || res.GetText() != "echo: after" {
		t.Fatalf("chat after oversize call: %v %v", res, err)
	}
}

func TestResponseTooLarge(t *testing.T) {
	e := newEnv(t, envConfig{cliOpts: []client.Option{client.WithMaxMessageSize(1 << 20)}})
	ctx := testCtx(t)
	// Collect answers with every text joined: three requests under the
	// client's 1 MiB limit make one response over it.
	stream, err := e.echo.Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	for range 3 {
		if err := stream.Send(&echov1.CollectRequest{Text: strings.Repeat("x", 600<<10)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := stream.CloseAndReceive(); tether.CodeOf(err) != tether.CodeResourceExhausted {
		t.Fatalf("err = %v, want resource_exhausted", err)
	}
	if _, err := e.echo.Say(ctx, &echov1.SayRequest{Text: "ok"}); err != nil {
		t.Fatalf("next call: %v", err)
	}
}

func TestHandlerPanic(t *testing.T) {
	h := newFloodHandler()
	h.panicky = true
	e := newEnv(t, envConfig{handler: h, srvOpts: []server.Option{server.WithLogger(discardLogger())}})
	ctx := testCtx(t)
	_, err := e.echo.Say(ctx, &echov1.SayRequest{Text: "panic"})
	if tether.CodeOf(err) != tether.CodeInternal {
		t.Fatalf("err = %v, want internal", err)
	}
	if res, err := e.echo.Say(ctx, &echov1.SayRequest{Text: "still here"}); err != nil || res.GetText() != "still here" {
		t.Fatalf("after panic: %v %v", res, err)
	}
}

// TestSilentPeer: the proxy between client and server stops forwarding
// without closing anything (a half-open connection). The client's heartbeat
// detects it and the call in flight fails with unavailable.
func TestSilentPeer(t *testing.T) {
	var proxy *faultproxy.Proxy
	interval, timeout := 100*time.Millisecond, 200*time.Millisecond
	h := newFloodHandler()
	e := newEnv(t, envConfig{
		handler: h,
		cliOpts: []client.Option{client.WithHeartbeat(interval, timeout)},
		dialURL: throughProxy(t, &proxy),
	})
	ctx := testCtx(t)
	if _, err := e.echo.Say(ctx, &echov1.SayRequest{}); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := e.echo.Say(ctx, &echov1.SayRequest{SleepMillis: 10_000}, client.WithoutRetries())
		errc <- err
	}()
	<-h.started
	proxy.Stall()
	at := time.Now()
	select {
	case err := <-errc:
		if tether.CodeOf(err) != tether.CodeUnavailable {
			t.Fatalf("err = %v, want unavailable", err)
		}
		d := time.Since(at)
		t.Logf("silent peer detected after %v (heartbeat %v + %v)", d, interval, timeout)
		if d > interval+timeout+time.Second {
			t.Fatalf("detected after %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("silent peer not detected")
	}
	proxy.Resume()
}

func TestShutdownDrains(t *testing.T) {
	h := newFloodHandler()
	e := newEnv(t, envConfig{handler: h})
	ctx := testCtx(t)
	errc := make(chan error, 1)
	go func() {
		res, err := e.echo.Say(ctx, &echov1.SayRequest{Text: "in flight", SleepMillis: 300})
		if err == nil && res.GetText() != "in flight" {
			err = errors.New("wrong response")
		}
		errc <- err
	}()
	<-h.started
	shut := make(chan error, 1)
	go func() { shut <- e.srv.Shutdown(ctx) }()
	// Wait until the client has seen GOAWAY.
	for e.cli.State() == client.StateReady {
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := e.echo.Say(ctx, &echov1.SayRequest{}, client.FailFast()); tether.CodeOf(err) != tether.CodeUnavailable {
		t.Fatalf("new call during shutdown: %v, want unavailable", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("in-flight call: %v", err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestHandshakeChecks(t *testing.T) {
	srv := server.New(server.WithAllowedOrigins("https://app.example"))
	e := newEnv(t, envConfig{})
	_ = e
	hs := newHTTPServer(t, srv)
	dial := func(origin string, protos []string) (int, error) {
		d := websocket.Dialer{Subprotocols: protos}
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		ws, resp, err := d.Dial(hs, h)
		if ws != nil {
			ws.Close()
		}
		if resp == nil {
			return 0, err
		}
		return resp.StatusCode, err
	}
	if code, _ := dial("https://evil.example", []string{tether.Subprotocol}); code != http.StatusForbidden {
		t.Fatalf("foreign origin: %d, want 403", code)
	}
	if code, err := dial("https://app.example", []string{tether.Subprotocol}); code != http.StatusSwitchingProtocols {
		t.Fatalf("allowed origin: %d %v, want 101", code, err)
	}
	if code, _ := dial("", []string{"tether.v0"}); code != http.StatusBadRequest {
		t.Fatalf("unknown subprotocol: %d, want 400", code)
	}
	// The client reports the server's reason.
	c, err := client.New(hs, client.WithHandshakeHeader(http.Header{"Origin": {"https://evil.example"}}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = echov1.NewEchoServiceClient(c).Say(testCtx(t), &echov1.SayRequest{})
	if tether.CodeOf(err) != tether.CodePermissionDenied || !strings.Contains(err.Error(), "origin not allowed") {
		t.Fatalf("err = %v, want permission_denied naming the origin check", err)
	}
}

func TestUnknownProcedure(t *testing.T) {
	srv := server.New() // nothing registered
	hs := newHTTPServer(t, srv)
	c, err := client.New(hs)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = echov1.NewEchoServiceClient(c).Say(testCtx(t), &echov1.SayRequest{})
	if tether.CodeOf(err) != tether.CodeUnimplemented {
		t.Fatalf("err = %v, want unimplemented", err)
	}
}

var _ = io.EOF

// A unary call whose request waits to be sent (no credit, a full write
// queue: the connection is stalled) and whose deadline passes meanwhile
// fails with its context's cause, a *tether.Error, as every call error is
// (client/doc.go); the send's own bare context error is not what it
// returns.
func TestStalledUnarySendEndsWithCause(t *testing.T) {
	var proxy *faultproxy.Proxy
	e := newEnv(t, envConfig{
		dialURL: throughProxy(t, &proxy),
	})
	if _, err := e.echo.Say(testCtx(t), &echov1.SayRequest{}); err != nil {
		t.Fatal(err)
	}
	proxy.Stall()
	defer proxy.Resume()
	for _, size := range []int{1 << 20, 6 << 20} { // waits for credit; for room in the write queue too
		cause := tether.Errorf(tether.CodeDeadlineExceeded, "the test's deadline (%d bytes)", size)
		ctx, cancel := context.WithTimeoutCause(testCtx(t), 300*time.Millisecond, cause)
		_, err := e.echo.Say(ctx, &echov1.SayRequest{Payload: make([]byte, size)}, client.WithoutRetries())
		cancel()
		if err != cause {
			t.Errorf("%d-byte request: err = %v (%#v), want the context's cause %v", size, err, err, cause)
		}
	}
}
