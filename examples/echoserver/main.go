// Command echoserver serves example.echo.v1.EchoService (and the reflection
// service, for `tether list / describe / call`): the server half of the
// README's quick start, as a program of its own.
//
// It is also the check that a server pays only for what it uses: it links
// neither the client's connection manager nor the dead-letter queue, so
// neither go.etcd.io/bbolt nor github.com/cenkalti/backoff. .ci/run fails if
// `go list -deps ./examples/echoserver` shows either.
//
//	go run ./examples/echoserver -addr 127.0.0.1:8080
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/reflection"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	flag.Parse()

	srv := server.New()
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	// Reflection lets tools (tether list, describe, call) find the schema.
	reflection.Register(srv)
	mux := http.NewServeMux()
	mux.Handle("/rpc", srv)

	// Serve with safe HTTP timeouts (a peer that trickles its upgrade
	// request is cut after ReadHeaderTimeout, see docs/SECURITY.md); on
	// Ctrl-C, drain: GOAWAY to every client, running calls finish (up to
	// 10 s).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	log.Printf("serving example.echo.v1.EchoService on ws://%s/rpc", *addr)
	if err := srv.ListenAndServe(ctx, *addr, server.WithHTTPHandler(mux), server.WithShutdownGrace(10*time.Second)); err != nil {
		log.Fatal(err)
	}
}
