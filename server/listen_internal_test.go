package server

import (
	"bufio"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// otherHijacker does what mux.HijackPooled does on !unix builds: the
// ResponseWriter's Hijack, unchanged.
type otherHijacker struct{ http.ResponseWriter }

func (h otherHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(h.ResponseWriter).Hijack()
}

// TestPooledRequestReaderNotKept (review): where mux.HijackPooled hands
// gorilla the Hijack result unchanged (!unix builds; a refusal's upgrade
// everywhere), gorilla must not keep the listener's pooled request reader
// as the connection's own: serveConn pools it again, and the connection's
// first read went to a reset reader (a nil-pointer panic) while the next
// connection shared its buffer.
func TestPooledRequestReaderNotKept(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done, clientDone := make(chan struct{}), make(chan struct{})
	defer func() { close(done); <-clientDone }()
	go func() {
		defer close(clientDone)
		ws, _, err := websocket.DefaultDialer.Dial("ws://"+ln.Addr().String()+"/", nil)
		if err != nil {
			return
		}
		defer ws.Close()
		time.Sleep(100 * time.Millisecond)
		_ = ws.WriteMessage(websocket.BinaryMessage, []byte("hello"))
		<-done
	}()
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// serveConn's steps:
	lc := &limitedConn{Conn: nc, n: int64(DefaultMaxRequestHeaderBytes) + 4096}
	br := requestReaders.Get().(*bufio.Reader)
	br.Reset(lc)
	req, err := http.ReadRequest(br)
	if err != nil {
		t.Fatal(err)
	}
	w := &upgradeResponse{conn: nc, br: br, header: http.Header{}}
	up := websocket.Upgrader{WriteBufferSize: 0} // ReadBufferSize 0, as s.upgrader
	ws, err := up.Upgrade(otherHijacker{w}, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !w.hijacked || w.brKept {
		t.Fatalf("hijacked %v, request reader kept by the upgrader %v; want true, false", w.hijacked, w.brKept)
	}
	br.Reset(nil) // as serveConn does before pooling it
	requestReaders.Put(br)
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("reading the first WebSocket message panicked: %v", p)
		}
	}()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, msg, err := ws.ReadMessage(); err != nil || string(msg) != "hello" {
		t.Fatalf("first message %q, %v; want \"hello\"", msg, err)
	}
}

// TestReadHeaderTimeoutNeverUnbounded (review): WithReadHeaderTimeout with
// zero or less keeps the default, so that a request is never read without
// a bound (net/http falls back to its ReadTimeout; the upgrade-only
// listener has none).
func TestReadHeaderTimeoutNeverUnbounded(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Second} {
		c := serveConfig{readHeaderTimeout: DefaultReadHeaderTimeout}
		WithReadHeaderTimeout(d)(&c)
		if c.readHeaderTimeout != DefaultReadHeaderTimeout {
			t.Errorf("WithReadHeaderTimeout(%v): %v; want the default %v", d, c.readHeaderTimeout, DefaultReadHeaderTimeout)
		}
	}
	c := serveConfig{readHeaderTimeout: DefaultReadHeaderTimeout}
	WithReadHeaderTimeout(time.Second)(&c)
	if c.readHeaderTimeout != time.Second {
		t.Errorf("WithReadHeaderTimeout(1s): %v", c.readHeaderTimeout)
	}
}
