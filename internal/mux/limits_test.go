package mux

import (
	"testing"
	"time"
)

// TestTokenBucket (issue 15): the connection's flood limits, now a token
// bucket owned by the reader instead of two allocated rate.Limiters, admit
// a full burst at once, then the rate, and refill to the burst, no more.
func TestTokenBucket(t *testing.T) {
	var b tokenBucket
	now := time.Unix(1000, 0)
	for i := range 21 {
		if !b.allow(now, 10, 21) {
			t.Fatalf("refused event %d of a burst of 21", i+1)
		}
	}
	if b.allow(now, 10, 21) {
		t.Fatal("admitted a 22nd event at once with a burst of 21")
	}
	now = now.Add(100 * time.Millisecond) // one token at 10 a second
	if !b.allow(now, 10, 21) || b.allow(now, 10, 21) {
		t.Fatal("want exactly one event admitted 100 ms after the burst")
	}
	now = now.Add(time.Hour) // refills to the burst only
	n := 0
	for b.allow(now, 10, 21) {
		n++
	}
	if n != 21 {
		t.Fatalf("%d events admitted after an hour, want the burst of 21", n)
	}
	if b.allow(now.Add(-time.Second), 10, 21) {
		t.Fatal("a clock going back admitted an event")
	}
}
