package mux

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// pair connects a client Conn to a server Conn over a real WebSocket on
// 127.0.0.1 (httptest) and closes both, and the server, when the test ends.
func pair(t *testing.T, scfg, ccfg Config) (cc, sc *Conn) {
	t.Helper()
	conns := make(chan *Conn, 1)
	up := websocket.Upgrader{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		conns <- New(ws, RoleServer, scfg)
	}))
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	if err != nil {
		hs.Close()
		t.Fatal(err)
	}
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
	up := websocket.Upgrader{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		conns <- New(ws, RoleServer, scfg)
	}))
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	if err != nil {
		hs.Close()
		t.Fatal(err)
	}
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
