package otel_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	tetherotel "github.com/tetherrpc/tether/contrib/otel"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// seen records what handlers saw in their contexts.
type seen struct {
	mu      sync.Mutex
	spans   []trace.SpanContext
	baggage []string
	headers []tether.Metadata
}

// spy is a server interceptor, installed after the tracing one, that
// records the span and baggage in each handler's context.
func (s *seen) spy() server.Interceptor {
	note := func(ctx context.Context) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.spans = append(s.spans, trace.SpanContextFromContext(ctx))
		s.baggage = append(s.baggage, baggage.FromContext(ctx).Member("user").Value())
		if ci, ok := server.CallInfoFromContext(ctx); ok {
			s.headers = append(s.headers, ci.RequestHeader().Clone())
		}
	}
	return spyInterceptor{note}
}

type spyInterceptor struct{ note func(context.Context) }

func (i spyInterceptor) WrapUnary(next server.UnaryFunc) server.UnaryFunc {
	return func(ctx context.Context, req proto.Message) (proto.Message, error) {
		i.note(ctx)
		return next(ctx, req)
	}
}

func (i spyInterceptor) WrapStream(next server.StreamFunc) server.StreamFunc {
	return func(ctx context.Context, st server.Stream) error {
		i.note(ctx)
		return next(ctx, st)
	}
}

// testHandler is the example echo service, except that Collect is not
// implemented.
type testHandler struct{ echo.Handler }

func (testHandler) Collect(ctx context.Context, st *server.ClientStream[echov1.CollectRequest]) (*echov1.CollectResponse, error) {
	return echov1.UnimplementedEchoServiceHandler{}.Collect(ctx, st)
}

type env struct {
	rec  *tracetest.SpanRecorder
	seen *seen
	cli  *client.Client
	echo echov1.EchoServiceClient
}

// newEnv connects a traced client to a traced server over loopback. Both
// record their spans in one recorder, through separate tracer providers as
// in two processes.
func newEnv(t *testing.T, srvOpts ...tetherotel.Option) *env {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	srvTP := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	cliTP := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	e := &env{rec: rec, seen: &seen{}}
	quiet := slog.New(slog.DiscardHandler)
	srv := server.New(server.WithLogger(quiet), server.WithInterceptors(
		tetherotel.NewServer(append([]tetherotel.Option{tetherotel.WithTracerProvider(srvTP)}, srvOpts...)...),
		e.seen.spy(),
	))
	echov1.RegisterEchoServiceHandler(srv, &testHandler{})
	hs := httptest.NewServer(srv)
	cli, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), client.WithLogger(quiet),
		client.WithInterceptors(tetherotel.NewClient(tetherotel.WithTracerProvider(cliTP))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cli.Close()
		_ = srv.Close()
		hs.Close()
		_ = srvTP.Shutdown(context.Background())
		_ = cliTP.Shutdown(context.Background())
	})
	e.cli, e.echo = cli, echov1.NewEchoServiceClient(cli)
	return e
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// pair waits for n ended spans and returns the client and server spans of
// procedure.
func (e *env) pair(t *testing.T, n int, name string) (cli, srv sdktrace.ReadOnlySpan) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(e.rec.Ended()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d spans ended, want %d", len(e.rec.Ended()), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, s := range e.rec.Ended() {
		if s.Name() != name {
			continue
		}
		switch s.SpanKind() {
		case trace.SpanKindClient:
			cli = s
		case trace.SpanKindServer:
			srv = s
		}
	}
	if cli == nil || srv == nil {
		t.Fatalf("spans of %s: client %v, server %v", name, cli, srv)
	}
	return cli, srv
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// checkParent checks that srv is the child of cli across the connection.
func checkParent(t *testing.T, cli, srv sdktrace.ReadOnlySpan) {
	t.Helper()
	if cli.SpanContext().TraceID() != srv.SpanContext().TraceID() {
		t.Errorf("trace ids differ: client %s, server %s", cli.SpanContext().TraceID(), srv.SpanContext().TraceID())
	}
	if srv.Parent().SpanID() != cli.SpanContext().SpanID() || !srv.Parent().IsRemote() {
		t.Errorf("server span's parent = %s (remote %v), want the client span %s", srv.Parent().SpanID(), srv.Parent().IsRemote(), cli.SpanContext().SpanID())
	}
}

func TestUnaryPropagation(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)

	// The caller's own span is the client span's parent; its baggage
	// reaches the handler.
	parentTP := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(e.rec))
	defer parentTP.Shutdown(context.Background())
	ctx, parent := parentTP.Tracer("test").Start(ctx, "parent")
	m, _ := baggage.NewMember("user", "alice")
	b, _ := baggage.New(m)
	ctx = baggage.ContextWithBaggage(ctx, b)

	if _, err := e.echo.Say(ctx, &echov1.SayRequest{Text: "hi"}); err != nil {
		t.Fatal(err)
	}
	parent.End()

	cli, srv := e.pair(t, 3, "example.echo.v1.EchoService/Say")
	checkParent(t, cli, srv)
	if cli.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("client span's parent = %s, want the caller's span", cli.Parent().SpanID())
	}
	for _, s := range []sdktrace.ReadOnlySpan{cli, srv} {
		a := attrs(s)
		want := map[attribute.Key]string{"rpc.system": "tether", "rpc.service": "example.echo.v1.EchoService", "rpc.method": "Say"}
		for k, v := range want {
			if a[k].AsString() != v {
				t.Errorf("%v span: %s = %q, want %q", s.SpanKind(), k, a[k].Emit(), v)
			}
		}
		if v, ok := a["rpc.tether.status_code"]; !ok || v.AsInt64() != 0 {
			t.Errorf("%v span: rpc.tether.status_code = %v (present %v), want 0", s.SpanKind(), v.Emit(), ok)
		}
		if s.Status().Code != codes.Unset {
			t.Errorf("%v span status = %v", s.SpanKind(), s.Status())
		}
		if s.InstrumentationScope().Name != tetherotel.ScopeName {
			t.Errorf("scope = %q", s.InstrumentationScope().Name)
		}
	}
	if a := attrs(srv); a["network.peer.address"].AsString() != "127.0.0.1" || a["network.peer.port"].AsInt64() <= 0 {
		t.Errorf("server peer attributes: %v", srv.Attributes())
	}

	e.seen.mu.Lock()
	defer e.seen.mu.Unlock()
	if len(e.seen.spans) != 1 || e.seen.spans[0].SpanID() != srv.SpanContext().SpanID() {
		t.Errorf("handler's context has span %v, want the server span %s", e.seen.spans, srv.SpanContext().SpanID())
	}
	if len(e.seen.baggage) != 1 || e.seen.baggage[0] != "alice" {
		t.Errorf("handler's baggage = %q, want alice", e.seen.baggage)
	}
	if h := e.seen.headers[0]; !strings.HasPrefix(h.Get("traceparent"), "00-"+cli.SpanContext().TraceID().String()+"-"+cli.SpanContext().SpanID().String()) || h.Get("baggage") != "user=alice" {
		t.Errorf("request metadata: %v", h)
	}
}

func TestErrors(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := e.echo.Say(short, &echov1.SayRequest{SleepMillis: 10_000})
	cancel()
	if tether.CodeOf(err) != tether.CodeDeadlineExceeded {
		t.Fatalf("Say: %v, want deadline_exceeded", err)
	}
	cli, srv := e.pair(t, 2, "example.echo.v1.EchoService/Say")
	checkParent(t, cli, srv)
	for _, s := range []sdktrace.ReadOnlySpan{cli, srv} {
		if s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, "deadline") {
			t.Errorf("%v span status = %v, want Error (deadline)", s.SpanKind(), s.Status())
		}
		if got := attrs(s)["rpc.tether.status_code"].AsInt64(); got != int64(tether.CodeDeadlineExceeded) {
			t.Errorf("%v span: rpc.tether.status_code = %d, want 4", s.SpanKind(), got)
		}
	}

	col, err := e.echo.Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := col.CloseAndReceive(); tether.CodeOf(err) != tether.CodeUnimplemented {
		t.Fatalf("Collect: %v, want unimplemented", err)
	}
	cli, srv = e.pair(t, 4, "example.echo.v1.EchoService/Collect")
	checkParent(t, cli, srv)
	for _, s := range []sdktrace.ReadOnlySpan{cli, srv} {
		if s.Status().Code != codes.Error || attrs(s)["rpc.tether.status_code"].AsInt64() != int64(tether.CodeUnimplemented) {
			t.Errorf("%v span: status %v, attributes %v", s.SpanKind(), s.Status(), s.Attributes())
		}
	}
}

func TestStreams(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)

	cd, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := cd.Receive(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	cli, srv := e.pair(t, 2, "example.echo.v1.EchoService/Countdown")
	checkParent(t, cli, srv)
	if cli.Status().Code != codes.Unset || srv.Status().Code != codes.Unset {
		t.Errorf("Countdown statuses: %v, %v", cli.Status(), srv.Status())
	}

	// A stream the client abandons: canceled on both sides.
	chat, err := e.echo.Chat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := chat.Send(&echov1.ChatRequest{Text: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := chat.Receive(); err != nil {
		t.Fatal(err)
	}
	chat.Close()
	chat.Close()
	cli, srv = e.pair(t, 4, "example.echo.v1.EchoService/Chat")
	checkParent(t, cli, srv)
	// canceled is an error of the client's span; the server's status stays
	// Unset (the caller ended the call, not a server failure).
	for s, want := range map[sdktrace.ReadOnlySpan]codes.Code{cli: codes.Error, srv: codes.Unset} {
		if got := attrs(s)["rpc.tether.status_code"].AsInt64(); got != int64(tether.CodeCanceled) || s.Status().Code != want {
			t.Errorf("%v Chat span: code %d, status %v; want canceled, %v", s.SpanKind(), got, s.Status(), want)
		}
	}
	if n := len(e.rec.Ended()); n != 4 {
		t.Errorf("%d spans ended, want 4 (each span ends once)", n)
	}
}

// TestPublicEndpoint: the server starts its own trace, linked to the
// client's span.
func TestPublicEndpoint(t *testing.T) {
	e := newEnv(t, tetherotel.WithPublicEndpoint())
	if _, err := e.echo.Say(testCtx(t), &echov1.SayRequest{}); err != nil {
		t.Fatal(err)
	}
	cli, srv := e.pair(t, 2, "example.echo.v1.EchoService/Say")
	if srv.Parent().IsValid() || srv.SpanContext().TraceID() == cli.SpanContext().TraceID() {
		t.Errorf("server span continues the client's trace: parent %v", srv.Parent())
	}
	if l := srv.Links(); len(l) != 1 || l[0].SpanContext.SpanID() != cli.SpanContext().SpanID() {
		t.Errorf("server span links = %v, want the client span", l)
	}
}

func TestMetadataCarrier(t *testing.T) {
	md := tether.Metadata{}
	c := tetherotel.MetadataCarrier(md)
	c.Set("TraceParent", "a")
	c.Set("traceparent", "b")
	md.Add("baggage", "x=1")
	md.Add("baggage", "y=2")
	if c.Get("TRACEPARENT") != "b" || md.Get("traceparent") != "b" {
		t.Errorf("Get = %q, metadata %v", c.Get("TRACEPARENT"), md)
	}
	if got := c.Values("Baggage"); len(got) != 2 || got[1] != "y=2" {
		t.Errorf("Values = %v", got)
	}
	if got := c.Keys(); len(got) != 2 || got[0] != "baggage" || got[1] != "traceparent" {
		t.Errorf("Keys = %v", got)
	}
	// Multiple baggage values are all extracted.
	ctx := propagation.Baggage{}.Extract(context.Background(), c)
	if b := baggage.FromContext(ctx); b.Member("x").Value() != "1" || b.Member("y").Value() != "2" {
		t.Errorf("baggage = %v", b)
	}
}

// TestDefaultPropagator: with no options, the client writes W3C trace
// context and baggage.
func TestDefaultPropagator(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	m, _ := baggage.NewMember("k", "v")
	b, _ := baggage.New(m)
	ctx := baggage.ContextWithBaggage(context.Background(), b)
	call := &client.Call{Spec: tether.Spec{Procedure: "/p.S/M"}} // nil Header
	err := tetherotel.NewClient(tetherotel.WithTracerProvider(tp)).WrapUnary(
		func(context.Context, *client.Call, proto.Message, proto.Message) error { return errors.New("boom") },
	)(ctx, call, &echov1.SayRequest{}, &echov1.SayResponse{})
	if err == nil {
		t.Fatal("no error")
	}
	if call.Header.Get("traceparent") == "" || call.Header.Get("baggage") != "k=v" {
		t.Errorf("header = %v", call.Header)
	}
	s := rec.Ended()
	if len(s) != 1 || s[0].Name() != "p.S/M" || s[0].Status().Code != codes.Error || s[0].Status().Description != "boom" ||
		attrs(s[0])["rpc.tether.status_code"].AsInt64() != int64(tether.CodeUnknown) {
		t.Errorf("spans = %v", s)
	}
}

// TestConventions checks the OpenTelemetry RPC conventions: server.address
// and server.port on client spans, an rpc.message event per stream message.
func TestConventions(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	if _, err := e.echo.Say(ctx, &echov1.SayRequest{}); err != nil {
		t.Fatal(err)
	}
	cli, srv := e.pair(t, 2, "example.echo.v1.EchoService/Say")
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(e.cli.URL(), "ws://"))
	if a := attrs(cli); a["server.address"].AsString() != host || strconv.Itoa(int(a["server.port"].AsInt64())) != port || host != "127.0.0.1" {
		t.Errorf("client span: server.address %v, server.port %v; want %s, %s", a["server.address"], a["server.port"], host, port)
	}
	if _, ok := attrs(srv)["server.address"]; ok {
		t.Error("server span has server.address")
	}
	if len(cli.Events()) != 0 || len(srv.Events()) != 0 {
		t.Errorf("unary spans have events: %v, %v", cli.Events(), srv.Events())
	}

	cd, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := cd.Receive(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	cli, srv = e.pair(t, 4, "example.echo.v1.EchoService/Countdown")
	events := func(s sdktrace.ReadOnlySpan) string {
		var out []string
		for _, ev := range s.Events() {
			m := map[attribute.Key]attribute.Value{}
			for _, kv := range ev.Attributes {
				m[kv.Key] = kv.Value
			}
			out = append(out, fmt.Sprintf("%s %s %d %d", ev.Name, m["rpc.message.type"].AsString(), m["rpc.message.id"].AsInt64(), m["rpc.message.uncompressed_size"].AsInt64()))
		}
		return strings.Join(out, "; ")
	}
	// CountdownRequest{count: 3} is 2 bytes; CountdownResponse{value: n} too.
	if got, want := events(cli), "rpc.message SENT 1 2; rpc.message RECEIVED 1 2; rpc.message RECEIVED 2 2; rpc.message RECEIVED 3 2"; got != want {
		t.Errorf("client events:\n got %s\nwant %s", got, want)
	}
	if got, want := events(srv), "rpc.message RECEIVED 1 2; rpc.message SENT 1 2; rpc.message SENT 2 2; rpc.message SENT 3 2"; got != want {
		t.Errorf("server events:\n got %s\nwant %s", got, want)
	}
}
