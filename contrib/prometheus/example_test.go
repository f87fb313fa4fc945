package prometheus_test

import (
	"context"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"time"

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
		log.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := echov1.NewEchoServiceClient(cli).Say(ctx, &echov1.SayRequest{Text: "hi"}); err != nil {
		log.Fatal(err)
	}

	mfs, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "tether_server_calls_total" {
			if _, err := expfmt.MetricFamilyToText(os.Stdout, mf); err != nil {
				log.Fatal(err)
			}
		}
	}
	// Output:
	// # HELP tether_server_calls_total Tether calls that ended, by procedure and status code.
	// # TYPE tether_server_calls_total counter
	// tether_server_calls_total{code="ok",procedure="/example.echo.v1.EchoService/Say"} 1
}

func ExampleNewClientMetrics() {
	// A server to call, on 127.0.0.1.
	srv := server.New()
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()

	// Name each client with a constant label, so that several share a
	// registry (prometheus.DefaultRegisterer in a real program).
	labels := tetherprom.WithConstLabels(prom.Labels{"client": "billing"})
	metrics := tetherprom.NewClientMetrics(labels)
	cli, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), client.WithInterceptors(metrics))
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	reg := prom.NewRegistry()
	reg.MustRegister(metrics, tetherprom.NewClientCollector(cli, labels))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := echov1.NewEchoServiceClient(cli).Say(ctx, &echov1.SayRequest{Text: "hi"}); err != nil {
		log.Fatal(err)
	}

	mfs, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "tether_client_calls_total", "tether_client_messages_sent_total", "tether_client_connects_total":
			if _, err := expfmt.MetricFamilyToText(os.Stdout, mf); err != nil {
				log.Fatal(err)
			}
		}
	}
	// Output:
	// # HELP tether_client_calls_total Tether calls that ended, by procedure and status code.
	// # TYPE tether_client_calls_total counter
	// tether_client_calls_total{client="billing",code="ok",procedure="/example.echo.v1.EchoService/Say"} 1
	// # HELP tether_client_connects_total Tether connections established.
	// # TYPE tether_client_connects_total counter
	// tether_client_connects_total{client="billing"} 1
	// # HELP tether_client_messages_sent_total Messages sent in tether calls.
	// # TYPE tether_client_messages_sent_total counter
	// tether_client_messages_sent_total{client="billing",procedure="/example.echo.v1.EchoService/Say"} 1
}
