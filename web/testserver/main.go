// Command testserver serves the echo example for the TypeScript client's
// end-to-end tests (web/test, web/test-browser): on 127.0.0.1 with a free
// port, it prints one JSON line with its URLs and serves until stdin
// closes.
//
//	/rpc          the echo service; the x-echo request header comes back as
//	              a response header and trailer, and the unary calls it
//	              served are counted
//	/rpc-auth     refuses every handshake (401; close 4401 for browsers)
//	/rpc-limit    the echo service with MaxConcurrentStreams 4
//	proxy /rpc    the echo service through a TCP proxy; POST /control/cut
//	              cuts every proxied connection (RST)
//	/             the files of -static, if given (the demo and browser tests)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/internal/faultproxy"
	"github.com/tetherrpc/tether/server"
)

// echoHeader copies the x-echo request header to the response header and
// trailer, and counts unary calls.
type echoHeader struct{ calls *atomic.Int64 }

func (e echoHeader) WrapUnary(next server.UnaryFunc) server.UnaryFunc {
	return func(ctx context.Context, req proto.Message) (proto.Message, error) {
		e.calls.Add(1)
		copyEcho(ctx)
		return next(ctx, req)
	}
}

func (e echoHeader) WrapStream(next server.StreamFunc) server.StreamFunc {
	return func(ctx context.Context, s server.Stream) error {
		copyEcho(ctx)
		return next(ctx, s)
	}
}

func copyEcho(ctx context.Context) {
	ci, ok := server.CallInfoFromContext(ctx)
	if !ok {
		return
	}
	if v := ci.RequestHeader().Values("x-echo"); len(v) > 0 {
		ci.ResponseHeader()["x-echo"] = v
		ci.ResponseTrailer()["x-echo-trailer"] = v
	}
	if ci.RequestHeader().Get("x-fail") != "" {
		ci.ResponseTrailer().Set("x-failed", "yes")
	}
}

// failing fails Say with not_found when asked to (x-fail), to test errors.
type failing struct{ echo.Handler }

func (f *failing) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	if ci, ok := server.CallInfoFromContext(ctx); ok && ci.RequestHeader().Get("x-fail") != "" {
		return nil, tether.Errorf(tether.CodeNotFound, "no such thing: %s", req.GetText())
	}
	return f.Handler.Say(ctx, req)
}

func main() {
	static := flag.String("static", "", "directory to serve at /")
	flag.Parse()
	log.SetFlags(0)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var calls atomic.Int64

	// Any origin: the browser suite reaches this server through the proxy too,
	// whose port differs from the page's.
	srv := server.New(server.WithLogger(logger), server.WithInterceptors(echoHeader{&calls}), server.WithAllowedOrigins("*"))
	echov1.RegisterEchoServiceHandler(srv, &failing{})
	auth := server.New(server.WithLogger(logger), server.WithAuthenticator(func(*http.Request) (server.Identity, error) {
		return server.Identity{}, errors.New("no credentials")
	}))
	echov1.RegisterEchoServiceHandler(auth, &echo.Handler{})
	limited := server.New(server.WithLogger(logger), server.WithMaxConcurrentStreams(4))
	echov1.RegisterEchoServiceHandler(limited, &echo.Handler{})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	proxy, err := faultproxy.New(ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/rpc", srv)
	mux.Handle("/rpc-auth", auth)
	mux.Handle("/rpc-limit", limited)
	mux.HandleFunc("POST /control/cut", func(w http.ResponseWriter, _ *http.Request) { proxy.CutAll() })
	mux.HandleFunc("GET /control/calls", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, calls.Load()) })
	if *static != "" {
		mux.Handle("/", http.FileServer(http.Dir(*static)))
	}
	hs := &http.Server{Handler: mux}
	go func() { _ = hs.Serve(ln) }()

	base := "127.0.0.1:" + strings.Split(ln.Addr().String(), ":")[1]
	_ = json.NewEncoder(os.Stdout).Encode(map[string]string{
		"url":     "ws://" + base + "/rpc",
		"auth":    "ws://" + base + "/rpc-auth",
		"limit":   "ws://" + base + "/rpc-limit",
		"proxied": "ws://" + proxy.Addr() + "/rpc",
		"http":    "http://" + base,
	})
	_, _ = io.Copy(io.Discard, os.Stdin) // serve until the test closes stdin
	_ = proxy.Close()
	_ = hs.Close()
	_ = srv.Close()
	_ = auth.Close()
	_ = limited.Close()
}
