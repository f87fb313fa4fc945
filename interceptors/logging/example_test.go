package logging_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"

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
			case slog.TimeKey, "duration", "peer":
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
		panic(err)
	}
	defer cli.Close()
	res, err := echov1.NewEchoServiceClient(cli).Say(context.Background(), &echov1.SayRequest{Text: "hello"})
	if err != nil {
		panic(err)
	}
	fmt.Println("response:", res.GetText())
	// Output:
	// level=INFO msg="tether server call" procedure=/example.echo.v1.EchoService/Say stream_type=unary code=ok
	// response: hello
}

func ExampleNewClient() {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cli, err := client.New("wss://api.example.com/tether", client.WithInterceptors(
		// Successful calls at Debug, failures at Info; log the request
		// metadata keys and the request id, never other values.
		logging.NewClient(logger,
			logging.WithMetadataKeys(),
			logging.WithMetadataValues("x-request-id"),
		),
	))
	if err != nil {
		panic(err)
	}
	defer cli.Close()
	_ = echov1.NewEchoServiceClient(cli)
}
