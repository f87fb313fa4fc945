package mux

import (
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// readerGoroutines counts the goroutines running a connection's reader
// loop or a parked reader's waiter.
func readerGoroutines() int {
	return countGoroutines(func(stack string) bool {
		if strings.Contains(stack, "mux.(*Conn).handOff") {
			return false // a lone stream's Accept, on the goroutine that read its OPEN
		}
		return strings.Contains(stack, "mux.(*Conn).readLoop") || strings.Contains(stack, "mux.(*Conn).parked")
	})
}

// countGoroutines counts the goroutines whose stack trace match accepts.
func countGoroutines(match func(stack string) bool) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if match(g) {
			n++
		}
	}
	return n
}

// parkingPair connects a client to a server connection whose reader may
// park, both without heartbeats; the server ends every call with an empty
// END. The client is closed when the test ends.
func parkingPair(t *testing.T) (cc, sc *Conn) {
	t.Helper()
	scfg := Config{
		PingInterval: time.Hour,
		PingTimeout:  time.Hour,
		Accept:       func(s *Stream, _ *tetherv1.Open) { _ = s.Finish(nil, nil) },
	}
	ws, sc := dialParking(t, scfg)
	cc = New(ws, RoleClient, Config{PingInterval: time.Hour, PingTimeout: time.Hour})
	t.Cleanup(func() {
		cc.Close()
		<-cc.Done()
	})
	return cc, sc
}

// TestParkedReaderHoldsNoGoroutine: on Linux an idle server connection's
// parked reader waits in the shared poller, with no goroutine of its own
// (it used to keep a waiter goroutine and its stack), and the poller starts
// it again for the next call, for heartbeats, and when the connection
// closes.
func TestParkedReaderHoldsNoGoroutine(t *testing.T) {
	cc, sc := parkingPair(t)
	for i := range 3 {
		// A reader parks after a message that came after a quiet spell
		// (parkAfter): a busy connection's does not.
		time.Sleep(2 * parkAfter)
		callEOF(t, cc)
		waitFor(t, 10*time.Second, "the server reader to park", func() bool { return sc.parks.Load() > uint32(i) && sc.parkState.Load() == 1 })
		// The client's reader only.
		waitFor(t, 10*time.Second, "the parked reader to hold no goroutine", func() bool { return readerGoroutines() == 1 })
	}
	// Closed while parked: the server's reader runs again, to drain the
	// close and end (the client's ends on the close frame).
	sc.Close()
	waitFor(t, 10*time.Second, "the parked reader to end with its connection", func() bool { return readerGoroutines() == 0 && sc.parkState.Load() == 0 })
}

// TestStaleEventWakesNobody: an event that pollLoop read for an earlier
// registration of a descriptor (its connection closed and another parked on
// the same descriptor number before pollLoop took the poller's lock) does
// not wake the connection parked there now; the event of its own
// registration does.
func TestStaleEventWakesNobody(t *testing.T) {
	cc, sc := parkingPair(t)
	time.Sleep(2 * parkAfter)
	callEOF(t, cc)
	waitFor(t, 10*time.Second, "the server reader to park", func() bool { return sc.parkState.Load() == 1 })

	poller.mu.Lock()
	fd, gen := sc.parkFD, sc.parkGen
	wakeReady([]syscall.EpollEvent{{Events: syscall.EPOLLIN, Fd: fd, Pad: gen - 1}})
	stale := sc.parkState.Load()
	wakeReady([]syscall.EpollEvent{{Events: syscall.EPOLLIN, Fd: fd, Pad: gen}})
	current := sc.parkState.Load()
	poller.mu.Unlock()
	if stale != 1 {
		t.Fatal("an event of an earlier registration of the descriptor woke the parked reader")
	}
	if current != 0 {
		t.Fatal("the event of the current registration did not wake the parked reader")
	}
	// The woken reader reads on; the connection still serves calls.
	callEOF(t, cc)
}
