//go:build unix

package mux

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// Calls one after the other move the sockets' deadlines a few times a
// second at most (touch, writeBatch), not once per message: each move
// takes the socket's and its timer's locks. The connections are made as
// package server and package client make them (HijackPooled,
// PooledReads), whose message deadlines are set only when a message needs
// a second read (startMessageDeadline).
func TestDeadlinesMovedLazily(t *testing.T) {
	scfg := Config{Accept: func(s *Stream, _ *tetherv1.Open) { _ = s.Finish(nil, nil) }}
	cc, sc := pooledPair(t, scfg, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := func() {
		s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("x"), true)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.RecvMsg(); err == nil {
			t.Fatal("unexpected message")
		}
	}
	call() // both sides have set their deadlines once
	reads := [2]uint32{cc.readMoves.Load(), sc.readMoves.Load()}
	writes := [2]uint32{cc.wsw.moves.Load(), sc.wsw.moves.Load()}
	start := time.Now()
	const calls = 300
	for range calls {
		call()
	}
	// A deadline moves once it falls a slack behind what is owed, so at
	// most once per slack of elapsed time, plus one.
	elapsed := time.Since(start)
	readBound := uint32(2 + elapsed/deadlineSlack(DefaultPingInterval+DefaultPingTimeout))
	writeBound := uint32(2 + elapsed/deadlineSlack(DefaultWriteTimeout))
	for i, c := range []*Conn{cc, sc} {
		side := [2]string{"client", "server"}[i]
		r, w := c.readMoves.Load()-reads[i], c.wsw.moves.Load()-writes[i]
		t.Logf("%s: %d calls in %v: read deadline moved %d times, write deadline %d times", side, calls, elapsed, r, w)
		if r > readBound || w > writeBound {
			t.Errorf("%s: read deadline moved %d times (at most %d), write deadline %d times (at most %d), for %d calls in %v",
				side, r, readBound, w, writeBound, calls, elapsed)
		}
	}
}

// pooledPair is pair with the connections made as packages server and
// client make them (HijackPooled, PooledReads): their message deadlines
// are set only when a message needs a second read of the socket
// (startMessageDeadline), so the heartbeat's deadline is the only one most
// messages touch.
func pooledPair(t *testing.T, scfg, ccfg Config) (cc, sc *Conn) {
	t.Helper()
	url, conns := parkingServer(t, scfg)
	d := websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return PooledReads(conn), nil
	}}
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	cc, sc = New(ws, RoleClient, ccfg), <-conns
	t.Cleanup(func() {
		cc.Close()
		sc.Close()
		<-cc.Done()
		<-sc.Done()
	})
	return cc, sc
}

// Traffic that goes on for several read timeouts keeps the connection
// open: the lazily moved deadline still moves, at most once per slack.
// Heartbeats are the only traffic, every 20 ms or so, against a deadline
// of 1.02 s with 32 ms of slack.
func TestLazyDeadlineFollowsTraffic(t *testing.T) {
	cfg := Config{PingInterval: 20 * time.Millisecond, PingTimeout: time.Second, MaxPingRate: 1000}
	cc, sc := pooledPair(t, cfg, cfg)
	moves, start := sc.readMoves.Load(), time.Now()
	time.Sleep(3 * time.Second) // about 3 read deadlines
	for i, c := range []*Conn{cc, sc} {
		if err := c.Err(); err != nil {
			t.Fatalf("%s closed under steady heartbeats: %v", [2]string{"client", "server"}[i], err)
		}
	}
	n, elapsed := sc.readMoves.Load()-moves, time.Since(start)
	bound := uint32(2 + elapsed/deadlineSlack(cfg.PingInterval+cfg.PingTimeout))
	t.Logf("server: read deadline moved %d times in %v (at most %d)", n, elapsed, bound)
	if n < 2 || n > bound {
		t.Fatalf("the read deadline moved %d times in %v of traffic, want 2 to %d", n, elapsed, bound)
	}
}

// A peer that goes silent is dropped by the read deadline, never sooner
// than PingInterval + PingTimeout after its last message, also when the
// messages before it came within the slack (so that their touches left
// the deadline where the first one set it).
func TestLazyDeadlineDropsSilentPeer(t *testing.T) {
	scfg := Config{PingInterval: 100 * time.Millisecond, PingTimeout: 540 * time.Millisecond}
	ws, sc := dialParking(t, scfg) // pooled reads: lazy message deadlines
	defer ws.Close()
	writeFrames(t, ws) // empty messages: traffic, then silence
	moves := sc.readMoves.Load()
	var last time.Time
	for range 4 {
		last = time.Now()
		writeFrames(t, ws)
	}
	select {
	case <-sc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a silent peer was not dropped")
	}
	got, d := time.Since(last), scfg.PingInterval+scfg.PingTimeout
	t.Logf("dropped %v after the last message (deadline %v, slack %v); the deadline moved %d times for the last 4 messages",
		got, d, deadlineSlack(d), sc.readMoves.Load()-moves)
	if got < d {
		t.Fatalf("dropped %v after the last message, before the deadline (%v)", got, d)
	}
	if err := sc.Err(); err == nil || !strings.Contains(err.Error(), "i/o timeout") {
		t.Fatalf("closed with %v, want a read timeout", err)
	}
}

// Timeouts of math.MaxInt64, the usual way to say "none", do not wrap
// into deadlines in the past.
func TestHugeTimeouts(t *testing.T) {
	huge := time.Duration(math.MaxInt64)
	scfg := Config{WriteTimeout: huge, MaxMessageReadTime: huge, PingTimeout: huge,
		Accept: func(s *Stream, _ *tetherv1.Open) { _ = s.Finish(nil, nil) }}
	ccfg := Config{WriteTimeout: huge, MaxMessageReadTime: huge, PingTimeout: huge}
	cc, sc := pair(t, scfg, ccfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := make([]byte, 200<<10) // more than one read of the socket, within the stream window
	for range 3 {
		s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, big, true)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.RecvMsg(); !errors.Is(err, io.EOF) {
			t.Fatalf("call ended with %v, want io.EOF", err)
		}
	}
	for i, c := range []*Conn{cc, sc} {
		if err := c.Err(); err != nil {
			t.Fatalf("%s closed: %v", [2]string{"client", "server"}[i], err)
		}
	}
}
