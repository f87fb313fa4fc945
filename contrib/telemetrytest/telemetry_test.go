package telemetrytest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	tetherotel "github.com/tetherrpc/tether/contrib/otel"
	tetherprom "github.com/tetherrpc/tether/contrib/prometheus"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/interceptors/logging"
	"github.com/tetherrpc/tether/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// traceID is the exemplar and log trace id: the span's, from OpenTelemetry.
func traceID(ctx context.Context) string {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return sc.TraceID().String()
	}
	return ""
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestTelemetry installs metrics, tracing and logging on an authenticated
// server as an operator would, makes calls, and checks through /metrics,
// the in-memory span exporter and the JSON log that they agree: the
// exemplar's and the log's trace id are the spans'.
func TestTelemetry(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	var logs lockedBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	exemplar := func(ctx context.Context) prom.Labels {
		if id := traceID(ctx); id != "" {
			return prom.Labels{"trace_id": id}
		}
		return nil
	}
	sm := tetherprom.NewServerMetrics(tetherprom.WithServiceMethodLabels(), tetherprom.WithGRPCCodeNames(), tetherprom.WithExemplar(exemplar))
	srv := server.New(server.WithLogger(logger),
		server.WithAuthenticator(func(r *http.Request) (server.Identity, error) {
			if r.Header.Get("Authorization") != "Bearer ok" {
				return server.Identity{}, tether.Errorf(tether.CodeUnauthenticated, "no")
			}
			return server.Identity{Principal: "alice"}, nil
		}),
		// Tracing outermost, so metrics and logs see its span.
		server.WithInterceptors(tetherotel.NewServer(tetherotel.WithTracerProvider(tp)), sm, logging.NewServer(logger, logging.WithTraceID(traceID))))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	reg := prom.NewPedanticRegistry()
	reg.MustRegister(sm, tetherprom.NewServerCollector(srv))
	metrics := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	defer metrics.Close()

	url := "ws" + strings.TrimPrefix(hs.URL, "http")
	cli, err := client.New(url, client.WithLogger(slog.New(slog.DiscardHandler)),
		client.WithHandshakeHeader(http.Header{"Authorization": {"Bearer ok"}}),
		client.WithInterceptors(tetherotel.NewClient(tetherotel.WithTracerProvider(tp))))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ec := echov1.NewEchoServiceClient(cli)
	if _, err := ec.Say(ctx, &echov1.SayRequest{Text: "hi"}); err != nil {
		t.Fatal(err)
	}
	cd, err := ec.Countdown(ctx, &echov1.CountdownRequest{Count: 2})
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
	// A refused upgrade: no credentials.
	bad, err := client.New(url, client.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := echov1.NewEchoServiceClient(bad).Say(ctx, &echov1.SayRequest{}, client.FailFast()); tether.CodeOf(err) != tether.CodeUnauthenticated {
		t.Errorf("without credentials: %v", err)
	}
	_ = bad.Close()

	// Spans: the server's end just after the client has its answer.
	var spans tracetest.SpanStubs
	deadline := time.Now().Add(10 * time.Second)
	for spans = exp.GetSpans(); len(spans) < 4; spans = exp.GetSpans() {
		if time.Now().After(deadline) {
			t.Fatalf("%d spans, want 4", len(spans))
		}
		time.Sleep(5 * time.Millisecond)
	}
	var sayTrace string
	for _, s := range spans {
		attrs := map[string]any{}
		for _, kv := range s.Attributes {
			attrs[string(kv.Key)] = kv.Value.AsInterface()
		}
		switch {
		case s.Name == "example.echo.v1.EchoService/Say" && s.SpanKind == trace.SpanKindClient:
			sayTrace = s.SpanContext.TraceID().String()
			if attrs["server.address"] != "127.0.0.1" || attrs["server.port"] == nil {
				t.Errorf("client span attributes %v", attrs)
			}
		case s.Name == "example.echo.v1.EchoService/Countdown":
			if len(s.Events) != 3 || s.Events[0].Name != "rpc.message" || s.Status.Code != codes.Unset {
				t.Errorf("%v Countdown span: events %v, status %v", s.SpanKind, s.Events, s.Status)
			}
		}
	}
	if sayTrace == "" {
		t.Fatal("no client span of Say")
	}

	// Metrics: the exemplar of Say is its trace.
	var scrape string
	want := []string{
		`tether_server_calls_total{code="OK",method="Say",service="example.echo.v1.EchoService",type="unary"} 1.0 # {trace_id="` + sayTrace + `"}`,
		`tether_server_calls_started_total{method="Countdown",service="example.echo.v1.EchoService",type="server_stream"} 1.0`,
		`tether_server_upgrades_refused_total{reason="unauthenticated"} 1.0`,
	}
	for ok := false; !ok; {
		req, _ := http.NewRequest(http.MethodGet, metrics.URL, nil)
		req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		scrape, ok = string(b), true
		for _, w := range want {
			ok = ok && strings.Contains(scrape, w)
		}
		if !ok && time.Now().After(deadline) {
			t.Fatalf("want\n%s\nin\n%s", strings.Join(want, "\n"), scrape)
		}
		time.Sleep(5 * time.Millisecond)
	}
	http.DefaultClient.CloseIdleConnections()

	// Logs: the call record of Say has the principal, the trace id and a
	// duration in ms; the refused upgrade is logged with its reason.
	var sayRec, refusal map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		switch {
		case r["msg"] == logging.ServerMessage && r["procedure"] == echov1.EchoServiceSayProcedure:
			sayRec = r
		case r["msg"] == "tether upgrade refused":
			refusal = r
		}
	}
	if sayRec["principal"] != "alice" || sayRec["trace_id"] != sayTrace {
		t.Errorf("Say's record: %v", sayRec)
	}
	if ms, ok := sayRec["duration_ms"].(float64); !ok || ms <= 0 {
		t.Errorf("Say's duration_ms: %v", sayRec["duration_ms"])
	}
	if refusal["reason"] != "unauthenticated" || refusal["status"] != float64(401) {
		t.Errorf("refused upgrade's record: %v", refusal)
	}
}
