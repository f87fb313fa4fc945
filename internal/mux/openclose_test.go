package mux

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// TestOpenRacesClose (issue 10 item 12): a stream that Open returns while the
// connection is closing must end when the connection does; a call without a
// deadline would hang otherwise. Many Opens are hammered against close.
func TestOpenRacesClose(t *testing.T) {
	up := websocket.Upgrader{}
	var wg sync.WaitGroup
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		c := New(ws, RoleServer, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
			<-s.Context().Done()
		}})
		<-c.Done()
	}))
	defer hs.Close()
	u := "ws" + strings.TrimPrefix(hs.URL, "http")
	const iterations, openers = 300, 6
	hung := 0
	for i := 0; i < iterations && hung == 0; i++ {
		ws, _, err := websocket.DefaultDialer.Dial(u, nil)
		if err != nil {
			t.Fatal(err)
		}
		cc := New(ws, RoleClient, Config{})
		streams := make(chan *Stream, 1024)
		start := make(chan struct{})
		for range openers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for {
					s, _, err := cc.Open(context.Background(), &tetherv1.Open{Procedure: "/a/b"}, nil, false)
					if err != nil {
						return
					}
					select {
					case streams <- s:
					default:
						s.Reset(tether.Errorf(tether.CodeCanceled, "enough"))
					}
				}
			}()
		}
		close(start)
		time.Sleep(time.Duration(i%5) * time.Millisecond)
		cc.closeWith(tether.Errorf(tether.CodeUnavailable, "closed by the test"), 0, "")
		wg.Wait()
		close(streams)
		for s := range streams {
			select {
			case <-s.Done():
			case <-time.After(5 * time.Second):
				hung++
				t.Errorf("iteration %d: stream %d opened while the connection closed was never ended", i, s.ID())
			}
		}
		<-cc.Done()
	}
}
