//go:build unix

package mux

import (
	"context"
	"net"
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
	cc, sc := New(ws, RoleClient, Config{}), <-conns
	t.Cleanup(func() {
		cc.Close()
		sc.Close()
		<-cc.Done()
		<-sc.Done()
	})
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

// Traffic that goes on for many read timeouts keeps the connection open:
// the lazily moved deadline still moves. Heartbeats are the only traffic
// here, every 20 ms against a deadline of 80 ms (2.5 ms of slack).
func TestLazyDeadlineFollowsTraffic(t *testing.T) {
	cfg := Config{PingInterval: 20 * time.Millisecond, PingTimeout: 60 * time.Millisecond, MaxPingRate: 1000}
	cc, sc := pair(t, cfg, cfg)
	time.Sleep(time.Second) // 12 read timeouts
	for i, c := range []*Conn{cc, sc} {
		if err := c.Err(); err != nil {
			t.Fatalf("%s closed under steady heartbeats: %v", [2]string{"client", "server"}[i], err)
		}
	}
	if n := sc.readMoves.Load(); n < 10 {
		t.Fatalf("server's read deadline moved %d times in 1 s of heartbeats, want it to follow them", n)
	}
}

// A peer that goes silent is dropped after PingInterval + PingTimeout,
// and no later than the slack after it.
func TestLazyDeadlineDropsSilentPeer(t *testing.T) {
	scfg := Config{PingInterval: 100 * time.Millisecond, PingTimeout: 540 * time.Millisecond}
	ws, sc := rawPeer(t, scfg)
	defer ws.Close()
	writeFrames(t, ws) // an empty message: traffic, then silence
	start := time.Now()
	select {
	case <-sc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a silent peer was not dropped")
	}
	d := scfg.PingInterval + scfg.PingTimeout
	if got := time.Since(start); got < d-50*time.Millisecond {
		t.Fatalf("dropped after %v of silence, before the deadline (%v)", got, d)
	}
	t.Logf("dropped after %v of silence (deadline %v, slack %v)", time.Since(start), d, deadlineSlack(d))
}
