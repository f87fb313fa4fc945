package logging_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/interceptors/logging"
	"github.com/tetherrpc/tether/server"
)

func ExampleNewServer() {
	// Drop the attributes that change from run to run, so that the output
	// below stays the same.
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			switch a.Key {
			case slog.TimeKey, "duration", "duration_ms", "peer":
				return slog.Attr{}
			}
			return a
		},
	}))

	srv := server.New(server.WithInterceptors(logging.NewServer(logger)))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()

	cli, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http"))
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := echov1.NewEchoServiceClient(cli).Say(ctx, &echov1.SayRequest{Text: "hello"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("response:", res.GetText())
	// Output:
	// level=INFO msg="tether server call" procedure=/example.echo.v1.EchoService/Say stream_type=unary code=ok
	// response: hello
}

func ExampleNewClient() {
	// A server to call, on 127.0.0.1.
	srv := server.New()
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()

	// Drop the attributes that change from run to run, so that the output
	// below stays the same.
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			switch a.Key {
			case slog.TimeKey, "duration", "duration_ms":
				return slog.Attr{}
			}
			return a
		},
	}))
	cli, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"),
		client.WithLogger(slog.New(slog.DiscardHandler)), // the connection's own logs
		client.WithInterceptors(
			// Successful calls at Debug, failures at Info; log the
			// request metadata keys and the request id, never other
			// values (an authorization value would show as [Redacted]).
			logging.NewClient(logger,
				logging.WithMetadataKeys(),
				logging.WithMetadataValues("x-request-id"),
			),
		))
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	md := tether.NewMetadata("x-request-id", "r-42")
	md.Set("tenant", "acme")
	if _, err := echov1.NewEchoServiceClient(cli).Say(ctx, &echov1.SayRequest{Text: "hello"}, client.WithHeader(md)); err != nil {
		log.Fatal(err)
	}
	// Output:
	// level=DEBUG msg="tether client call" procedure=/example.echo.v1.EchoService/Say stream_type=unary code=ok metadata_keys="[tenant x-request-id]" metadata.x-request-id=r-42
}
