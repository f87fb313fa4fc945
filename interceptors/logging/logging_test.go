package logging

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// capture is a slog.Handler that keeps the records it is given.
type capture struct {
	level slog.Level
	mu    sync.Mutex
	recs  []slog.Record
}

func (h *capture) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *capture) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}

func (h *capture) WithAttrs([]slog.Attr) slog.Handler { panic("not used") }
func (h *capture) WithGroup(string) slog.Handler      { panic("not used") }

// rec is a record flattened for comparison: level, message and attributes,
// groups joined with dots.
type rec map[string]any

func flatten(r slog.Record) rec {
	out := rec{"level": r.Level, "msg": r.Message}
	var add func(prefix string, a slog.Attr)
	add = func(prefix string, a slog.Attr) {
		v := a.Value.Resolve()
		if v.Kind() == slog.KindGroup {
			for _, g := range v.Group() {
				add(prefix+a.Key+".", g)
			}
			return
		}
		out[prefix+a.Key] = v.Any()
	}
	r.Attrs(func(a slog.Attr) bool { add("", a); return true })
	return out
}

// records returns the records so far, flattened; peer addresses are checked
// and replaced by "127.0.0.1:*".
func (h *capture) records(t *testing.T) []rec {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]rec, 0, len(h.recs))
	for _, r := range h.recs {
		f := flatten(r)
		if p, ok := f["peer"].(string); ok {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("peer = %q, want 127.0.0.1:port", p)
			}
			f["peer"] = "127.0.0.1:*"
		}
		out = append(out, f)
	}
	return out
}

// wait waits for n records.
func (h *capture) wait(t *testing.T, n int) []rec {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h.mu.Lock()
		got := len(h.recs)
		h.mu.Unlock()
		if got >= n {
			return h.records(t)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d records after 10s, want %d: %v", got, n, h.records(t))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stepClock is a clock that advances by step each time it is read, so that a
// call that reads it twice lasts exactly step.
func stepClock(step time.Duration) Option {
	var n atomic.Int64
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return func(c *config) {
		c.now = func() time.Time { return base.Add(time.Duration(n.Add(1)) * step) }
	}
}

// testHandler is the example echo service, except that Say fails with
// not_found for the text "missing".
type testHandler struct{ echo.Handler }

func (h *testHandler) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	if req.GetText() == "missing" {
		return nil, tether.Errorf(tether.CodeNotFound, "no such greeting")
	}
	return h.Handler.Say(ctx, req)
}

type env struct {
	srv  *server.Server
	cli  *client.Client
	echo echov1.EchoServiceClient
}

func newEnv(t *testing.T, srvIcs []server.Interceptor, cliIcs []client.Interceptor) *env {
	t.Helper()
	quiet := slog.New(slog.DiscardHandler)
	srv := server.New(server.WithLogger(quiet), server.WithInterceptors(srvIcs...))
	echov1.RegisterEchoServiceHandler(srv, &testHandler{})
	hs := httptest.NewServer(srv)
	cli, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), client.WithLogger(quiet), client.WithInterceptors(cliIcs...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cli.Close()
		_ = srv.Close()
		hs.Close()
	})
	return &env{srv: srv, cli: cli, echo: echov1.NewEchoServiceClient(cli)}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

const (
	sayProc       = echov1.EchoServiceSayProcedure
	countdownProc = echov1.EchoServiceCountdownProcedure
	collectProc   = echov1.EchoServiceCollectProcedure
	chatProc      = echov1.EchoServiceChatProcedure
)

// calls makes one call of each kind, and one that fails.
func (e *env) calls(t *testing.T) {
	t.Helper()
	ctx := testCtx(t)
	if _, err := e.echo.Say(ctx, &echov1.SayRequest{Text: "hi"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.echo.Say(ctx, &echov1.SayRequest{Text: "missing"}); tether.CodeOf(err) != tether.CodeNotFound {
		t.Fatalf("Say(missing): %v, want not_found", err)
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
	col, err := e.echo.Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"a", "b"} {
		if err := col.Send(&echov1.CollectRequest{Text: s}); err != nil {
			t.Fatal(err)
		}
	}
	if res, err := col.CloseAndReceive(); err != nil || res.GetJoined() != "a b" {
		t.Fatalf("Collect: %v %v", res, err)
	}
	chat, err := e.echo.Chat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"x", "y"} {
		if err := chat.Send(&echov1.ChatRequest{Text: s}); err != nil {
			t.Fatal(err)
		}
		if _, err := chat.Receive(); err != nil {
			t.Fatal(err)
		}
	}
	if err := chat.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := chat.Receive(); !errors.Is(err, io.EOF) {
		t.Fatalf("Chat end: %v", err)
	}
}

func checkRecords(t *testing.T, got, want []rec) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d records, want %d:\n got %v\nwant %v", len(got), len(want), got, want)
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("record %d:\n got %v\nwant %v", i, got[i], want[i])
		}
	}
}

func TestServerRecords(t *testing.T) {
	h := &capture{level: slog.LevelDebug}
	e := newEnv(t, []server.Interceptor{NewServer(slog.New(h), stepClock(3*time.Millisecond))}, nil)
	e.calls(t)
	ms := 3 * time.Millisecond
	peer := "127.0.0.1:*"
	checkRecords(t, h.wait(t, 5), []rec{
		{"level": slog.LevelInfo, "msg": ServerMessage, "procedure": sayProc, "stream_type": "unary", "code": "ok", "duration": ms, "duration_ms": float64(ms) / 1e6, "peer": peer},
		{"level": slog.LevelWarn, "msg": ServerMessage, "procedure": sayProc, "stream_type": "unary", "code": "not_found", "duration": ms, "duration_ms": float64(ms) / 1e6, "peer": peer,
			"error": "not_found: no such greeting"},
		{"level": slog.LevelInfo, "msg": ServerMessage, "procedure": countdownProc, "stream_type": "server_stream", "code": "ok", "duration": ms, "duration_ms": float64(ms) / 1e6, "peer": peer,
			"messages_received": int64(1), "messages_sent": int64(3)},
		{"level": slog.LevelInfo, "msg": ServerMessage, "procedure": collectProc, "stream_type": "client_stream", "code": "ok", "duration": ms, "duration_ms": float64(ms) / 1e6, "peer": peer,
			"messages_received": int64(2), "messages_sent": int64(1)},
		{"level": slog.LevelInfo, "msg": ServerMessage, "procedure": chatProc, "stream_type": "bidi_stream", "code": "ok", "duration": ms, "duration_ms": float64(ms) / 1e6, "peer": peer,
			"messages_received": int64(2), "messages_sent": int64(2)},
	})
}

func TestClientRecords(t *testing.T) {
	h := &capture{level: slog.LevelDebug}
	e := newEnv(t, nil, []client.Interceptor{NewClient(slog.New(h), stepClock(time.Millisecond))})
	e.calls(t)

	// A server stream closed early is canceled by the client.
	ctx := testCtx(t)
	cd, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cd.Receive(); err != nil {
		t.Fatal(err)
	}
	cd.Close()
	cd.Close() // logged once

	// A procedure the server does not serve.
	nope := &client.Method{Spec: tether.Spec{Procedure: "/example.echo.v1.EchoService/Nope"}}
	if _, err := client.CallUnary[echov1.SayRequest, echov1.SayResponse](ctx, e.cli, nope, &echov1.SayRequest{}); tether.CodeOf(err) != tether.CodeUnimplemented {
		t.Fatalf("Nope: %v, want unimplemented", err)
	}

	ms := time.Millisecond
	got := h.records(t)
	if len(got) == 7 {
		// The message of an unimplemented error is the server's.
		if s, _ := got[6]["error"].(string); strings.HasPrefix(s, "unimplemented: ") {
			got[6]["error"] = "unimplemented: …"
		}
	}
	checkRecords(t, got, []rec{
		{"level": slog.LevelDebug, "msg": ClientMessage, "procedure": sayProc, "stream_type": "unary", "code": "ok", "duration": ms, "duration_ms": float64(ms) / 1e6},
		{"level": slog.LevelInfo, "msg": ClientMessage, "procedure": sayProc, "stream_type": "unary", "code": "not_found", "duration": ms, "duration_ms": float64(ms) / 1e6,
			"error": "not_found: no such greeting"},
		{"level": slog.LevelDebug, "msg": ClientMessage, "procedure": countdownProc, "stream_type": "server_stream", "code": "ok", "duration": ms, "duration_ms": float64(ms) / 1e6,
			"messages_received": int64(3), "messages_sent": int64(1)},
		{"level": slog.LevelDebug, "msg": ClientMessage, "procedure": collectProc, "stream_type": "client_stream", "code": "ok", "duration": ms, "duration_ms": float64(ms) / 1e6,
			"messages_received": int64(1), "messages_sent": int64(2)},
		{"level": slog.LevelDebug, "msg": ClientMessage, "procedure": chatProc, "stream_type": "bidi_stream", "code": "ok", "duration": ms, "duration_ms": float64(ms) / 1e6,
			"messages_received": int64(2), "messages_sent": int64(2)},
		{"level": slog.LevelInfo, "msg": ClientMessage, "procedure": countdownProc, "stream_type": "server_stream", "code": "canceled", "duration": ms, "duration_ms": float64(ms) / 1e6,
			"messages_received": int64(1), "messages_sent": int64(1), "error": "canceled: tether: stream closed by the client"},
		{"level": slog.LevelInfo, "msg": ClientMessage, "procedure": "/example.echo.v1.EchoService/Nope", "stream_type": "unary", "code": "unimplemented", "duration": ms, "duration_ms": float64(ms) / 1e6,
			"error": "unimplemented: …"},
	})
}

// TestDeadline: a call that outlives its deadline is deadline_exceeded on
// both sides, whichever side noticed first.
func TestDeadline(t *testing.T) {
	sh, ch := &capture{}, &capture{}
	e := newEnv(t,
		[]server.Interceptor{NewServer(slog.New(sh), stepClock(time.Second))},
		[]client.Interceptor{NewClient(slog.New(ch), stepClock(time.Second))})
	ctx, cancel := context.WithTimeout(testCtx(t), 100*time.Millisecond)
	defer cancel()
	_, err := e.echo.Say(ctx, &echov1.SayRequest{Text: "slow", SleepMillis: 10_000})
	if tether.CodeOf(err) != tether.CodeDeadlineExceeded {
		t.Fatalf("Say: %v, want deadline_exceeded", err)
	}
	for side, h := range map[string]*capture{"server": sh, "client": ch} {
		got := h.wait(t, 1)
		if len(got) != 1 {
			t.Fatalf("%s: %d records", side, len(got))
		}
		r := got[0]
		if r["code"] != "deadline_exceeded" || r["level"] != map[string]slog.Level{"server": slog.LevelWarn, "client": slog.LevelInfo}[side] {
			t.Errorf("%s record: %v", side, r)
		}
		// "context deadline exceeded" if the side's own timer fired first,
		// "deadline_exceeded: ..." if the other side's reset came first.
		if s, _ := r["error"].(string); !strings.Contains(s, "deadline") {
			t.Errorf("%s error = %q", side, s)
		}
	}
}

// fakeCall runs a client unary interceptor around a next that returns err.
func fakeCall(ic client.Interceptor, header tether.Metadata, err error) {
	call := &client.Call{Spec: tether.Spec{Procedure: "/p.S/M"}, Header: header}
	_ = ic.WrapUnary(func(context.Context, *client.Call, proto.Message, proto.Message) error { return err })(
		context.Background(), call, &echov1.SayRequest{}, &echov1.SayResponse{})
}

func TestLevels(t *testing.T) {
	h := &capture{level: slog.LevelDebug}
	ic := NewClient(slog.New(h),
		WithLevels(func(c tether.Code) slog.Level { return slog.Level(c) }),
		WithCodeLevel(tether.CodeInternal, slog.LevelError),
		stepClock(0))
	fakeCall(ic, nil, nil)
	fakeCall(ic, nil, tether.Errorf(tether.CodeNotFound, "x"))
	fakeCall(ic, nil, tether.Errorf(tether.CodeInternal, "x"))
	fakeCall(ic, nil, context.Canceled)
	var levels []slog.Level
	for _, r := range h.records(t) {
		levels = append(levels, r["level"].(slog.Level))
	}
	if want := []slog.Level{0, 5, slog.LevelError, 1}; !reflect.DeepEqual(levels, want) {
		t.Errorf("levels = %v, want %v", levels, want)
	}

	// Below the logger's level, nothing is logged.
	h = &capture{level: slog.LevelError}
	_, _ = NewServer(slog.New(h)).WrapUnary(func(context.Context, proto.Message) (proto.Message, error) {
		return nil, tether.Errorf(tether.CodeNotFound, "x")
	})(context.Background(), &echov1.SayRequest{})
	fakeCall(NewClient(slog.New(h)), nil, errors.New("boom"))
	if got := h.records(t); len(got) != 0 {
		t.Errorf("records below the level: %v", got)
	}

	// Defaults.
	for c, want := range map[tether.Code][2]slog.Level{
		tether.CodeOK:       {slog.LevelInfo, slog.LevelDebug},
		tether.CodeNotFound: {slog.LevelWarn, slog.LevelInfo},
		tether.CodeInternal: {slog.LevelWarn, slog.LevelInfo},
	} {
		if got := [2]slog.Level{DefaultServerLevel(c), DefaultClientLevel(c)}; got != want {
			t.Errorf("default levels of %v = %v, want %v", c, got, want)
		}
	}
}

func TestMetadataOptions(t *testing.T) {
	md := tether.NewMetadata(
		"Authorization", "Bearer abc",
		"x-request-id", "r1",
		"x-request-id", "r2",
		"x-trace", "t",
		"x-private-thing", "p",
	)
	for _, tc := range []struct {
		name string
		opts []Option
		want rec
	}{
		{"default", nil, rec{}},
		{"keys", []Option{WithMetadataKeys()}, rec{
			"metadata_keys": []string{"authorization", "x-private-thing", "x-request-id", "x-trace"},
		}},
		{"values", []Option{WithMetadataValues("X-Request-Id", "authorization", "x-private-thing", "absent"), WithRedactedKeys("PRIVATE")}, rec{
			"metadata.authorization":   Redacted,
			"metadata.x-private-thing": Redacted,
			"metadata.x-request-id":    "r1, r2",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &capture{level: slog.LevelDebug}
			fakeCall(NewClient(slog.New(h), append(tc.opts, stepClock(0))...), md, nil)
			want := rec{"level": slog.LevelDebug, "msg": ClientMessage, "procedure": "/p.S/M", "stream_type": "unary", "code": "ok", "duration": time.Duration(0), "duration_ms": 0.0}
			for k, v := range tc.want {
				want[k] = v
			}
			checkRecords(t, h.records(t), []rec{want})
		})
	}
}

func TestOmitErrorMessage(t *testing.T) {
	h := &capture{}
	fakeCall(NewClient(slog.New(h), OmitErrorMessage()), nil, tether.Errorf(tether.CodeInvalidArgument, "user input 1234"))
	got := h.records(t)
	if len(got) != 1 || got[0]["code"] != "invalid_argument" || got[0]["error"] != nil {
		t.Errorf("records = %v", got)
	}
}

// fakeStream is a client stream whose calls return fixed results.
type fakeStream struct {
	client.Stream
	sendErr, closeSendErr error
}

func (s *fakeStream) Send(proto.Message) error { return s.sendErr }
func (s *fakeStream) CloseSend() error         { return s.closeSendErr }
func (s *fakeStream) Close() error             { return nil }

// TestClientStreamClose: a stream closed before its end is logged with the
// error its sender saw, or canceled; io.EOF from Send is not an error.
func TestClientStreamClose(t *testing.T) {
	for _, tc := range []struct {
		name     string
		st       *fakeStream
		wantCode string
	}{
		{"canceled", &fakeStream{}, "canceled"},
		{"eof", &fakeStream{sendErr: io.EOF}, "canceled"},
		{"send error", &fakeStream{sendErr: tether.Errorf(tether.CodeResourceExhausted, "too big")}, "resource_exhausted"},
		{"close send error", &fakeStream{closeSendErr: tether.Errorf(tether.CodeUnavailable, "gone")}, "unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &capture{level: slog.LevelDebug}
			ic := NewClient(slog.New(h))
			call := &client.Call{Spec: tether.Spec{Procedure: "/p.S/M", StreamType: tether.StreamTypeBidi}}
			st, err := ic.WrapStream(func(context.Context, *client.Call) (client.Stream, error) { return tc.st, nil })(context.Background(), call)
			if err != nil {
				t.Fatal(err)
			}
			_ = st.Send(&echov1.ChatRequest{})
			_ = st.CloseSend()
			_ = st.Close()
			got := h.records(t)
			if len(got) != 1 || got[0]["code"] != tc.wantCode {
				t.Fatalf("records = %v, want one with code %s", got, tc.wantCode)
			}
		})
	}

	// A stream that fails to open is logged at once.
	h := &capture{}
	ic := NewClient(slog.New(h))
	call := &client.Call{Spec: tether.Spec{Procedure: "/p.S/M", StreamType: tether.StreamTypeServer}}
	_, err := ic.WrapStream(func(context.Context, *client.Call) (client.Stream, error) {
		return nil, tether.Errorf(tether.CodeUnavailable, "no connection")
	})(context.Background(), call)
	if got := h.records(t); err == nil || len(got) != 1 || got[0]["code"] != "unavailable" || got[0]["messages_sent"] != int64(0) {
		t.Fatalf("records = %v, err = %v", got, err)
	}
}

// TestNoSecrets: no metadata value of a sensitive key and nothing of the
// request or response messages reaches the output, whatever the options,
// on either side, for calls that succeed and calls that fail.
func TestNoSecrets(t *testing.T) {
	const (
		authValue    = "Bearer AUTH-VALUE-8c1f"
		tokenValue   = "HEADER-TOKEN-77aa"
		cookieValue  = "COOKIE-VALUE-1b2c"
		payloadToken = "PAYLOAD-TOKEN-42d9"
		payloadBytes = "PAYLOAD-BYTES-e5e5"
	)
	optionSets := map[string][]Option{
		"default": nil,
		"keys and values": {
			WithMetadataKeys(),
			WithMetadataValues("authorization", "x-api-token", "cookie", "x-request-id"),
		},
	}
	for name, opts := range optionSets {
		t.Run(name, func(t *testing.T) {
			var out syncBuffer
			text := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
			jsonl := slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
			e := newEnv(t,
				[]server.Interceptor{NewServer(text, opts...), NewServer(jsonl, opts...)},
				[]client.Interceptor{NewClient(text, opts...), NewClient(jsonl, opts...)})
			ctx := testCtx(t)
			hdr := client.WithHeader(tether.NewMetadata(
				"Authorization", authValue,
				"x-api-token", tokenValue,
				"cookie", cookieValue,
				"x-request-id", "req-42",
			))
			for _, text := range []string{payloadToken, "missing"} {
				_, _ = e.echo.Say(ctx, &echov1.SayRequest{Text: text, Payload: []byte(payloadBytes)}, hdr)
			}
			chat, err := e.echo.Chat(ctx, hdr)
			if err != nil {
				t.Fatal(err)
			}
			if err := chat.Send(&echov1.ChatRequest{Text: payloadToken, Payload: []byte(payloadBytes)}); err != nil {
				t.Fatal(err)
			}
			if _, err := chat.Receive(); err != nil {
				t.Fatal(err)
			}
			chat.Close()
			// 3 calls, 2 sides, 2 handlers: wait for the server's records.
			deadline := time.Now().Add(10 * time.Second)
			for strings.Count(out.String(), ServerMessage) < 6 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			s := out.String()
			if n := strings.Count(s, ServerMessage) + strings.Count(s, ClientMessage); n != 12 {
				t.Fatalf("%d records, want 12:\n%s", n, s)
			}
			for _, secret := range []string{authValue, "AUTH-VALUE", tokenValue, cookieValue, payloadToken, payloadBytes} {
				if strings.Contains(s, secret) {
					t.Errorf("output contains %q:\n%s", secret, s)
				}
			}
			if opts == nil {
				for _, key := range []string{"authorization", "x-request-id", "metadata"} {
					if strings.Contains(s, key) {
						t.Errorf("default output mentions %q:\n%s", key, s)
					}
				}
				return
			}
			for _, want := range []string{
				"metadata.authorization=[REDACTED]", `"authorization":"[REDACTED]"`,
				"metadata.x-api-token=[REDACTED]", "metadata.cookie=[REDACTED]",
				"metadata.x-request-id=req-42", `"x-request-id":"req-42"`,
				`"metadata_keys":["authorization","cookie",`,
			} {
				if !strings.Contains(s, want) {
					t.Errorf("output lacks %s:\n%s", want, s)
				}
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of the server
// and the client.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestPrincipalAndTraceID: server records name the connection's principal;
// both sides' records carry the trace id of the call's traceparent, or
// WithTraceID's.
func TestPrincipalAndTraceID(t *testing.T) {
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	quiet := slog.New(slog.DiscardHandler)
	sh, ch, wh := &capture{level: slog.LevelDebug}, &capture{level: slog.LevelDebug}, &capture{level: slog.LevelDebug}
	srv := server.New(server.WithLogger(quiet),
		server.WithAuthenticator(func(*http.Request) (server.Identity, error) { return server.Identity{Principal: "alice"}, nil }),
		server.WithInterceptors(NewServer(slog.New(sh))))
	echov1.RegisterEchoServiceHandler(srv, &testHandler{})
	hs := httptest.NewServer(srv)
	fixed := func(context.Context) string { return "from-option" }
	cli, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), client.WithLogger(quiet),
		client.WithInterceptors(NewClient(slog.New(ch)), NewClient(slog.New(wh), WithTraceID(fixed))))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cli.Close()
		_ = srv.Close()
		hs.Close()
	}()
	md := tether.Metadata{"traceparent": {"00-" + traceID + "-00f067aa0ba902b7-01"}}
	if _, err := echov1.NewEchoServiceClient(cli).Say(testCtx(t), &echov1.SayRequest{}, client.WithHeader(md)); err != nil {
		t.Fatal(err)
	}
	// Without traceparent: no trace_id.
	if _, err := echov1.NewEchoServiceClient(cli).Say(testCtx(t), &echov1.SayRequest{}); err != nil {
		t.Fatal(err)
	}
	s := sh.wait(t, 2)
	if s[0]["principal"] != "alice" || s[0]["trace_id"] != traceID || s[1]["principal"] != "alice" {
		t.Errorf("server records: %v", s)
	}
	if _, ok := s[1]["trace_id"]; ok {
		t.Errorf("server record without traceparent has trace_id: %v", s[1])
	}
	c := ch.wait(t, 2)
	if c[0]["trace_id"] != traceID || c[0]["principal"] != nil {
		t.Errorf("client record: %v", c[0])
	}
	if w := wh.wait(t, 2); w[0]["trace_id"] != "from-option" || w[1]["trace_id"] != "from-option" {
		t.Errorf("WithTraceID records: %v", w)
	}
	for tp, want := range map[string]string{
		"00-" + traceID + "-00f067aa0ba902b7-01":                  traceID,
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01": "",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01": "",
		"garbage": "",
	} {
		if got := traceparentID(tp); got != want {
			t.Errorf("traceparentID(%q) = %q, want %q", tp, got, want)
		}
	}
}
