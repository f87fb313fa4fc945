package e2e

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// TestPingIntervalAnnounced: each side announces its PingInterval, in
// milliseconds, in the handshake (Tether-Ping-Interval), so that a peer
// that can read handshake headers judges silence without guessing.
func TestPingIntervalAnnounced(t *testing.T) {
	srv := server.New(server.WithLogger(discardLogger()), server.WithHeartbeat(3*time.Second, 7*time.Second))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	var mu sync.Mutex
	var got string
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = r.Header.Get("Tether-Ping-Interval")
		mu.Unlock()
		srv.ServeHTTP(w, r)
	}))
	defer hs.Close()
	u := "ws" + strings.TrimPrefix(hs.URL, "http")
	ws, resp, err := secDialer().Dial(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v := resp.Header.Get("Tether-Ping-Interval"); v != "3000" {
		t.Fatalf("server's 101 announces Tether-Ping-Interval %q; want 3000", v)
	}
	_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	ws.Close()
	c, err := client.New(u, client.WithLogger(discardLogger()), client.WithHeartbeat(4*time.Second, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := echov1.NewEchoServiceClient(c).Say(testCtx(t), &echov1.SayRequest{Text: "hi"}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got != "4000" {
		t.Fatalf("client's upgrade request announces Tether-Ping-Interval %q; want 4000", got)
	}
}

// TestClientProtocolErrorCloseLogged: a browser client that finds a
// protocol error closes with 4002 (it cannot send 1002); the server logs
// it as a warning with the reason, as it does for 1002.
func TestClientProtocolErrorCloseLogged(t *testing.T) {
	logs := &secLog{}
	_, u := secServer(t, nil, server.WithLogger(logs.logger()))
	ws := secDial(t, u, nil)
	defer ws.Close()
	msg := websocket.FormatCloseMessage(server.CloseClientProtocolError, "tether: protocol error: bad WINDOW")
	if err := ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := secAwaitClose(ws, 10*time.Second); code != server.CloseClientProtocolError {
		t.Fatalf("server answered the close with %d; want 4002 echoed", code)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "bad WINDOW") {
		if time.Now().After(deadline) {
			t.Fatalf("no warning naming the client's protocol error; log:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
