//go:build unix

package client

import (
	"context"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherrpc/tether/internal/mux"
	"github.com/tetherrpc/tether/server"
)

// The client's own TCP connections do without TCP keep-alive: the
// heartbeats detect a dead server, and keep-alive cost four system calls
// per connection.
func TestClientTCPWithoutKeepAlive(t *testing.T) {
	srv := server.New()
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Close(); hs.Close() })
	c, err := New("ws" + strings.TrimPrefix(hs.URL, "http"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for st := c.State(); st != StateReady; st = c.WaitForStateChange(ctx, st) {
		if ctx.Err() != nil {
			t.Fatalf("not ready: %v", st)
		}
	}
	c.mu.Lock()
	var conn *mux.Conn
	for cn := range c.conns {
		conn = cn
	}
	c.mu.Unlock()
	sc, ok := conn.NetConn().(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		t.Fatalf("%T has no socket", conn.NetConn())
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var on int
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		on, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
	}); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if on != 0 {
		t.Fatal("the client's TCP connection has keep-alive on")
	}
}
