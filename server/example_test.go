package server_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// Serve a service: register the generated handler and mount the server on
// any mux.
func Example() {
	srv := server.New(server.WithAllowedOrigins("https://app.example.com"))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	mux := http.NewServeMux()
	mux.Handle("/rpc", srv)
	hs := httptest.NewServer(mux) // srv.ListenAndServe in a real program (ExampleServer_Serve)
	defer hs.Close()
	defer srv.Close()

	c, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http") + "/rpc")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := echov1.NewEchoServiceClient(c).Say(ctx, &echov1.SayRequest{Text: "hi"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.GetText())
	// Output: hi
}

// Serve with safe HTTP timeouts until a context ends, then drain
// gracefully: clients get GOAWAY, calls in flight finish, connections close.
func ExampleServer_Serve() {
	srv := server.New()
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	mux := http.NewServeMux()
	mux.Handle("/rpc", srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0") // or srv.ListenAndServe(ctx, addr, …)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background()) // signal.NotifyContext in a real program
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln, server.WithHTTPHandler(mux)) }()

	c, err := client.New("ws://" + ln.Addr().String() + "/rpc")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	callCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := echov1.NewEchoServiceClient(c).Say(callCtx, &echov1.SayRequest{Text: "hi"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.GetText())

	stop()
	fmt.Println("drained:", <-served)
	// Output:
	// hi
	// drained: <nil>
}

// Serve tether alone on its port: without WithHTTPHandler, Serve reads
// the upgrade requests itself instead of running an http.Server (fewer
// goroutines, system calls and buffers per connection; any path is
// accepted, and other requests get an HTTP error). Mount the Server on a
// mux with WithHTTPHandler when the port also serves other endpoints.
func ExampleServer_Serve_upgradeOnly() {
	srv := server.New()
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()

	c, err := client.New("ws://" + ln.Addr().String() + "/rpc")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	callCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := echov1.NewEchoServiceClient(c).Say(callCtx, &echov1.SayRequest{Text: "hi"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.GetText())

	stop()
	fmt.Println("drained:", <-served)
	// Output:
	// hi
	// drained: <nil>
}

// An interceptor that refuses calls without a tenant header.
func ExampleUnaryInterceptorFunc() {
	requireTenant := server.UnaryInterceptorFunc(func(next server.UnaryFunc) server.UnaryFunc {
		return func(ctx context.Context, req proto.Message) (proto.Message, error) {
			ci, _ := server.CallInfoFromContext(ctx)
			if ci.RequestHeader().Get("tenant") == "" {
				return nil, tether.Errorf(tether.CodeInvalidArgument, "tenant header required")
			}
			return next(ctx, req)
		}
	})
	srv := server.New(server.WithInterceptors(requireTenant))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()

	c, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	echoClient := echov1.NewEchoServiceClient(c)
	_, err = echoClient.Say(ctx, &echov1.SayRequest{})
	fmt.Println(err)
	_, err = echoClient.Say(ctx, &echov1.SayRequest{}, client.WithHeader(tether.NewMetadata("tenant", "acme")))
	fmt.Println(err)
	// Output:
	// invalid_argument: tenant header required
	// <nil>
}
