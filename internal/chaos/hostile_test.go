package chaos

import (
	"io"
	"net"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether/internal/faultproxy"
)

// TestHostileAttacks runs every attack of the hostile peer against a fresh
// server: the server closes every connection, leaves no stream open, and no
// attack has an effect. On the code at 030d538 half-close-mid-message is
// applied (issue 10 item 10: a HALF_CLOSE in the middle of a fragmented
// message is taken as a clean end of the requests).
func TestHostileAttacks(t *testing.T) {
	log, err := OpenEffectLog(filepath.Join(t.TempDir(), "effects.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	srv := NewServer(log, 1, 0, discard())
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	addr := strings.TrimPrefix(hs.URL, "http://")
	for v, name := range HostileAttacks {
		res, err := Hostile(addr, v, "hostile-"+name, uint64(v))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%-24s close code %d", name, res.CloseCode)
	}
	deadline := time.Now().Add(10 * time.Second)
	for srv.Stats().Connections > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := srv.Stats(); st.Connections > 0 || st.ActiveStreams > 0 {
		t.Errorf("after the attacks: %d connections, %d streams still open", st.Connections, st.ActiveStreams)
	}
	if _, n := log.Balance("hostile"); n != 0 {
		t.Errorf("the attacks applied %d effects", n)
	}
}

// TestProxyCutOne: CutOne closes one proxied connection, the one asked for,
// and leaves the others working.
func TestProxyCutOne(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // echo server
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	p, err := faultproxy.New(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// One round trip: the proxy has accepted and tracks it.
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if !p.CutOne(1) {
		t.Fatal("CutOne found no connection")
	}
	for i, c := range conns {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, werr := c.Write([]byte("y"))
		_, rerr := io.ReadFull(c, make([]byte, 1))
		if cut := werr != nil || rerr != nil; cut != (i == 1) {
			t.Errorf("connection %d: write %v, read %v (cut %v, want %v)", i, werr, rerr, cut, i == 1)
		}
	}
}
