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
)

// TestQueuedOpenLeavesOnGoAway: a call waiting for one of the server's
// announced stream slots must give up that connection at once when it
// drains (GOAWAY), as unprocessed, so that it is retried on the next one,
// instead of waiting for a stream on the old connection to end.
func TestQueuedOpenLeavesOnGoAway(t *testing.T) {
	release := make(chan struct{})
	conns := make(chan *Conn, 1)
	up := websocket.Upgrader{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		conns <- New(ws, RoleServer, Config{MaxConcurrentStreams: 1, Accept: func(s *Stream, _ *tetherv1.Open) {
			<-release
			_ = s.Finish(nil, nil)
		}})
	}))
	defer hs.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cc := New(ws, RoleClient, Config{PeerMaxStreams: 1})
	sc := <-conns
	defer cc.Close()
	defer sc.Close()
	if _, _, err := cc.Open(context.Background(), &tetherv1.Open{Procedure: "/a/b"}, nil, false); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := cc.Open(context.Background(), &tetherv1.Open{Procedure: "/a/b"}, nil, false)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	go sc.Shutdown(context.Background())
	select {
	case <-cc.Draining():
	case <-time.After(2 * time.Second):
		t.Fatal("no GOAWAY")
	}
	start := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, ErrUnprocessed) {
			t.Errorf("queued Open after GOAWAY: %v; want an unprocessed error (retried elsewhere)", err)
		}
		t.Logf("queued Open returned after GOAWAY in %v: %v", time.Since(start), err)
	case <-time.After(2 * time.Second):
		close(release)
		err := <-done
		t.Errorf("queued Open still blocked 2s after GOAWAY; returned only once the old stream ended: %v", err)
		return
	}
	close(release)
}
