package otel_test

import (
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"strings"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tetherrpc/tether/client"
	tetherotel "github.com/tetherrpc/tether/contrib/otel"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

func ExampleNewServer() {
	// A tracer provider that keeps its spans in memory; a real one exports
	// them (go.opentelemetry.io/otel/exporters/...).
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() {
		if err := tp.Shutdown(context.Background()); err != nil {
			log.Fatal(err)
		}
	}()

	srv := server.New(server.WithInterceptors(tetherotel.NewServer(tetherotel.WithTracerProvider(tp))))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()

	cli, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"),
		client.WithInterceptors(tetherotel.NewClient(tetherotel.WithTracerProvider(tp))))
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := echov1.NewEchoServiceClient(cli).Say(ctx, &echov1.SayRequest{Text: "hi"}); err != nil {
		log.Fatal(err)
	}

	// The server's span ends first, inside the client's.
	spans := rec.Ended()
	if len(spans) != 2 {
		log.Fatalf("%d spans, want 2", len(spans))
	}
	for _, s := range spans {
		fmt.Println(s.SpanKind(), s.Name())
	}
	fmt.Println("same trace:", spans[0].SpanContext().TraceID() == spans[1].SpanContext().TraceID())
	fmt.Println("server's parent is the client:", spans[0].Parent().SpanID() == spans[1].SpanContext().SpanID())
	// Output:
	// server example.echo.v1.EchoService/Say
	// client example.echo.v1.EchoService/Say
	// same trace: true
	// server's parent is the client: true
}
