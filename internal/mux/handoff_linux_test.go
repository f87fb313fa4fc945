package mux

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// TestLoneHandOffParks: handOff on a connection whose reader
// parks (HijackPooled), which the commit's test (plain Upgrader) never
// exercises.
//   - The continuing reader keeps quietGap, so it parks while the lone
//     Accept blocks.
//   - A later call is read by a reader that the poller starts, and runs on
//     a handler goroutine.
//   - Closing the connection while it is parked ends the blocked Accept
//     (its context is canceled), and OnClose runs exactly once.
func TestLoneHandOffParks(t *testing.T) {
	release := make(chan struct{})
	events := make(chan string, 8)
	var closes atomic.Int32
	scfg := Config{
		PingInterval: time.Hour,
		PingTimeout:  time.Hour,
		OnClose:      func(error) { closes.Add(1) },
		Accept: func(s *Stream, _ *tetherv1.Open) {
			msg, err := s.RecvMsg()
			if err != nil {
				events <- "recv error"
				return
			}
			events <- string(msg)
			if string(msg) == "block" {
				select {
				case <-release:
				case <-s.Context().Done():
					events <- "canceled"
					return
				}
			}
			_ = s.FinishWith(nil, msg, nil, nil)
		},
	}
	ws, sc := dialParking(t, scfg)
	cc := New(ws, RoleClient, Config{PingInterval: time.Hour, PingTimeout: time.Hour})
	t.Cleanup(func() {
		close(release)
		cc.Close()
		sc.Close()
		<-cc.Done()
		<-sc.Done()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	time.Sleep(2 * parkAfter) // a quiet spell: the reader parks after the next message
	if _, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("block"), true); err != nil {
		t.Fatal(err)
	}
	if e := <-events; e != "block" {
		t.Fatalf("first Accept: %q", e)
	}
	waitFor(t, 10*time.Second, "the continuing reader to park while the lone Accept blocks", func() bool {
		return sc.parks.Load() >= 1 && sc.parkState.Load() == 1
	})
	parks := sc.parks.Load()

	time.Sleep(2 * parkAfter)
	s2, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("two"), true)
	if err != nil {
		t.Fatal(err)
	}
	if e := <-events; e != "two" {
		t.Fatalf("second Accept: %q", e)
	}
	if m, err := s2.RecvMsg(); err != nil || string(m) != "two" {
		t.Fatalf("second call: %q, %v", m, err)
	}
	waitFor(t, 10*time.Second, "the reader to park again", func() bool {
		return sc.parks.Load() > parks && sc.parkState.Load() == 1
	})

	// Closed while parked, with the lone Accept still blocked on the
	// goroutine that read its OPEN.
	sc.Close()
	if e := <-events; e != "canceled" {
		t.Fatalf("after close: %q, want the blocked Accept canceled", e)
	}
	waitFor(t, 10*time.Second, "OnClose", func() bool { return closes.Load() == 1 })
	waitFor(t, 10*time.Second, "every reader loop to end", func() bool {
		return readerGoroutines() == 0
	})
	time.Sleep(50 * time.Millisecond)
	if n := closes.Load(); n != 1 {
		t.Fatalf("OnClose ran %d times", n)
	}
}
