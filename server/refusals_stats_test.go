package server_test

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/server"
)

// TestUpgradesRefusedCounted: every refused upgrade is counted by reason in
// Stats and logged with its reason and status.
func TestUpgradesRefusedCounted(t *testing.T) {
	logs := &lockedBuffer{}
	srv := server.New(
		server.WithLogger(slog.New(slog.NewTextHandler(logs, nil))),
		server.WithAllowedOrigins("https://app.example"),
		server.WithMaxConnectionsPerIP(1),
		server.WithAuthenticator(func(r *http.Request) (server.Identity, error) {
			switch r.Header.Get("Authorization") {
			case "":
				return server.Identity{}, tether.Errorf(tether.CodeUnauthenticated, "no credentials")
			case "denied":
				return server.Identity{}, tether.Errorf(tether.CodePermissionDenied, "not you")
			}
			return server.Identity{Principal: "p"}, nil
		}),
	)
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(hs.URL, "http")
	dial := func(protocols []string, h http.Header) *websocket.Conn {
		t.Helper()
		d := websocket.Dialer{Subprotocols: protocols}
		c, resp, err := d.Dial(url, h)
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		if err != nil {
			return nil
		}
		return c
	}
	proto := []string{tether.Subprotocol}
	dial(proto, http.Header{"Origin": {"https://evil.example"}, "Authorization": {"ok"}})
	dial([]string{"tether.v0"}, http.Header{"Authorization": {"ok"}})
	dial(proto, nil)
	dial(proto, http.Header{"Authorization": {"denied"}})
	ok := dial(proto, http.Header{"Authorization": {"ok"}})
	if ok == nil {
		t.Fatal("the good handshake failed")
	}
	defer ok.Close()
	dial(proto, http.Header{"Authorization": {"ok"}}) // a second from 127.0.0.1

	got := srv.Stats().UpgradesRefused
	want := map[string]uint64{
		server.RefusalOrigin: 1, server.RefusalVersion: 1, server.RefusalUnauthenticated: 1,
		server.RefusalPermissionDenied: 1, server.RefusalMaxPerIP: 1,
		server.RefusalMaxConnections: 0, server.RefusalShuttingDown: 0,
	}
	if len(got) != len(want) {
		t.Errorf("UpgradesRefused = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("UpgradesRefused[%s] = %d, want %d", k, got[k], v)
		}
	}
	for _, line := range []string{
		"reason=origin status=403", "reason=version status=400", "reason=unauthenticated status=401",
		"reason=permission_denied status=403", "reason=max_connections_ip status=429",
	} {
		if !strings.Contains(logs.String(), `msg="tether upgrade refused" `+line+" peer=127.0.0.1:") {
			t.Errorf("no log of %s in:\n%s", line, logs.String())
		}
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
