package prometheus_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	tetherprom "github.com/tetherrpc/tether/contrib/prometheus"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	sayProc       = echov1.EchoServiceSayProcedure
	countdownProc = echov1.EchoServiceCountdownProcedure
	collectProc   = echov1.EchoServiceCollectProcedure
	chatProc      = echov1.EchoServiceChatProcedure
	nopeProc      = "/example.echo.v1.EchoService/Nope"
)

// testHandler is the example echo service without Collect, which fails with
// unimplemented through the server's interceptors, as in a service that has
// not implemented every method yet.
type testHandler struct{ echo.Handler }

func (testHandler) Collect(ctx context.Context, st *server.ClientStream[echov1.CollectRequest]) (*echov1.CollectResponse, error) {
	return echov1.UnimplementedEchoServiceHandler{}.Collect(ctx, st)
}

// scraper reads a /metrics endpoint over HTTP.
type scraper struct {
	url string
	hc  *http.Client
}

func newScraper(t *testing.T, g prom.Gatherer) *scraper {
	t.Helper()
	hs := httptest.NewServer(promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}))
	tr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		hs.Close()
	})
	return &scraper{url: hs.URL + "/metrics", hc: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// scrape scrapes and parses the exposition, in whatever format the
// handler chose.
func (s *scraper) scrape(t *testing.T) metrics {
	t.Helper()
	resp, err := s.hc.Get(s.url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: %s: %s", resp.Status, b)
	}
	dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
	out := metrics{}
	for {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("parse scrape: %v", err)
		}
		for _, m := range mf.GetMetric() {
			var v float64
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				v = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				v = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				v = float64(m.GetHistogram().GetSampleCount())
			default:
				t.Fatalf("%s: unexpected type %v", mf.GetName(), mf.GetType())
			}
			out[series(mf.GetName(), m.GetLabel())] = v
		}
	}
}

// metrics maps a series, written name{label="value",...} with the labels
// sorted, to its value (a histogram's: its count).
type metrics map[string]float64

func series(name string, labels []*dto.LabelPair) string {
	ls := make([]string, 0, len(labels))
	for _, l := range labels {
		ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	sort.Strings(ls)
	return name + "{" + strings.Join(ls, ",") + "}"
}

func (m metrics) String() string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %g\n", k, m[k])
	}
	return b.String()
}

// TestScrape is the acceptance test: a tether server and client on
// 127.0.0.1 with metrics, calls that succeed and calls that fail with known
// codes, and a scrape of a real /metrics endpoint.
func TestScrape(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	reg := prom.NewPedanticRegistry()

	sm := tetherprom.NewServerMetrics()
	srv := server.New(server.WithLogger(quiet), server.WithInterceptors(sm))
	echov1.RegisterEchoServiceHandler(srv, &testHandler{})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()

	clientLabels := tetherprom.WithConstLabels(prom.Labels{"client": "test"})
	cm := tetherprom.NewClientMetrics(clientLabels)
	cli, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), client.WithLogger(quiet), client.WithInterceptors(cm))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	reg.MustRegister(sm, tetherprom.NewServerCollector(srv), cm, tetherprom.NewClientCollector(cli, clientLabels))
	sc := newScraper(t, reg)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ec := echov1.NewEchoServiceClient(cli)

	// Three calls that succeed.
	for i := range 3 {
		if _, err := ec.Say(ctx, &echov1.SayRequest{Text: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// One that outlives its deadline.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = ec.Say(short, &echov1.SayRequest{SleepMillis: 10_000})
	cancelShort()
	if tether.CodeOf(err) != tether.CodeDeadlineExceeded {
		t.Fatalf("slow Say: %v, want deadline_exceeded", err)
	}
	// A server stream of four messages.
	cd, err := ec.Countdown(ctx, &echov1.CountdownRequest{Count: 4})
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
	// A method the handler does not implement.
	col, err := ec.Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := col.CloseAndReceive(); tether.CodeOf(err) != tether.CodeUnimplemented {
		t.Fatalf("Collect: %v, want unimplemented", err)
	}
	// A procedure the server does not serve: its handler never runs, so only
	// the client counts it.
	nope := &client.Method{Spec: tether.Spec{Procedure: nopeProc}}
	if _, err := client.CallUnary[echov1.SayRequest, echov1.SayResponse](ctx, cli, nope, &echov1.SayRequest{}); tether.CodeOf(err) != tether.CodeUnimplemented {
		t.Fatalf("Nope: %v, want unimplemented", err)
	}
	// A bidi stream the client abandons after one exchange.
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

	want := map[string]float64{
		`tether_server_calls_total{code="ok",procedure="` + sayProc + `"}`:                              3,
		`tether_server_calls_total{code="deadline_exceeded",procedure="` + sayProc + `"}`:               1,
		`tether_server_calls_total{code="ok",procedure="` + countdownProc + `"}`:                        1,
		`tether_server_calls_total{code="unimplemented",procedure="` + collectProc + `"}`:               1,
		`tether_server_calls_total{code="canceled",procedure="` + chatProc + `"}`:                       1,
		`tether_server_call_duration_seconds{procedure="` + sayProc + `"}`:                              4,
		`tether_server_messages_received_total{procedure="` + sayProc + `"}`:                            4,
		`tether_server_messages_sent_total{procedure="` + sayProc + `"}`:                                3,
		`tether_server_messages_received_total{procedure="` + countdownProc + `"}`:                      1,
		`tether_server_messages_sent_total{procedure="` + countdownProc + `"}`:                          4,
		`tether_server_messages_received_total{procedure="` + chatProc + `"}`:                           1,
		`tether_server_messages_sent_total{procedure="` + chatProc + `"}`:                               1,
		`tether_server_connections{}`:                                                                   1,
		`tether_server_connections_accepted_total{}`:                                                    1,
		`tether_server_active_streams{}`:                                                                0,
		`tether_client_calls_total{client="test",code="ok",procedure="` + sayProc + `"}`:                3,
		`tether_client_calls_total{client="test",code="deadline_exceeded",procedure="` + sayProc + `"}`: 1,
		`tether_client_calls_total{client="test",code="ok",procedure="` + countdownProc + `"}`:          1,
		`tether_client_calls_total{client="test",code="unimplemented",procedure="` + collectProc + `"}`: 1,
		`tether_client_calls_total{client="test",code="unimplemented",procedure="` + nopeProc + `"}`:    1,
		`tether_client_calls_total{client="test",code="canceled",procedure="` + chatProc + `"}`:         1,
		`tether_client_call_duration_seconds{client="test",procedure="` + sayProc + `"}`:                4,
		`tether_client_messages_sent_total{client="test",procedure="` + sayProc + `"}`:                  4,
		`tether_client_messages_received_total{client="test",procedure="` + sayProc + `"}`:              3,
		`tether_client_messages_received_total{client="test",procedure="` + countdownProc + `"}`:        4,
		`tether_client_connection_state{client="test",state="ready"}`:                                   1,
		`tether_client_connection_state{client="test",state="idle"}`:                                    0,
		`tether_client_connects_total{client="test"}`:                                                   1,
		`tether_client_reconnects_total{client="test"}`:                                                 0,
		`tether_client_dead_lettered_total{client="test"}`:                                              0,
	}
	absent := []string{
		// The server never ran a handler for it.
		`tether_server_calls_total{code="unimplemented",procedure="` + nopeProc + `"}`,
	}

	// The server ends a call after its client has the result: scrape until
	// the server's side has caught up.
	var got metrics
	deadline := time.Now().Add(10 * time.Second)
	for {
		got = sc.scrape(t)
		var missing []string
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				missing = append(missing, fmt.Sprintf("%s = %v (present %v), want %v", k, g, ok, v))
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			sort.Strings(missing)
			t.Fatalf("after 10s:\n%s\nscraped:\n%s", strings.Join(missing, "\n"), got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, k := range absent {
		if _, ok := got[k]; ok {
			t.Errorf("%s is present", k)
		}
	}
	for _, k := range []string{
		`tether_server_bytes_in_total{}`, `tether_server_bytes_out_total{}`,
		`tether_client_bytes_in_total{client="test"}`, `tether_client_bytes_out_total{client="test"}`,
		`tether_client_connect_attempts_total{client="test"}`,
	} {
		if got[k] <= 0 {
			t.Errorf("%s = %v, want > 0", k, got[k])
		}
	}
	// After the client closes, the server counts no connection and the
	// client says so.
	cli.Close()
	deadline = time.Now().Add(10 * time.Second)
	for {
		got = sc.scrape(t)
		if got[`tether_server_connections{}`] == 0 && got[`tether_client_connection_state{client="test",state="closed"}`] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after Close:\n%s", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got[`tether_server_connections_accepted_total{}`] != 1 || got[`tether_server_bytes_in_total{}`] <= 0 {
		t.Errorf("closed connections' counts lost:\n%s", got)
	}
}

// TestHistogramBuckets checks the buckets of the duration histogram.
func TestHistogramBuckets(t *testing.T) {
	for _, tc := range []struct {
		opts []tetherprom.Option
		want []float64
	}{
		{nil, tetherprom.DefaultBuckets},
		{[]tetherprom.Option{tetherprom.WithBuckets([]float64{0.1, 1})}, []float64{0.1, 1}},
	} {
		m := tetherprom.NewClientMetrics(tc.opts...)
		call := &client.Call{Spec: tether.Spec{Procedure: "/p.S/M"}}
		_ = m.WrapUnary(func(context.Context, *client.Call, proto.Message, proto.Message) error { return nil })(
			context.Background(), call, &echov1.SayRequest{}, &echov1.SayResponse{})
		reg := prom.NewPedanticRegistry()
		reg.MustRegister(m)
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var got []float64
		for _, mf := range mfs {
			if mf.GetName() == "tether_client_call_duration_seconds" {
				for _, b := range mf.GetMetric()[0].GetHistogram().GetBucket() {
					got = append(got, b.GetUpperBound())
				}
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("buckets = %v, want %v", got, tc.want)
		}
	}
	if b := tetherprom.DefaultBuckets; b[0] != 0.0005 || b[len(b)-1] != 10 {
		t.Errorf("DefaultBuckets = %v, want 0.5ms..10s", b)
	}
}

// TestSeveralClients: two clients' metrics share a registry with distinct
// constant labels; without them, registration fails.
func TestSeveralClients(t *testing.T) {
	reg := prom.NewPedanticRegistry()
	var clis []*client.Client
	for _, name := range []string{"a", "b"} {
		// The URL is never dialed successfully; the collectors only read Stats.
		cli, err := client.New("ws://127.0.0.1:1/", client.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		clis = append(clis, cli)
		l := tetherprom.WithConstLabels(prom.Labels{"client": name})
		if err := reg.Register(tetherprom.NewClientMetrics(l)); err != nil {
			t.Fatal(err)
		}
		if err := reg.Register(tetherprom.NewClientCollector(cli, l)); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for _, c := range clis {
			c.Close()
		}
	}()
	if err := reg.Register(tetherprom.NewClientCollector(clis[0], tetherprom.WithConstLabels(prom.Labels{"client": "a"}))); err == nil {
		t.Error("registering a duplicate collector succeeded")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		if mf.GetName() == "tether_client_connection_state" {
			n = len(mf.GetMetric())
		}
	}
	if n != 10 { // 5 states, 2 clients
		t.Errorf("%d connection_state series, want 10", n)
	}
}

// Issue 10 item 21: a unary call counts its request as sent only if it was
// written to a connection; one that never connected sends nothing.
func TestClientUnarySentCountsWrittenOnly(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	reg := prom.NewPedanticRegistry()
	metrics := tetherprom.NewClientMetrics()
	reg.MustRegister(metrics)

	// A refused port: a listener on 127.0.0.1 closed at once.
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "ws://" + ln.Addr().String()
	ln.Close()
	dead, err := client.New(deadURL, client.WithInterceptors(metrics), client.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := echov1.NewEchoServiceClient(dead).Say(ctx, &echov1.SayRequest{Text: "never"}); err == nil {
		t.Fatal("call to a refused port succeeded")
	}
	m := newScraper(t, reg).scrape(t)
	sent := `tether_client_messages_sent_total{procedure="` + sayProc + `"}`
	if v := m[sent]; v != 0 {
		t.Fatalf("a call that never connected counted %g message(s) sent:\n%s", v, m)
	}

	// A call that reaches the server counts its one request.
	srv := server.New(server.WithLogger(quiet))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	live, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), client.WithInterceptors(metrics), client.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	if _, err := echov1.NewEchoServiceClient(live).Say(ctx2, &echov1.SayRequest{Text: "once"}); err != nil {
		t.Fatal(err)
	}
	m = newScraper(t, reg).scrape(t)
	if v := m[sent]; v != 1 {
		t.Fatalf("one delivered call: %g message(s) sent, want 1:\n%s", v, m)
	}
}
