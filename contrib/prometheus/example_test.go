package prometheus_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"

	"github.com/tetherrpc/tether/client"
	tetherprom "github.com/tetherrpc/tether/contrib/prometheus"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

func ExampleNewServerMetrics() {
	// The metrics are an interceptor and a collector: install them in the
	// server and register them, with the collector of the server's Stats.
	metrics := tetherprom.NewServerMetrics()
	srv := server.New(server.WithInterceptors(metrics))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	reg := prom.NewRegistry()
	reg.MustRegister(metrics, tetherprom.NewServerCollector(srv))

	// Serve tether and /metrics.
	mux := http.NewServeMux()
	mux.Handle("/tether", srv)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	hs := httptest.NewServer(mux)
	defer hs.Close()
	defer srv.Close()

	cli, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http") + "/tether")
	if err != nil {
		panic(err)
	}
	defer cli.Close()
	if _, err := echov1.NewEchoServiceClient(cli).Say(context.Background(), &echov1.SayRequest{Text: "hi"}); err != nil {
		panic(err)
	}

	mfs, err := reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "tether_server_calls_total" {
			_, _ = expfmt.MetricFamilyToText(os.Stdout, mf)
		}
	}
	// Output:
	// # HELP tether_server_calls_total Tether calls that ended, by procedure and status code.
	// # TYPE tether_server_calls_total counter
	// tether_server_calls_total{code="ok",procedure="/example.echo.v1.EchoService/Say"} 1
}

func ExampleNewClientMetrics() {
	// Name each client with a constant label, so that several share a
	// registry.
	labels := tetherprom.WithConstLabels(prom.Labels{"client": "billing"})
	metrics := tetherprom.NewClientMetrics(labels)
	cli, err := client.New("wss://billing.example.com/tether", client.WithInterceptors(metrics))
	if err != nil {
		panic(err)
	}
	defer cli.Close()
	prom.MustRegister(metrics, tetherprom.NewClientCollector(cli, labels))
}
