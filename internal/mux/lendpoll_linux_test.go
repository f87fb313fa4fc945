package mux

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

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
	ws, c := dialParking(t, scfg)
	sc = c
	close(ready)
	cc := New(ws, RoleClient, Config{PingInterval: time.Hour, PingTimeout: time.Hour})
	t.Cleanup(func() {
		cc.Close()
		<-cc.Done()
		<-sc.Done()
	})
	echoCall(t, cc, "warm-up") // the connection's first message: it parks after it
	prev := <-seenCh
	const calls = 20
	var recs []seen
	for range calls {
		echoCall(t, cc, "call")
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
		recs = append(recs, <-seenCh)
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
// RESET reaches its Accept. When the blocked Accept returns, its
// goroutine does not read (the reader the poller started does): one
// reader each side, and the connection serves calls on.
func TestLentReaderStartsForBytes(t *testing.T) {
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
				if sc.parkState.Load() != 1 {
					events <- "not lent"
				}
				events <- "blocked"
				<-s.Context().Done()
				events <- "canceled"
				return
			}
			_ = s.FinishWith(nil, msg, nil, nil)
		},
	}
	ws, c := dialParking(t, scfg)
	sc = c
	close(ready)
	cc := New(ws, RoleClient, Config{PingInterval: time.Hour, PingTimeout: time.Hour})
	t.Cleanup(func() {
		cc.Close()
		<-cc.Done()
		<-sc.Done()
	})
	echoCall(t, cc, "warm-up")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	blocked, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("block"), true)
	if err != nil {
		t.Fatal(err)
	}
	if e := <-events; e != "blocked" {
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
}

// TestLentReaderMeetsDeadline: a peer that goes silent after a lone call on
// a busy connection is disconnected one PingInterval+PingTimeout after the
// call, whether the call's Accept is still running when the deadline
// passes (the heartbeat starts the lent reader, which meets the timeout)
// or returned at once (the reclaimed reader reads under the deadline
// handOff set).
func TestLentReaderMeetsDeadline(t *testing.T) {
	for _, block := range []bool{false, true} {
		name := "reclaimed"
		if block {
			name = "still lent"
		}
		t.Run(name, func(t *testing.T) {
			const interval, timeout = 100 * time.Millisecond, 150 * time.Millisecond
			release := make(chan struct{})
			scfg := Config{
				PingInterval: interval,
				PingTimeout:  timeout,
				Accept: func(s *Stream, _ *tetherv1.Open) {
					msg, _ := s.RecvMsg()
					if block && string(msg) == "y" {
						select {
						case <-s.Context().Done():
						case <-release:
						}
					}
					_ = s.Finish(nil, nil)
				},
			}
			ws, sc := dialParking(t, scfg)
			defer func() { close(release); ws.Close(); sc.Close(); <-sc.Done() }()
			time.Sleep(150 * time.Millisecond) // past half the first deadline
			start := time.Now()
			writeFrames(t, ws, unaryFrames(1, "x")...) // parks after it (the first message)
			writeFrames(t, ws, unaryFrames(3, "y")...) // lent: no quiet spell before it
			select {
			case <-sc.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("a peer silent after a lone call was not disconnected within 5 s")
			}
			el := time.Since(start)
			if el < interval+timeout-50*time.Millisecond {
				t.Fatalf("closed %v after the call, before the deadline the call should have renewed (%v)", el, interval+timeout)
			}
			if err := sc.Err(); !strings.Contains(err.Error(), "timeout") {
				t.Fatalf("closed with %v, want a read timeout", err)
			}
		})
	}
}
