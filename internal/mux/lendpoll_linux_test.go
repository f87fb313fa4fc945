package mux

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// needLending skips a test that needs sockets lent: the poller lends none
// with a single P (GOMAXPROCS 1: no P is ever idle, so there is no thread's
// wake-up to save).
func needLending(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	if procs < 2 {
		t.Skip("no lending with GOMAXPROCS 1")
	}
	poller.mu.Lock()
	poller.procs = procs // as cached: go test -cpu may have changed it
	poller.mu.Unlock()
}

// waitIdle waits, spinning (a sleep could make the next call's message come
// after a quiet spell), until sc has no stream running: a call's answer is
// written before its stream leaves the running count, and the next lone
// call must find it out.
func waitIdle(t *testing.T, sc *Conn) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		sc.mu.Lock()
		n := sc.running
		sc.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d streams still running", n)
		}
		runtime.Gosched()
	}
}

// parkingClient is dialParking with a client Conn on the raw WebSocket, both
// without heartbeats (one hour); both are closed when the test ends.
func parkingClient(t *testing.T, scfg Config) (cc, sc *Conn) {
	t.Helper()
	ws, sc := dialParking(t, scfg)
	cc = New(ws, RoleClient, Config{PingInterval: time.Hour, PingTimeout: time.Hour})
	t.Cleanup(func() {
		cc.Close()
		<-cc.Done()
		<-sc.Done()
	})
	return cc, sc
}

// echoCall makes one call on cc and checks that the server answers body.
func echoCall(t *testing.T, cc *Conn, body string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte(body), true)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := s.RecvMsg(); err != nil || string(m) != body {
		t.Fatalf("call %q answered %q, %v", body, m, err)
	}
}

// TestLoneAcceptReclaimsReader (issue 15): on a busy connection (no quiet
// spell, so handOff does not park), a lone call's Accept runs on the
// reader goroutine while the socket waits in the shared poller (lend), and
// when Accept returns with nothing arrived meanwhile, the same goroutine
// takes the reading back (reclaim) and runs the next lone call's Accept
// too: no goroutine is woken to read on. Before, every lone call woke
// another reader goroutine, so consecutive Accepts alternated between two.
func TestLoneAcceptReclaimsReader(t *testing.T) {
	needLending(t)
	type seen struct {
		g         int
		parkState uint32
		parks     uint32
	}
	seenCh := make(chan seen, 64)
	var sc *Conn
	ready := make(chan struct{})
	scfg := Config{
		PingInterval: time.Hour,
		PingTimeout:  time.Hour,
		Accept: func(s *Stream, _ *tetherv1.Open) {
			<-ready
			seenCh <- seen{goroutineID(), sc.parkState.Load(), sc.parks.Load()}
			msg, _ := s.RecvMsg()
			_ = s.FinishWith(nil, msg, nil, nil)
		},
	}
	cc, c := parkingClient(t, scfg)
	sc = c
	close(ready)
	echoCall(t, cc, "warm-up") // the connection's first message: it parks after it
	prev := <-seenCh
	const calls = 20
	var recs []seen
	parks := prev.parks
	for range calls {
		echoCall(t, cc, "call")
		r := <-seenCh // sent before the answer
		recs = append(recs, r)
		if r.parks != parks {
			// A gap of parkAfter came before this call (a loaded
			// machine): it parked, and stays parked until the next.
			parks = r.parks
			waitIdle(t, sc)
			continue
		}
		// The answer is written before Accept returns: wait for the
		// reclaim, so that the next OPEN does not find the socket lent.
		// Spinning, not sleeping: a gap of parkAfter would make the next
		// call park instead.
		deadline := time.Now().Add(10 * time.Second)
		for sc.parkState.Load() != 0 {
			if time.Now().After(deadline) {
				t.Fatal("the reader did not take the reading back")
			}
			runtime.Gosched()
		}
	}
	// A call whose Accept saw no new park was lent (parkState 1); the
	// next call's Accept then ran on the goroutine that reclaimed the
	// reading. (On a machine so slow that parkAfter passed between two
	// calls, that call parked instead, and the pair is not compared.)
	pairs := 0
	for i, r := range recs {
		if r.parks != prev.parks {
			prev = r
			continue
		}
		if r.parkState != 1 {
			t.Fatalf("call %d: parkState %d in the lone Accept, want 1 (the socket lent to the poller)", i, r.parkState)
		}
		if i+1 < len(recs) {
			pairs++
			if next := recs[i+1]; next.g != r.g {
				t.Fatalf("calls %d and %d: lone Accepts on goroutines %d and %d, want one: the reader was not reclaimed", i, i+1, r.g, next.g)
			}
		}
		prev = r
	}
	if pairs < calls/2 {
		t.Fatalf("only %d of %d consecutive calls without a park between them", pairs, calls-1)
	}
}

// TestLentReaderStartsForBytes: while a lone call's Accept blocks with the
// socket lent to the poller, bytes that arrive start a reader as for a
// parked connection: a second call is answered and the blocked call's
// RESET reaches its Accept. When the blocked Accept returns, its goroutine
// does not read (the reader the poller started does): one reader each side,
// and the connection serves calls on. On a machine too slow for the call to
// be lent (a quiet spell before it), the sequence is tried again.
func TestLentReaderStartsForBytes(t *testing.T) {
	needLending(t)
	for attempt := 1; !lentReaderStartsForBytes(t); attempt++ {
		if attempt == 5 {
			t.Fatal("the blocking call was not lent in 5 attempts")
		}
	}
}

// lentReaderStartsForBytes is one attempt of TestLentReaderStartsForBytes;
// it reports false if the call was not lent.
func lentReaderStartsForBytes(t *testing.T) bool {
	events := make(chan string, 8)
	var sc *Conn
	ready := make(chan struct{})
	scfg := Config{
		PingInterval: time.Hour,
		PingTimeout:  time.Hour,
		Accept: func(s *Stream, _ *tetherv1.Open) {
			<-ready
			msg, err := s.RecvMsg()
			if err != nil {
				events <- "recv error"
				return
			}
			if string(msg) == "block" {
				if sc.parkState.Load() != 1 || sc.parks.Load() != 1 {
					events <- "not lent" // not in the poller, or parked after a quiet spell
				} else {
					events <- "blocked"
				}
				<-s.Context().Done()
				events <- "canceled"
				return
			}
			_ = s.FinishWith(nil, msg, nil, nil)
		},
	}
	cc, c := parkingClient(t, scfg) // an attempt's connection lives to the test's end
	sc = c
	close(ready)
	echoCall(t, cc, "warm-up")
	waitIdle(t, sc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	blocked, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("block"), true)
	if err != nil {
		t.Fatal(err)
	}
	switch e := <-events; e {
	case "blocked":
	case "not lent":
		return false
	default:
		t.Fatalf("blocking Accept: %q", e)
	}
	echoCall(t, cc, "two") // read by the reader the poller started
	blocked.Reset(context.Canceled)
	if e := <-events; e != "canceled" {
		t.Fatalf("after cancel: %q", e)
	}
	for range 5 {
		echoCall(t, cc, "after")
	}
	// The client's reader and the server's (none if it parked after a
	// quiet spell): the goroutine that ran the blocked Accept did not
	// start reading as well.
	time.Sleep(20 * time.Millisecond)
	if n := readerGoroutines(); n > 2 {
		t.Fatalf("%d reader goroutines, want at most 2", n)
	}
	return true
}

// TestLentReaderMeetsDeadline: a peer that goes silent after a lent call is
// disconnected one PingInterval+PingTimeout after the call, whether the
// call's Accept returned at once (the reclaimed reader reads under the
// deadline handOff set) or still runs when the deadline passes (the
// heartbeat starts the lent reader, which meets the timeout). A call is
// lent only after a lone call and no quiet spell: on a machine too slow for
// that, the sequence is tried again.
func TestLentReaderMeetsDeadline(t *testing.T) {
	needLending(t)
	for _, block := range []bool{false, true} {
		name := "reclaimed"
		if block {
			name = "still lent"
		}
		t.Run(name, func(t *testing.T) {
			for attempt := 1; ; attempt++ {
				if lentCallMeetsDeadline(t, block) {
					return
				}
				if attempt == 5 {
					t.Fatal("the second call was not lent in 5 attempts")
				}
			}
		})
	}
}

// lentCallMeetsDeadline is one attempt of TestLentReaderMeetsDeadline; it
// reports false if the call was not lent.
func lentCallMeetsDeadline(t *testing.T, block bool) bool {
	const interval, timeout = 100 * time.Millisecond, 150 * time.Millisecond
	release := make(chan struct{})
	lent := make(chan bool, 1)
	var scp atomic.Pointer[Conn]
	scfg := Config{
		PingInterval: interval,
		PingTimeout:  timeout,
		Accept: func(s *Stream, _ *tetherv1.Open) {
			msg, _ := s.RecvMsg()
			if string(msg) == "y" {
				c := scp.Load()
				lent <- c.parks.Load() == 1 && c.parkState.Load() == 1
				if block {
					select {
					case <-s.Context().Done():
					case <-release:
					}
				}
			}
			_ = s.Finish(nil, nil)
		},
	}
	ws, sc := dialParking(t, scfg)
	scp.Store(sc)
	defer func() { close(release); ws.Close(); sc.Close(); <-sc.Done() }()
	writeFrames(t, ws, unaryFrames(1, "x")...) // the first message: it parks after it
	if typ, err := awaitEnd(t, ws, 1); err != nil || typ != frame.TypeEnd {
		t.Fatalf("call 1 ended with %v, %v", typ, err)
	}
	start := time.Now()
	writeFrames(t, ws, unaryFrames(3, "y")...) // after a lone call: lent
	select {
	case l := <-lent:
		if !l {
			return false
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the second call's Accept did not run")
	}
	awaitDeadlineClose(t, sc, start, interval+timeout)
	return true
}

// TestLoneAcceptGoexit: a lone stream's Accept that ends in runtime.Goexit
// (t.FailNow in a handler, say: package server's recover does not stop it)
// ends its own goroutine only, on a continuing reader's connection and on a
// lent one: the connection stays open and serves the next call, and OnClose
// runs once, when it closes. (The goroutine must not drain the connection as
// if it were its reader.)
func TestLoneAcceptGoexit(t *testing.T) {
	for _, lent := range []bool{false, true} {
		name := "continuing reader"
		if lent {
			name = "lent"
		}
		t.Run(name, func(t *testing.T) {
			if lent {
				needLending(t)
			}
			var closes atomic.Int32
			// Registered first, so it runs last (after the connections'
			// own cleanups have closed them).
			t.Cleanup(func() {
				waitFor(t, 10*time.Second, "OnClose", func() bool { return closes.Load() >= 1 })
				time.Sleep(50 * time.Millisecond)
				if n := closes.Load(); n != 1 {
					t.Errorf("OnClose ran %d times, want 1", n)
				}
			})
			exited := make(chan bool, 1) // whether the call was lent
			var scp atomic.Pointer[Conn]
			scfg := Config{
				PingInterval: time.Hour,
				PingTimeout:  time.Hour,
				OnClose:      func(error) { closes.Add(1) },
				Accept: func(s *Stream, _ *tetherv1.Open) {
					msg, _ := s.RecvMsg()
					if string(msg) == "exit" {
						c := scp.Load()
						exited <- c.parks.Load() == 1 && c.parkState.Load() == 1
						runtime.Goexit()
					}
					_ = s.FinishWith(nil, msg, nil, nil)
				},
			}
			var cc, sc *Conn
			if lent {
				cc, sc = parkingClient(t, scfg)
				scp.Store(sc)
				echoCall(t, cc, "warm-up") // parks; the next lone call is lent
				waitIdle(t, sc)
			} else {
				cc, sc = pair(t, scfg, Config{PingInterval: time.Hour, PingTimeout: time.Hour})
				scp.Store(sc)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("exit"), true)
			if err != nil {
				t.Fatal(err)
			}
			if wasLent := <-exited; lent && !wasLent {
				t.Skip("the call was not lent (a quiet spell before it: a loaded machine)")
			}
			time.Sleep(50 * time.Millisecond)
			select {
			case <-sc.Done():
				t.Fatalf("the server connection closed after a handler's Goexit: %v", sc.Err())
			default:
			}
			st.Reset(context.Canceled)
			echoCall(t, cc, "after")
			if n := closes.Load(); n != 0 {
				t.Fatalf("OnClose ran %d times on an open connection", n)
			}
		})
	}
}

// TestReclaimDoesNotRenewDeadline: while a lent call's Accept runs, bytes
// start a reader from the poller, which reads them and, after a quiet spell,
// parks the connection again. When the Accept returns, that park is not its
// goroutine's to take back (another registration): a peer silent since its
// last bytes is still disconnected one PingInterval+PingTimeout after them,
// not that long after the reclaim.
func TestReclaimDoesNotRenewDeadline(t *testing.T) {
	needLending(t)
	const interval, timeout = 100 * time.Millisecond, 150 * time.Millisecond
	release := make(chan struct{})
	seen := make(chan [2]uint32, 1)
	var scp atomic.Pointer[Conn]
	scfg := Config{
		PingInterval: interval,
		PingTimeout:  timeout,
		Accept: func(s *Stream, _ *tetherv1.Open) {
			msg, _ := s.RecvMsg()
			if string(msg) == "y" {
				c := scp.Load()
				seen <- [2]uint32{c.parks.Load(), c.parkState.Load()}
				select {
				case <-release:
				case <-s.Context().Done():
				}
			}
			_ = s.Finish(nil, nil)
		},
	}
	ws, sc := dialParking(t, scfg)
	scp.Store(sc)
	defer func() { ws.Close(); sc.Close(); <-sc.Done() }()
	writeFrames(t, ws, unaryFrames(1, "x")...) // the first message: handOff parks
	if typ, err := awaitEnd(t, ws, 1); err != nil || typ != frame.TypeEnd {
		t.Fatalf("call 1 ended with %v, %v", typ, err)
	}
	writeFrames(t, ws, unaryFrames(3, "y")...) // a lone call after a lone call: lent
	if v := <-seen; v != [2]uint32{1, 1} {
		t.Skipf("call 3 was not lent (parks %d, parkState %d): machine too slow", v[0], v[1])
	}
	time.Sleep(3 * parkAfter) // a quiet spell before the next message
	var p [frame.PingPayloadSize]byte
	last := time.Now()
	writeFrames(t, ws, frame.Frame{Type: frame.TypePing, Payload: p[:]}) // the peer's last bytes
	waitFor(t, 5*time.Second, "the poller's reader to park after the PING", func() bool { return sc.parks.Load() == 2 })
	time.Sleep(300 * time.Millisecond)
	close(release) // the lent Accept returns, and tries to reclaim
	select {
	case <-sc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a silent peer was not disconnected within 5 s")
	}
	if el := time.Since(last); el > interval+timeout+200*time.Millisecond { // renewed: about 600 ms
		t.Fatalf("disconnected %v after the peer's last bytes, want about %v: the reclaim renewed the read deadline", el, interval+timeout)
	}
}

// TestLendApart: a connection does not lend while another connection lent
// less than lendApart before (many connections making calls keep the Ps
// busy, where lending costs more than it saves), and lends again once that
// is past; the last lender itself is not held back.
func TestLendApart(t *testing.T) {
	needLending(t)
	g := &lendGates[RoleServer]
	t.Cleanup(func() { g.lender.Store(0); g.at.Store(0) })
	seen := make(chan [2]uint32, 4)
	var scp atomic.Pointer[Conn]
	scfg := Config{
		PingInterval: time.Hour,
		PingTimeout:  time.Hour,
		Accept: func(s *Stream, _ *tetherv1.Open) {
			c := scp.Load()
			seen <- [2]uint32{c.parks.Load(), c.parkState.Load()}
			msg, _ := s.RecvMsg()
			_ = s.FinishWith(nil, msg, nil, nil)
		},
	}
	cc, sc := parkingClient(t, scfg)
	scp.Store(sc)
	// lent makes a call and reports whether it was lent; a call that
	// parked (a quiet spell before it, on a loaded machine) tells nothing.
	lent := func(body string) bool {
		t.Helper()
		waitIdle(t, sc)
		echoCall(t, cc, body)
		v := <-seen
		if v[0] != 1 {
			t.Skipf("call %q came after a quiet spell and parked (a loaded machine)", body)
		}
		return v[1] == 1
	}
	echoCall(t, cc, "warm-up") // the first message: it parks
	<-seen
	// Another connection lent "just now" (a stamp ahead on the monotonic
	// clock stands for it).
	g.lender.Store(^uint64(0))
	g.at.Store(nanotime(time.Now()) + int64(time.Hour))
	if lent("held back") {
		t.Fatal("lent although another connection lent within lendApart")
	}
	g.at.Store(0) // long ago
	if !lent("lends") {
		t.Fatal("not lent once lendApart had passed")
	}
	g.at.Store(nanotime(time.Now()) + int64(time.Hour)) // this connection's own lend, "just now"
	if !lent("own") {
		t.Fatal("the last lender was held back by its own lend")
	}
}
