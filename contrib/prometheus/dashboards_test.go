package prometheus_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	tetherprom "github.com/tetherrpc/tether/contrib/prometheus"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// traceKey carries the test's trace id in the client's context.
type traceKey struct{}

// TestDashboardOptions checks the options that fit grpc-go's dashboards
// on a scrape of a real /metrics endpoint in the OpenMetrics format: the
// started counter (in flight = started - ended), service / method / type
// labels, gRPC's code names, stream buckets, exemplars, the filter, and
// refused upgrades by reason.
func TestDashboardOptions(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	reg := prom.NewPedanticRegistry()
	// The exemplar of a server call is the trace id its client sent; of a
	// client call, the one in its context.
	srvExemplar := func(ctx context.Context) prom.Labels {
		if ci, ok := server.CallInfoFromContext(ctx); ok && ci.RequestHeader().Get("trace-id") != "" {
			return prom.Labels{"trace_id": ci.RequestHeader().Get("trace-id")}
		}
		return nil
	}
	cliExemplar := func(ctx context.Context) prom.Labels {
		if id, _ := ctx.Value(traceKey{}).(string); id != "" {
			return prom.Labels{"trace_id": id}
		}
		return nil
	}
	notChat := func(procedure string) bool { return procedure != chatProc }
	opts := []tetherprom.Option{tetherprom.WithServiceMethodLabels(), tetherprom.WithGRPCCodeNames(), tetherprom.WithFilter(notChat)}
	sm := tetherprom.NewServerMetrics(append(opts, tetherprom.WithExemplar(srvExemplar))...)
	srv := server.New(server.WithLogger(quiet), server.WithInterceptors(sm))
	echov1.RegisterEchoServiceHandler(srv, &testHandler{})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	cm := tetherprom.NewClientMetrics(append(opts, tetherprom.WithExemplar(cliExemplar), tetherprom.WithStreamBuckets([]float64{1, 3600}))...)
	cli, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), client.WithLogger(quiet), client.WithInterceptors(cm))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	reg.MustRegister(sm, cm, tetherprom.NewServerCollector(srv))
	hs2 := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError, EnableOpenMetrics: true}))
	defer hs2.Close()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	text := func() string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, hs2.URL, nil)
		req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}

	// An upgrade refused for its version (no tether.v1 subprotocol).
	up, _ := http.NewRequest(http.MethodGet, hs.URL, nil)
	up.Header = http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
	if resp, err := hc.Do(up); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("upgrade without subprotocol: %s, want 400", resp.Status)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ec := echov1.NewEchoServiceClient(cli)
	traced := context.WithValue(ctx, traceKey{}, "4bf92f3577b34da6a3ce929d0e0e4736")
	if _, err := ec.Say(traced, &echov1.SayRequest{Text: "x"}, client.WithHeader(tether.Metadata{"trace-id": {"4bf92f3577b34da6a3ce929d0e0e4736"}})); err != nil {
		t.Fatal(err)
	}
	// A call in flight: started, not ended.
	slow, cancelSlow := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := ec.Say(slow, &echov1.SayRequest{SleepMillis: 60_000})
		done <- err
	}()
	const say = `method="Say",service="example.echo.v1.EchoService",type="unary"`
	const countdown = `method="Countdown",service="example.echo.v1.EchoService",type="server_stream"`
	inFlight := `tether_server_calls_started_total{` + say + `} 2.0`
	deadline := time.Now().Add(10 * time.Second)
	for got := text(); !strings.Contains(got, inFlight); got = text() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s in\n%s", inFlight, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := text(); !strings.Contains(got, `tether_server_calls_total{code="OK",`+say+`} 1.0`) ||
		strings.Contains(got, `code="Canceled"`) {
		t.Fatalf("while one call is in flight:\n%s", got)
	}
	cancelSlow()
	if err := <-done; tether.CodeOf(err) != tether.CodeCanceled {
		t.Fatalf("slow Say: %v, want canceled", err)
	}
	// A server stream and a bidi stream (not measured: WithFilter).
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
	chat, err := ec.Chat(ctx)
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

	// Counters and exemplars as the OpenMetrics text shows them (labels
	// sorted, floats with a decimal point, exemplars with a timestamp).
	want := []string{
		`tether_server_calls_started_total{` + say + `} 2.0`,
		`tether_server_calls_total{code="OK",` + say + `} 1.0 # {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 1.0 `,
		`tether_server_calls_total{code="Canceled",` + say + `} 1.0`,
		`tether_client_calls_started_total{` + say + `} 2.0`,
		`tether_client_calls_total{code="OK",` + say + `} 1.0 # {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 1.0 `,
		`tether_client_calls_total{code="Canceled",` + say + `} 1.0`,
		`tether_client_calls_started_total{` + countdown + `} 1.0`,
		`tether_client_calls_total{code="OK",` + countdown + `} 1.0`,
		`tether_server_calls_total{code="OK",` + countdown + `} 1.0`,
		// The traced call's duration, with its exemplar.
		`tether_server_call_duration_seconds_bucket{` + say + `,le="0.0005"} 1 # {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"}`,
		// Buckets: unary calls DefaultBuckets, streams DefaultStreamBuckets
		// on the server, WithStreamBuckets on the client.
		`tether_server_call_duration_seconds_bucket{` + say + `,le="10.0"} 2`,
		`tether_server_call_duration_seconds_bucket{` + countdown + `,le="3600.0"} 1`,
		`tether_server_call_duration_seconds_bucket{` + countdown + `,le="1800.0"} 1`,
		`tether_client_call_duration_seconds_bucket{` + countdown + `,le="3600.0"} 1`,
		// Refused upgrades by reason.
		`tether_server_upgrades_refused_total{reason="version"} 1.0`,
		`tether_server_upgrades_refused_total{reason="origin"} 0.0`,
	}
	var got string
	deadline = time.Now().Add(10 * time.Second)
	for {
		got = text()
		var missing []string
		for _, w := range want {
			if !strings.Contains(got, w) {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			sort.Strings(missing)
			t.Fatalf("missing:\n%s\nscraped:\n%s", strings.Join(missing, "\n"), got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, absent := range []string{"procedure=", `code="ok"`, `method="Chat"`, `tether_client_call_duration_seconds_bucket{` + countdown + `,le="1800.0"}`} {
		if strings.Contains(got, absent) {
			t.Errorf("%s in the scrape:\n%s", absent, got)
		}
	}
}

// TestDashboardJSON checks that every metric the example Grafana dashboard
// queries is one the package exports.
func TestDashboardJSON(t *testing.T) {
	b, err := os.ReadFile("dashboards/tether.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	sm := tetherprom.NewServerMetrics()
	srv := server.New(server.WithLogger(quiet), server.WithInterceptors(sm))
	defer srv.Close()
	cm := tetherprom.NewClientMetrics()
	cli, err := client.New("ws://127.0.0.1:1/", client.WithLogger(quiet), client.WithInterceptors(cm))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	// One observation each, so that the vectors have series.
	call := &client.Call{Spec: tether.Spec{Procedure: sayProc}}
	_ = cm.WrapUnary(func(context.Context, *client.Call, proto.Message, proto.Message) error { return nil })(context.Background(), call, &echov1.SayRequest{}, &echov1.SayResponse{})
	_, _ = sm.WrapUnary(func(context.Context, proto.Message) (proto.Message, error) { return &echov1.SayResponse{}, nil })(context.Background(), &echov1.SayRequest{})
	reg := prom.NewPedanticRegistry()
	reg.MustRegister(sm, cm, tetherprom.NewServerCollector(srv), tetherprom.NewClientCollector(cli))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			have[mf.GetName()+"_bucket"] = true
		}
	}
	names := regexp.MustCompile(`tether_[a-z_]+`)
	n := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, name := range names.FindAllString(tg.Expr, -1) {
				n++
				if !have[name] {
					t.Errorf("panel %q queries %s, which is not exported", p.Title, name)
				}
			}
		}
	}
	if n == 0 {
		t.Error("the dashboard queries no tether metric")
	}
}
