package mux

import (
	"context"
	"errors"
	"testing"
	"time"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// TestStreamIDsExhaustedClosesIdleConn (issue 10 item 11): a client
// connection whose stream ids run out drains, and closes once no stream is
// open, also when none was open when the ids ran out (only a stream's
// removal used to close a draining connection, so it stayed open forever).
func TestStreamIDsExhaustedClosesIdleConn(t *testing.T) {
	for _, tc := range []struct {
		name string
		last bool // the last id is used by a call that ends before the next Open
	}{
		{"no stream open", false},
		{"last stream ended first", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			scfg := Config{Accept: func(s *Stream, _ *tetherv1.Open) { _ = s.Finish(nil, nil) }}
			cc, _ := pair(t, scfg, Config{})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cc.mu.Lock()
			cc.nextID = maxStreamID + 2 // the ids are used up
			if tc.last {
				cc.nextID = maxStreamID // one id left
			}
			cc.mu.Unlock()
			if tc.last {
				s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("x"), true)
				if err != nil {
					t.Fatal(err)
				}
				if s.ID() != maxStreamID {
					t.Fatalf("stream id %d; want %d", s.ID(), uint32(maxStreamID))
				}
				for {
					if _, err := s.RecvMsg(); err != nil {
						break
					}
				}
				waitFor(t, 10*time.Second, "the last stream is still in the table", func() bool { return cc.ActiveStreams() == 0 })
			}
			_, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, nil, false)
			if !errors.Is(err, ErrUnprocessed) {
				t.Fatalf("Open with the ids used up: %v; want an unprocessed error", err)
			}
			select {
			case <-cc.Draining():
			default:
				t.Fatal("connection not draining after its ids ran out")
			}
			select {
			case <-cc.Done():
			case <-time.After(10 * time.Second):
				t.Fatalf("connection with its ids used up and no stream open still open after 10s (%d streams)", cc.ActiveStreams())
			}
		})
	}
}

// TestGoAwayClosesIdleClientConn: the same for a GOAWAY from the server
// that finds no stream open on the client: the client connection closes
// (it used to close only when a stream was removed).
func TestGoAwayClosesIdleClientConn(t *testing.T) {
	cc, sc := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) { _ = s.Finish(nil, nil) }}, Config{})
	sc.GoAway(0, "bye") // a GOAWAY without the close that Shutdown adds
	select {
	case <-cc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("idle client connection still open 10s after the server's GOAWAY")
	}
}
