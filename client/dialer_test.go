package client_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/server"
)

// TestContextDialer: the client opens its connection with the dialer given
// by WithContextDialer; here it binds the local address 127.0.0.2, and the
// server sees the upgrade come from there.
func TestContextDialer(t *testing.T) {
	srv := server.New(server.WithLogger(quietLogger()))
	from := make(chan string, 1)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case from <- r.RemoteAddr:
		default:
		}
		srv.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { srv.Close(); hs.Close() })
	var dials atomic.Int32
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	c, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"),
		client.WithLogger(quietLogger()),
		client.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			dials.Add(1)
			return d.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for st := c.State(); st != client.StateReady; st = c.WaitForStateChange(ctx, st) {
		if ctx.Err() != nil {
			t.Fatalf("not ready: %v", st)
		}
	}
	if dials.Load() == 0 {
		t.Fatal("the dialer was not used")
	}
	if addr := <-from; !strings.HasPrefix(addr, "127.0.0.2:") {
		t.Fatalf("server saw the upgrade from %s, want 127.0.0.2", addr)
	}
}
