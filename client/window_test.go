package client_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/internal/frame"
)

// TestStreamWindowAnnounced: a client grants the server its stream window
// right after OPEN (docs/PROTOCOL.md, section 7): 1 MiB by default
// (client.DefaultStreamWindow, four times the server's), what
// WithStreamWindow says otherwise.
func TestStreamWindowAnnounced(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []client.Option
		want int
	}{
		{"default", nil, 1 << 20},
		{"WithStreamWindow", []client.Option{client.WithStreamWindow(256 << 10)}, 256 << 10},
		{"WithStreamWindow(0) keeps the default", []client.Option{client.WithStreamWindow(0)}, client.DefaultStreamWindow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := firstWindow(t, tc.opts...); got != tc.want-65536 {
				t.Fatalf("WINDOW after OPEN granted %d; want %d (a window of %d)", got, tc.want-65536, tc.want)
			}
		})
	}
}

// firstWindow starts a call through a client with opts against a raw
// WebSocket peer and returns the increment of the first WINDOW frame the
// client sends for the call's stream.
func firstWindow(t *testing.T, opts ...client.Option) int {
	t.Helper()
	got := make(chan int, 1)
	report := func(n int) { // the first answer counts; a reconnect's is dropped
		select {
		case got <- n:
		default:
		}
	}
	up := websocket.Upgrader{Subprotocols: []string{tether.Subprotocol}}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			_, msg, err := ws.ReadMessage()
			if err != nil {
				report(-1)
				return
			}
			for len(msg) > 0 {
				f, rest, err := frame.Parse(msg)
				if err != nil {
					t.Errorf("parsing the client's frames: %v", err)
					report(-1)
					return
				}
				if f.Type == frame.TypeWindow && f.StreamID != 0 {
					report(int(frame.WindowIncrement(f)))
					return
				}
				msg = rest
			}
		}
	}))
	defer hs.Close()

	c, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), append([]client.Option{client.WithLogger(quietLogger())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := c.NewStream(ctx, &client.Method{Spec: tether.Spec{Procedure: "/test.v1.Test/Stream", StreamType: tether.StreamTypeBidi}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.CloseSend()
	select {
	case n := <-got:
		return n
	case <-ctx.Done():
		t.Fatal("the client sent no WINDOW for its stream")
		return 0
	}
}
