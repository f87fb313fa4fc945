package server_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"testing"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// TestServeTLSListenerRequestTLS (review): Serve given a TLS listener
// (tls.NewListener) without WithServeTLS hands the Authenticator the
// request's TLS state (to check client certificates, say) on the
// upgrade-only listener as on an http.Server.
func TestServeTLSListenerRequestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	for _, name := range []string{"upgrade-only", "http.Server"} {
		t.Run(name, func(t *testing.T) {
			srv := server.New(server.WithAuthenticator(func(r *http.Request) (server.Identity, error) {
				if r.TLS == nil {
					return server.Identity{}, tether.Errorf(tether.CodeUnauthenticated, "no TLS state")
				}
				return server.Identity{Principal: "tls"}, nil
			}))
			echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			tln := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
			var opts []server.ServeOption
			if name == "http.Server" {
				opts = append(opts, server.WithHTTPServer(func(*http.Server) {}))
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ctx, tln, opts...) }()
			defer func() { cancel(); <-done }()
			cli := newEchoClient(t, "wss://"+ln.Addr().String(), client.WithTLSConfig(&tls.Config{RootCAs: pool}))
			if _, err := cli.Say(testContext(t), &echov1.SayRequest{Text: "hi"}, client.FailFast()); err != nil {
				t.Fatalf("Say: %v", err)
			}
		})
	}
}
