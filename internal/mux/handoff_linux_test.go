package mux

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// TestLoneHandOffParks (issue 15): a lone stream's hand-off on a
// connection whose reader parks (HijackPooled; pair's connections do not),
// in the shared poller and, where it cannot be used, on a waiter goroutine.
//   - After a quiet spell, handOff parks the connection itself while the
//     lone Accept blocks.
//   - A later call is read by the reader the poller (or the waiter)
//     starts, and runs on a handler goroutine.
//   - Closing the connection while it is parked ends the blocked Accept
//     (its context is canceled), and OnClose runs exactly once.
func TestLoneHandOffParks(t *testing.T) {
	t.Run("poller", func(t *testing.T) {
		testLoneHandOffParks(t, func(sc *Conn) bool { return sc.parkState.Load() == 1 })
	})
	t.Run("waiter", func(t *testing.T) {
		forceWaiterPark(t)
		testLoneHandOffParks(t, func(sc *Conn) bool { return sc.parkState.Load() == 0 && waiterGoroutines() == 1 })
	})
}

// testLoneHandOffParks is TestLoneHandOffParks with parked, which reports
// whether sc's reader is parked.
func testLoneHandOffParks(t *testing.T, parked func(sc *Conn) bool) {
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
	waitFor(t, 10*time.Second, "the connection to park while the lone Accept blocks", func() bool {
		return sc.parks.Load() >= 1 && parked(sc)
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
		return sc.parks.Load() > parks && parked(sc)
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

// wsClientFrame is one masked binary WebSocket frame (a whole message) as a
// client sends it, with a zero masking key (the payload goes as it is).
func wsClientFrame(payload []byte) []byte {
	b := []byte{0x82}
	n := len(payload)
	switch {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n < 1<<16:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		panic("payload too long for this helper")
	}
	b = append(b, 0, 0, 0, 0)
	return append(b, payload...)
}

// unaryFrames are a whole unary call's frames: OPEN, MESSAGE body,
// HALF_CLOSE.
func unaryFrames(id uint32, body string) []frame.Frame {
	open, _ := proto.Marshal(&tetherv1.Open{Procedure: "/a/b"})
	return []frame.Frame{
		{Type: frame.TypeOpen, StreamID: id, Payload: open},
		{Type: frame.TypeMessage, StreamID: id, Payload: []byte(body)},
		{Type: frame.TypeHalfClose, StreamID: id},
	}
}

func appendFrames(b []byte, fs []frame.Frame) []byte {
	for _, f := range fs {
		b = frame.Append(b, f)
	}
	return b
}

// TestHandOffDoesNotParkWhileBytesWait: after a quiet spell, two
// WebSocket messages (two unary calls) arrive in one TCP segment. The first
// call is lone, so handOff runs; the second message's bytes already wait in
// the pooled read buffer, so handOff must not park (the poller would never
// see the socket readable again: the bytes were read off it). With no
// heartbeat (one hour), a wrong park leaves the second call unread for good.
func TestHandOffDoesNotParkWhileBytesWait(t *testing.T) {
	got := make(chan string, 4)
	release := make(chan struct{})
	scfg := Config{
		PingInterval: time.Hour,
		PingTimeout:  time.Hour,
		Accept: func(s *Stream, _ *tetherv1.Open) {
			msg, err := s.RecvMsg()
			if err != nil {
				got <- "recv error: " + err.Error()
				return
			}
			got <- string(msg)
			if string(msg) == "one" { // keep the first stream running
				select {
				case <-release:
				case <-s.Context().Done():
				}
			}
			_ = s.Finish(nil, nil)
		},
	}
	ws, sc := dialParking(t, scfg)
	t.Cleanup(func() {
		close(release)
		ws.Close()
		sc.Close()
		<-sc.Done()
	})
	time.Sleep(2 * parkAfter)
	var b []byte
	b = append(b, wsClientFrame(appendFrames(nil, unaryFrames(1, "one")))...)
	b = append(b, wsClientFrame(appendFrames(nil, unaryFrames(3, "two")))...)
	if _, err := ws.NetConn().Write(b); err != nil { // one write: one segment on loopback
		t.Fatal(err)
	}
	want := map[string]bool{"one": true, "two": true}
	timeout := time.After(5 * time.Second)
	for len(want) > 0 {
		select {
		case m := <-got:
			if !want[m] {
				t.Fatalf("unexpected Accept result %q", m)
			}
			delete(want, m)
		case <-timeout:
			t.Fatalf("Accepts still missing after 5 s: %v (parks %d, parkState %d): the connection parked while the second call's bytes waited in its buffer",
				want, sc.parks.Load(), sc.parkState.Load())
		}
	}
	t.Logf("parks: %d", sc.parks.Load())
}

// forceWaiterPark makes parkPolled fail for the test's duration, as on a
// system without epoll: park starts a waiter goroutine (park.go).
func forceWaiterPark(t *testing.T) {
	poller.mu.Lock()
	old := poller.epfd
	poller.epfd = -1
	poller.mu.Unlock()
	t.Cleanup(func() {
		poller.mu.Lock()
		poller.epfd = old
		poller.mu.Unlock()
	})
}

// waiterGoroutines counts the waiters of parked readers (park.go).
func waiterGoroutines() int {
	return countGoroutines(func(stack string) bool { return strings.Contains(stack, "mux.(*Conn).parked(") })
}

// TestLoneCallRenewsDeadline: handOff renews the read deadline (touch),
// and neither the continuing reader (touched: it does not renew it again)
// nor a waiter the connection parked on reads past it. A peer that goes
// silent after a lone call is disconnected one PingInterval+PingTimeout
// after the call: neither at the deadline set before the call, nor at the
// message's 30 s read deadline.
func TestLoneCallRenewsDeadline(t *testing.T) {
	t.Run("continuing reader", func(t *testing.T) {
		testLoneCallDeadline(t, func(t *testing.T, scfg Config) (*websocket.Conn, *Conn) { return rawPeer(t, scfg) }, false)
	})
	t.Run("waiter", func(t *testing.T) {
		forceWaiterPark(t)
		testLoneCallDeadline(t, dialParking, true)
	})
}

// testLoneCallDeadline is TestLoneCallRenewsDeadline on a connection dial
// makes, whose reader parks after the call if park.
func testLoneCallDeadline(t *testing.T, dial func(*testing.T, Config) (*websocket.Conn, *Conn), park bool) {
	const interval, timeout = 100 * time.Millisecond, 150 * time.Millisecond
	scfg := Config{
		PingInterval: interval,
		PingTimeout:  timeout,
		Accept: func(s *Stream, _ *tetherv1.Open) {
			_, _ = s.RecvMsg()
			_ = s.Finish(nil, nil)
		},
	}
	ws, sc := dial(t, scfg)
	defer ws.Close()
	time.Sleep(150 * time.Millisecond) // past half the first deadline
	start := time.Now()
	writeFrames(t, ws, unaryFrames(1, "x")...)
	awaitDeadlineClose(t, sc, start, interval+timeout)
	if parks := sc.parks.Load(); park != (parks > 0) {
		t.Fatalf("parked %d times; want parking %v", parks, park)
	}
}

// awaitDeadlineClose waits for sc, whose peer went silent after a call made
// at start, to close, and checks that it closed for a read timeout, and no
// sooner than silence (PingInterval+PingTimeout) after the call, the
// deadline the call should have renewed.
func awaitDeadlineClose(t *testing.T, sc *Conn, start time.Time, silence time.Duration) {
	t.Helper()
	select {
	case <-sc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a peer silent after a lone call was not disconnected within 5 s")
	}
	if el := time.Since(start); el < silence-50*time.Millisecond {
		t.Fatalf("closed %v after the call, before the deadline the call should have renewed (%v)", el, silence)
	}
	var ne interface{ Timeout() bool }
	if err := sc.Err(); !strings.Contains(err.Error(), "timeout") && !errors.As(err, &ne) {
		t.Fatalf("closed with %v, want a read timeout", err)
	}
}

// TestHandOffParksBeforeAccept: on a call after a quiet spell, the
// connection is already parked when the lone Accept starts (handOff parks,
// then runs it), instead of a continuing reader waking to park beside it.
func TestHandOffParksBeforeAccept(t *testing.T) {
	var scp atomic.Pointer[Conn]
	seen := make(chan [2]uint32, 1)
	scfg := Config{
		PingInterval: time.Hour,
		PingTimeout:  time.Hour,
		Accept: func(s *Stream, _ *tetherv1.Open) {
			c := scp.Load()
			seen <- [2]uint32{c.parks.Load(), c.parkState.Load()}
			_, _ = s.RecvMsg()
			_ = s.Finish(nil, nil)
		},
	}
	ws, sc := dialParking(t, scfg)
	scp.Store(sc)
	defer func() { ws.Close(); sc.Close(); <-sc.Done() }()
	time.Sleep(2 * parkAfter)
	writeFrames(t, ws, unaryFrames(1, "x")...)
	select {
	case v := <-seen:
		if v[0] != 1 || v[1] != 1 {
			t.Fatalf("at the lone Accept's start: parks %d, parkState %d; want the connection parked already (1, 1)", v[0], v[1])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no Accept")
	}
}
