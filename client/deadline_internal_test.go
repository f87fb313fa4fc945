package client

import (
	"context"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
)

// neverEnds is a Context that reports a deadline in the past and never
// ends, against the interface's contract.
type neverEnds struct{ context.Context }

func (neverEnds) Deadline() (time.Time, bool) { return time.Now().Add(-time.Second), true }

// deadlinePassed waits for a context whose deadline has passed to end, but
// not for good: a context that never ends gets tether's own
// deadline_exceeded after maxDeadlineLag; one that has ended gets its cause.
func TestDeadlinePassedBounded(t *testing.T) {
	defer func(d time.Duration) { maxDeadlineLag = d }(maxDeadlineLag)
	maxDeadlineLag = 20 * time.Millisecond
	err := deadlinePassed(neverEnds{context.Background()})
	if tether.CodeOf(err) != tether.CodeDeadlineExceeded {
		t.Errorf("a context that never ends: err = %v, want deadline_exceeded", err)
	}
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if err := deadlinePassed(ctx); tether.CodeOf(err) != tether.CodeDeadlineExceeded {
		t.Errorf("an ended context: err = %v, want deadline_exceeded", err)
	}
	if _, ok := deadlinePassed(ctx).(*tether.Error); !ok {
		t.Error("an ended context's error is not a *tether.Error")
	}
}
