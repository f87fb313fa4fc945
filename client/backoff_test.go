package client_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
)

// Issue 10 item 15: a server that accepts the upgrade and closes the
// connection at once (1008, as for a token valid at the upgrade and
// rejected right after) is redialed with a growing backoff, not in a loop:
// the backoff resets only after a connection proved healthy.
func TestBackoffNotResetByUnhealthyConnection(t *testing.T) {
	var upgrades atomic.Int64
	up := websocket.Upgrader{Subprotocols: []string{tether.Subprotocol}}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		upgrades.Add(1)
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.ClosePolicyViolation, "token rejected"), time.Now().Add(time.Second))
		ws.Close()
	}))
	defer hs.Close()

	c, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), client.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	c.Close()
	// Default backoff: 100ms growing 1.6x with 50% jitter gives at most
	// about 9 attempts in 3s; a backoff reset after each connection gives
	// one every ~50ms (61 observed).
	if n := upgrades.Load(); n > 15 {
		t.Fatalf("%d upgrades in 3s from one client: the backoff was reset by connections that never served a call", n)
	} else {
		t.Logf("%d upgrades in 3s", n)
	}
}
