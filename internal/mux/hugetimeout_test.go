package mux

import (
	"context"
	"errors"
	"io"
	"math"
	"testing"
	"time"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// Timeouts of math.MaxInt64, the usual way to say "none", do not wrap
// into deadlines in the past: PingInterval + PingTimeout overflowed a
// time.Duration and closed every connection at its first read.
func TestHugeTimeouts(t *testing.T) {
	huge := time.Duration(math.MaxInt64)
	scfg := Config{WriteTimeout: huge, MaxMessageReadTime: huge, PingInterval: huge, PingTimeout: huge,
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
	time.Sleep(50 * time.Millisecond) // the heartbeat timers have run
	for i, c := range []*Conn{cc, sc} {
		if err := c.Err(); err != nil {
			t.Fatalf("%s closed: %v", [2]string{"client", "server"}[i], err)
		}
	}
	if d := sc.readDeadline(); d != math.MaxInt64 {
		t.Fatalf("server's read deadline %d, want it saturated", d)
	}
}
