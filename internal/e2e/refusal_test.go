package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// refusalAuth accepts the token "good" and refuses "denied" with
// permission_denied and anything else with unauthenticated.
var refusalAuth = server.BearerToken(func(r *http.Request, tok string) (server.Identity, error) {
	switch tok {
	case "good":
		return server.Identity{Principal: "p"}, nil
	case "denied":
		return server.Identity{}, tether.Errorf(tether.CodePermissionDenied, "not for you")
	}
	return server.Identity{}, tether.Errorf(tether.CodeUnauthenticated, "unknown token")
})

// TestBrowserRefusals: a browser cannot read the status or body of a
// refused upgrade, so a request with an (allowed) Origin that is refused
// for its credentials or its protocol version is upgraded and closed at
// once with 4401, 4403 or 4400 and the reason. Without Origin, and with
// server.WithHTTPHandshakeRefusals, the refusal stays HTTP.
func TestBrowserRefusals(t *testing.T) {
	_, u := secServer(t, nil, server.WithAuthenticator(refusalAuth))
	origin := "http://" + strings.TrimPrefix(u, "ws://") // same host: allowed
	browser := func(token string) http.Header {
		h := http.Header{"Origin": {origin}}
		if token != "" {
			h.Set("Authorization", "Bearer "+token)
		}
		return h
	}
	for _, tc := range []struct {
		name   string
		token  string
		protos []string
		code   int
		reason string
	}{
		{"no token", "", nil, server.CloseUnauthenticated, "tether: missing bearer token"},
		{"bad token", "bad", nil, server.CloseUnauthenticated, "tether: unknown token"},
		{"permission denied", "denied", nil, server.ClosePermissionDenied, "tether: not for you"},
		{"version", "good", []string{"tether.v2"}, server.CloseBadVersion, "tether: unsupported protocol version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := secDialer()
			if tc.protos != nil {
				d.Subprotocols = tc.protos
			}
			ws, resp, err := d.Dial(u, browser(tc.token))
			if err != nil {
				t.Fatalf("browser upgrade refused over HTTP (%v, status %v); want an upgrade and a close code", err, resp.Status)
			}
			defer ws.Close()
			if tc.protos != nil && ws.Subprotocol() != tc.protos[0] {
				// A browser that offered subprotocols fails a 101 that
				// selects none of them, and never reads the close code.
				t.Fatalf("server selected %q; want the first one the client offered, %q", ws.Subprotocol(), tc.protos[0])
			}
			text := secExpectClose(t, ws, tc.code, 5*time.Second)
			if !strings.HasPrefix(text, tc.reason) {
				t.Fatalf("close reason %q; want it to start with %q", text, tc.reason)
			}
		})
	}
	t.Run("no Origin: HTTP", func(t *testing.T) {
		_, resp, err := secDialer().Dial(u, http.Header{"Authorization": {"Bearer bad"}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("non-browser with a bad token: %v %v; want 401", err, resp)
		}
	})
	t.Run("WithHTTPHandshakeRefusals", func(t *testing.T) {
		_, u2 := secServer(t, nil, server.WithAuthenticator(refusalAuth), server.WithHTTPHandshakeRefusals())
		origin2 := "http://" + strings.TrimPrefix(u2, "ws://")
		_, resp, err := secDialer().Dial(u2, http.Header{"Origin": {origin2}, "Authorization": {"Bearer denied"}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("browser with WithHTTPHandshakeRefusals: %v %v; want 403", err, resp)
		}
	})
	t.Run("a good browser connects", func(t *testing.T) {
		ws := secDial(t, u, browser("good"))
		defer ws.Close()
		secWrite(t, ws, secPing(7, false))
		secExpectPingAck(t, ws, 7)
	})
}

// TestClientRefusedByCloseCode: a Go client that sends an Origin header gets
// the browser treatment; it must read 4401 as unauthenticated, fail waiting
// calls with it instead of letting them wait, and back off instead of
// reconnecting in a tight loop.
func TestClientRefusedByCloseCode(t *testing.T) {
	_, u := secServer(t, nil, server.WithAuthenticator(refusalAuth))
	origin := "http://" + strings.TrimPrefix(u, "ws://")
	c, ec := secClient(t, u, client.WithHandshakeHeader(http.Header{"Origin": {origin}, "Authorization": {"Bearer bad"}}))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err := ec.Say(ctx, &echov1.SayRequest{Text: "hi"})
	if tether.CodeOf(err) != tether.CodeUnauthenticated || !strings.Contains(err.Error(), "unknown token") {
		t.Fatalf("call on a refused connection: %v; want unauthenticated with the server's reason", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("the call waited %v for a connection that was refused", d)
	}
	time.Sleep(1500 * time.Millisecond)
	if n := c.Stats().ConnectAttempts; n > 10 {
		t.Fatalf("%d connection attempts in about 1.5 s after refusals; the client must back off (100 ms, x1.6)", n)
	}
	if st := c.State(); st != client.StateTransientFailure && st != client.StateConnecting {
		t.Fatalf("state %v; want transient failure or connecting", st)
	}
}
