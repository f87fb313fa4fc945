package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
	webdemo "github.com/tetherrpc/tether/web/demo"
)

// runDemoWeb serves the echo service and a page that uses it from the
// browser with the TypeScript client (web/demo), and prints the page's URL.
// It serves until interrupted, or until stdin closes with -stdin.
func runDemoWeb(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo web", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "address to serve the page and the service on")
	untilStdin := fs.Bool("stdin", false, "stop when stdin closes (for tests)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: tether demo web [-addr host:port]\n\nServes example.echo.v1.EchoService at /rpc and, at /, a page that calls\nit from the browser with the TypeScript client (a bidi chat).\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv := server.New(server.WithLogger(logger))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	mux := http.NewServeMux()
	mux.Handle("/rpc", srv)
	mux.Handle("/", http.FileServerFS(webdemo.Files))
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(stderr, "demo web:", err)
		return exitFailure
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *untilStdin {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop()
		}()
	}
	fmt.Fprintf(stdout, "open http://%s/ (example.echo.v1.EchoService at ws://%s/rpc); Ctrl-C stops\n", ln.Addr(), ln.Addr())
	// Safe HTTP timeouts, and a drain of up to 5 s when ctx ends.
	if err := srv.Serve(ctx, ln, server.WithHTTPHandler(mux), server.WithShutdownGrace(5*time.Second)); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		fmt.Fprintln(stderr, "demo web:", err)
		return exitFailure
	}
	return exitOK
}
