package health_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	healthv1 "github.com/tetherrpc/tether/gen/tether/health/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/health"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// start serves srv on 127.0.0.1 and returns a client of it.
func start(t *testing.T, srv *server.Server) *client.Client {
	t.Helper()
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { _ = srv.Close(); hs.Close() })
	cli, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), client.WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestCheck(t *testing.T) {
	srv := server.New(server.WithLogger(quiet()))
	h := health.Register(srv)
	hc := healthv1.NewHealthServiceClient(start(t, srv))
	ctx := testCtx(t)

	res, err := hc.Check(ctx, &healthv1.HealthCheckRequest{})
	if err != nil || res.GetStatus() != health.Serving {
		t.Fatalf("Check(\"\") = %v, %v; want SERVING", res.GetStatus(), err)
	}
	if _, err := hc.Check(ctx, &healthv1.HealthCheckRequest{Service: "example.echo.v1.EchoService"}); tether.CodeOf(err) != tether.CodeNotFound {
		t.Fatalf("Check(unknown service) = %v, want not_found", err)
	}
	h.SetServingStatus("example.echo.v1.EchoService", health.NotServing)
	res, err = hc.Check(ctx, &healthv1.HealthCheckRequest{Service: "example.echo.v1.EchoService"})
	if err != nil || res.GetStatus() != health.NotServing {
		t.Fatalf("Check(EchoService) = %v, %v; want NOT_SERVING", res.GetStatus(), err)
	}
}

func TestWatch(t *testing.T) {
	srv := server.New(server.WithLogger(quiet()))
	h := health.Register(srv)
	hc := healthv1.NewHealthServiceClient(start(t, srv))
	ctx := testCtx(t)

	const svc = "example.echo.v1.EchoService"
	stream, err := hc.Watch(ctx, &healthv1.HealthCheckRequest{Service: svc})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	next := func(want health.Status) {
		t.Helper()
		msg, err := stream.Receive()
		if err != nil {
			t.Fatalf("Watch ended: %v; want %v", err, want)
		}
		if got := msg.GetStatus(); got != want {
			t.Fatalf("Watch sent %v, want %v", got, want)
		}
	}
	next(health.ServiceUnknown)
	h.SetServingStatus(svc, health.Serving)
	next(health.Serving)
	h.SetServingStatus(svc, health.NotServing)
	next(health.NotServing)
	h.SetServingStatus(svc, health.Serving)
	next(health.Serving)
}

func TestReadinessHandler(t *testing.T) {
	h := health.New()
	probe := func(service string) (int, string) {
		rec := httptest.NewRecorder()
		h.ReadinessHandler(service).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return rec.Code, strings.TrimSpace(rec.Body.String())
	}
	if code, body := probe(""); code != http.StatusOK || body != "SERVING" {
		t.Fatalf("serving: %d %q, want 200 SERVING", code, body)
	}
	if code, _ := probe("other"); code != http.StatusNotFound {
		t.Fatalf("unknown service: %d, want 404", code)
	}
	h.SetServingStatus("", health.NotServing)
	if code, body := probe(""); code != http.StatusServiceUnavailable || body != "NOT_SERVING" {
		t.Fatalf("not serving: %d %q, want 503 NOT_SERVING", code, body)
	}
	h.Resume()
	h.Shutdown()
	h.SetServingStatus("", health.Serving) // ignored after Shutdown
	if code, _ := probe(""); code != http.StatusServiceUnavailable {
		t.Fatalf("after Shutdown: %d, want 503", code)
	}
	h.Resume()
	if code, _ := probe(""); code != http.StatusOK {
		t.Fatalf("after Resume: %d, want 200", code)
	}
}

// TestShutdownFlipsHealthFirst: Server.Shutdown reports NOT_SERVING before
// it sends GOAWAY (the client still has its connection, ready, when the
// status flips), and a Watch in flight gets NOT_SERVING and a clean,
// retryable end instead of holding the drain open.
func TestShutdownFlipsHealthFirst(t *testing.T) {
	srv := server.New(server.WithLogger(quiet()))
	h := health.Register(srv)
	cli := start(t, srv)
	hc := healthv1.NewHealthServiceClient(cli)
	ctx := testCtx(t)
	stream, err := hc.Watch(ctx, &healthv1.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if msg, err := stream.Receive(); err != nil || msg.GetStatus() != health.Serving {
		t.Fatalf("first status: %v %v", msg.GetStatus(), err)
	}
	var stateAtFlip client.State = -1
	srv.OnDrain(func() {
		if st, _ := h.Status(""); st != health.NotServing {
			t.Errorf("OnDrain after health's: status %v, want NOT_SERVING", st)
		}
		stateAtFlip = cli.State()
	})
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a Watch open: %v", err)
	}
	if stateAtFlip != client.StateReady {
		t.Errorf("client state when health flipped: %v, want ready (no GOAWAY yet)", stateAtFlip)
	}
	if msg, err := stream.Receive(); err != nil || msg.GetStatus() != health.NotServing {
		t.Fatalf("Watch after Shutdown: %v %v, want NOT_SERVING", msg.GetStatus(), err)
	}
	msg, err := stream.Receive()
	if err == nil {
		t.Fatalf("Watch went on after NOT_SERVING: %v", msg)
	}
	if code := tether.CodeOf(err); code != tether.CodeUnavailable {
		t.Fatalf("Watch ended with %v, want unavailable", err)
	}
}

// TestServeDrainDelay: when Serve's context ends, the readiness endpoint
// answers 503 at once, while the server still takes calls on its
// connections and new connections for the drain delay; then it drains.
func TestServeDrainDelay(t *testing.T) {
	srv := server.New(server.WithLogger(quiet()))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	h := health.Register(srv)
	mux := http.NewServeMux()
	mux.Handle("/", srv)
	mux.Handle("/readyz", h.ReadinessHandler(""))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- srv.Serve(ctx, ln, server.WithHTTPHandler(mux), server.WithDrainDelay(2*time.Second))
	}()
	base := "http://" + ln.Addr().String()
	probe := func() int {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			t.Fatalf("probe: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := probe(); code != http.StatusOK {
		t.Fatalf("readyz before the drain: %d", code)
	}
	cli, err := client.New("ws://"+ln.Addr().String(), client.WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ec := echov1.NewEchoServiceClient(cli)
	tctx := testCtx(t)
	if _, err := ec.Say(tctx, &echov1.SayRequest{Text: "before"}); err != nil {
		t.Fatal(err)
	}
	cancel()
	// The status flips before Serve waits; a probe sees it at once.
	for probe() != http.StatusServiceUnavailable {
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := ec.Say(tctx, &echov1.SayRequest{Text: "during the delay"}, client.FailFast()); err != nil {
		t.Fatalf("call during the drain delay: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned during its drain delay: %v", err)
	default:
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	http.DefaultClient.CloseIdleConnections()
}
