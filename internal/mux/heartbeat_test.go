package mux

import (
	"context"
	"testing"
	"time"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// TestIdleThroughHeartbeats (issue 10 item 17): a connection that stays idle
// through several heartbeats must not race on its heartbeat timer (run
// with -race), and both ends must stay up and usable, their PINGs answered.
func TestIdleThroughHeartbeats(t *testing.T) {
	scfg := Config{
		PingInterval: 20 * time.Millisecond,
		PingTimeout:  5 * time.Second,
		Accept:       func(s *Stream, _ *tetherv1.Open) { _ = s.Finish(nil, nil) },
	}
	ccfg := Config{PingInterval: 20 * time.Millisecond, PingTimeout: 5 * time.Second}
	cc, sc := pair(t, scfg, ccfg)
	// Idle through about ten heartbeats of each side: every PING is answered
	// with a PING ACK, so both readers see traffic.
	in, out := sc.BytesIn(), cc.BytesIn()
	time.Sleep(200 * time.Millisecond)
	waitFor(t, 10*time.Second, "no PING traffic while idle", func() bool {
		return sc.BytesIn() >= in+4*(10+8) && cc.BytesIn() >= out+4*(10+8)
	})
	if err := cc.Err(); err != nil {
		t.Fatalf("client connection closed while idle: %v", err)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("server connection closed while idle: %v", err)
	}
	// Still usable.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("x"), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecvMsg(); err == nil {
		t.Fatal("unexpected message")
	}
}

// TestHeartbeatStats: PINGs sent on schedule and their answers are counted
// in the process's heartbeat statistics, with a lateness and a round trip.
func TestHeartbeatStats(t *testing.T) {
	before := Heartbeats()
	cfg := Config{PingInterval: 20 * time.Millisecond, PingTimeout: 5 * time.Second}
	pair(t, cfg, cfg)
	waitFor(t, 10*time.Second, "no heartbeats counted", func() bool {
		now := Heartbeats()
		return now.PingLateness.Sub(before.PingLateness).Count() >= 4 && now.PongRTT.Sub(before.PongRTT).Count() >= 4
	})
	rtt := Heartbeats().PongRTT
	if q := rtt.Quantile(0.5); q <= 0 || q > rtt.Max*2+time.Microsecond {
		t.Fatalf("median round trip bound %v with a maximum of %v", q, rtt.Max)
	}
	var h LatencyHistogram
	h.Buckets[3] = 1 // one duration in [4 µs, 8 µs)
	if q := h.Quantile(0.99); q != 8*time.Microsecond {
		t.Fatalf("Quantile = %v, want 8µs", q)
	}
}
