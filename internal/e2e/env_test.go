// Package e2e holds tether's end-to-end tests: generated clients calling
// generated handlers over real WebSocket connections on 127.0.0.1.
package e2e

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/internal/faultproxy"
	"github.com/tetherrpc/tether/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// env is a server and a client connected over loopback.
type env struct {
	srv  *server.Server
	hs   *httptest.Server
	url  string
	cli  *client.Client
	echo echov1.EchoServiceClient
}

type envConfig struct {
	handler echov1.EchoServiceHandler
	srvOpts []server.Option
	cliOpts []client.Option
	// dialURL rewrites the URL the client dials (for a proxy in between).
	dialURL func(serverURL string) string
}

// throughProxy is a dialURL that puts a fault proxy between the client and
// the server, kept in *p and closed when the test ends.
func throughProxy(t *testing.T, p **faultproxy.Proxy) func(string) string {
	return func(u string) string {
		px, err := faultproxy.New(strings.TrimPrefix(u, "ws://"))
		if err != nil {
			t.Fatal(err)
		}
		*p = px
		t.Cleanup(func() { _ = px.Close() })
		return "ws://" + px.Addr()
	}
}

func newEnv(t *testing.T, cfg envConfig) *env {
	t.Helper()
	if cfg.handler == nil {
		cfg.handler = &echo.Handler{}
	}
	e := &env{srv: server.New(cfg.srvOpts...)}
	echov1.RegisterEchoServiceHandler(e.srv, cfg.handler)
	e.hs = httptest.NewServer(e.srv) // listens on 127.0.0.1
	e.url = "ws" + strings.TrimPrefix(e.hs.URL, "http")
	dial := e.url
	if cfg.dialURL != nil {
		dial = cfg.dialURL(e.url)
	}
	cli, err := client.New(dial, cfg.cliOpts...)
	if err != nil {
		t.Fatal(err)
	}
	e.cli = cli
	e.echo = echov1.NewEchoServiceClient(cli)
	t.Cleanup(func() {
		_ = e.cli.Close()
		_ = e.srv.Close()
		e.hs.Close()
	})
	return e
}

// newHTTPServer serves h on 127.0.0.1 and returns its ws:// URL.
func newHTTPServer(t *testing.T, h http.Handler) string {
	t.Helper()
	hs := httptest.NewServer(h)
	t.Cleanup(func() {
		if s, ok := h.(*server.Server); ok {
			_ = s.Close()
		}
		hs.Close()
	})
	return "ws" + strings.TrimPrefix(hs.URL, "http")
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// newBenchEnv is newEnv for benchmarks.
func newBenchEnv(b *testing.B) *env {
	b.Helper()
	e := &env{srv: server.New(server.WithLogger(discardLogger()))}
	echov1.RegisterEchoServiceHandler(e.srv, &echo.Handler{})
	e.hs = httptest.NewServer(e.srv)
	e.url = "ws" + strings.TrimPrefix(e.hs.URL, "http")
	cli, err := client.New(e.url, client.WithLogger(discardLogger()))
	if err != nil {
		b.Fatal(err)
	}
	e.cli = cli
	e.echo = echov1.NewEchoServiceClient(cli)
	b.Cleanup(func() {
		_ = e.cli.Close()
		_ = e.srv.Close()
		e.hs.Close()
	})
	return e
}
