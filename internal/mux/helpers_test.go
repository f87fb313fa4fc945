package mux

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// dialWS starts an HTTP server on 127.0.0.1 (httptest) that upgrades each
// request and gives its WebSocket to accept, and dials it once: it returns
// the client's WebSocket and the server, which the caller closes.
func dialWS(t testing.TB, accept func(ws *websocket.Conn)) (*websocket.Conn, *httptest.Server) {
	t.Helper()
	up := websocket.Upgrader{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		accept(ws)
	}))
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	if err != nil {
		hs.Close()
		t.Fatal(err)
	}
	return ws, hs
}

// pair connects a client Conn to a server Conn over a real WebSocket on
// 127.0.0.1 (httptest) and closes both, and the server, when the test ends.
func pair(t testing.TB, scfg, ccfg Config) (cc, sc *Conn) {
	t.Helper()
	conns := make(chan *Conn, 1)
	ws, hs := dialWS(t, func(ws *websocket.Conn) { conns <- New(ws, RoleServer, scfg) })
	cc = New(ws, RoleClient, ccfg)
	sc = <-conns
	t.Cleanup(func() {
		cc.Close()
		sc.Close()
		<-cc.Done()
		<-sc.Done()
		hs.Close()
	})
	return cc, sc
}

// rawPeer dials a server Conn built from scfg with a bare WebSocket, so that
// the test can send frames no Go client would.
func rawPeer(t *testing.T, scfg Config) (ws *websocket.Conn, sc *Conn) {
	t.Helper()
	conns := make(chan *Conn, 1)
	ws, hs := dialWS(t, func(ws *websocket.Conn) { conns <- New(ws, RoleServer, scfg) })
	sc = <-conns
	t.Cleanup(func() {
		ws.Close()
		sc.Close()
		<-sc.Done()
		hs.Close()
	})
	return ws, sc
}

// waitFor polls cond until it holds or the (generous) timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawServer serves one WebSocket on 127.0.0.1 with serve, a function that
// plays a server by hand, and returns a client Conn connected to it.
func rawServer(t *testing.T, ccfg Config, serve func(ws *websocket.Conn)) *Conn {
	t.Helper()
	done := make(chan struct{})
	ws, hs := dialWS(t, func(ws *websocket.Conn) {
		defer close(done)
		defer ws.Close()
		serve(ws)
	})
	cc := New(ws, RoleClient, ccfg)
	t.Cleanup(func() {
		cc.Close()
		<-cc.Done()
		<-done
		hs.Close()
	})
	return cc
}

// writeFrames sends frames as one WebSocket message.
func writeFrames(t *testing.T, ws *websocket.Conn, frames ...frame.Frame) {
	t.Helper()
	var b []byte
	for _, f := range frames {
		b = frame.Append(b, f)
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		t.Fatal(err)
	}
}

// awaitClose reads from ws until its close frame and returns the close code
// (0 if the connection ended without one).
func awaitClose(ws *websocket.Conn, timeout time.Duration) (int, string) {
	_ = ws.SetReadDeadline(time.Now().Add(timeout))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code, ce.Text
			}
			return 0, err.Error()
		}
	}
}

// parseFrames splits one WebSocket message into its frames (their payloads
// alias m), reporting a malformed one as the test's error.
func parseFrames(t *testing.T, m []byte) ([]frame.Frame, bool) {
	t.Helper()
	var fs []frame.Frame
	for len(m) > 0 {
		f, rest, err := frame.Parse(m)
		if err != nil {
			t.Error(err)
			return nil, false
		}
		fs = append(fs, f)
		m = rest
	}
	return fs, true
}

// messageTally counts the MESSAGE frames a raw peer reads, a WebSocket
// message at a time (read).
type messageTally struct {
	seen   int   // whole messages
	splits int   // WebSocket messages that ended inside a message (its fragments split)
	credit int   // credit the frames consumed (the caller resets it as it grants)
	size   int   // payload bytes of the message being received
	sizes  []int // each whole message's payload size
}

// read reads a WebSocket message from ws and tallies its MESSAGE frames. It
// returns the message's length, and false when the read or a frame failed.
func (m *messageTally) read(t *testing.T, ws *websocket.Conn) (int, bool) {
	t.Helper()
	_, b, err := ws.ReadMessage()
	if err != nil {
		return 0, false
	}
	fs, ok := parseFrames(t, b)
	if !ok {
		return 0, false
	}
	more := false
	for _, f := range fs {
		if f.Type != frame.TypeMessage {
			continue
		}
		m.credit += len(f.Payload) + FrameOverhead
		m.size += len(f.Payload)
		if more = f.Flags&frame.FlagMore != 0; !more {
			m.seen++
			m.sizes = append(m.sizes, m.size)
			m.size = 0
		}
	}
	if more {
		m.splits++
	}
	return len(b), true
}

// openFor opens a stream on cc (the procedure /a/b, no request yet) with a
// context that ends after d, or with the test.
func openFor(t *testing.T, cc *Conn, d time.Duration) (context.Context, *Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, s
}
