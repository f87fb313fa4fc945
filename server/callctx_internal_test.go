package server

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
)

type ctxKey struct{}

// expireFunc is an expirer that calls itself.
type expireFunc func()

func (f expireFunc) expired() { f() }

// endedBy returns a handler context whose stream ended with cause, and
// waits for it to end.
func endedBy(t *testing.T, timeout time.Duration, cause error) *callCtx {
	t.Helper()
	stream, cancel := context.WithCancelCause(context.WithValue(context.Background(), ctxKey{}, "v"))
	ctx := newCallCtx(stream, timeout, nil)
	t.Cleanup(ctx.stop)
	cancel(cause)
	select {
	case <-ctx.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("context did not end")
	}
	return ctx
}

func TestCallCtx(t *testing.T) {
	canceled := tether.Errorf(tether.CodeCanceled, "tether: stream reset by peer")
	deadline := tether.Errorf(tether.CodeDeadlineExceeded, "context deadline exceeded")
	closed := tether.Errorf(tether.CodeUnavailable, "tether: connection closed")
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		cause   error
		want    error
	}{
		{"reset canceled, no deadline", 0, canceled, context.Canceled},
		{"reset canceled long before the deadline", time.Hour, canceled, context.Canceled},
		{"reset canceled within the skew of the deadline", deadlineSkew / 2, canceled, context.DeadlineExceeded},
		{"reset deadline_exceeded before the server's timer", time.Hour, deadline, context.DeadlineExceeded},
		{"connection closed", time.Hour, closed, context.Canceled},
		{"connection closed, no deadline", 0, closed, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := endedBy(t, tc.timeout, tc.cause)
			if err := ctx.Err(); err != tc.want {
				t.Errorf("Err() = %v, want %v", err, tc.want)
			}
			if tc.timeout >= time.Hour { // the server's timer cannot have fired
				if cause := context.Cause(ctx); cause != tc.cause {
					t.Errorf("Cause = %v, want %v", cause, tc.cause)
				}
			}
			derived, cancel := context.WithTimeout(ctx, time.Hour)
			defer cancel()
			<-derived.Done()
			if err := derived.Err(); err != tc.want {
				t.Errorf("derived context's Err() = %v, want %v", err, tc.want)
			}
			if got, want := context.Cause(derived), context.Cause(ctx); got != want {
				t.Errorf("derived context's cause = %v, want %v", got, want)
			}
			if v := ctx.Value(ctxKey{}); v != "v" {
				t.Errorf("Value = %v, want the stream context's value", v)
			}
			_, ok := ctx.Deadline()
			if ok != (tc.timeout > 0) {
				t.Errorf("Deadline() ok = %v with timeout %v", ok, tc.timeout)
			}
		})
	}
}

func TestCallCtxServerTimer(t *testing.T) {
	stream, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	fired := make(chan struct{})
	ctx := newCallCtx(stream, 10*time.Millisecond, expireFunc(func() { close(fired) }))
	defer ctx.stop()
	if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err() = %v before the deadline", err)
	}
	select {
	case <-fired:
	case <-time.After(30 * time.Second):
		t.Fatal("the server's timer did not end the call")
	}
	<-ctx.Done()
	if ctx.Err() != context.DeadlineExceeded || tether.CodeOf(context.Cause(ctx)) != tether.CodeDeadlineExceeded {
		t.Errorf("Err() = %v, Cause = %v; want DeadlineExceeded", ctx.Err(), context.Cause(ctx))
	}
	// The stream's end afterwards changes nothing.
	cancel(tether.Errorf(tether.CodeCanceled, "late"))
	if ctx.Err() != context.DeadlineExceeded {
		t.Errorf("Err() = %v after the stream ended", ctx.Err())
	}
}

func TestCallCtxStop(t *testing.T) {
	ctx := newCallCtx(context.Background(), time.Hour, nil)
	if ctx.Err() != nil {
		t.Fatalf("Err() = %v on a live call", ctx.Err())
	}
	ctx.stop()
	if ctx.Err() != context.Canceled {
		t.Errorf("Err() = %v after stop, want Canceled", ctx.Err())
	}
}

// A handler that looks at its context only after the call ended gets one
// that has ended: Done closed, Err, Cause, values and derived contexts as
// if it had been watching (the inner contexts are made on first use).
func TestCallCtxMadeAfterEnd(t *testing.T) {
	parent := context.WithValue(context.Background(), ctxKey{}, "v")
	for _, tc := range []struct {
		name  string
		cause error
		want  error
	}{
		{"deadline_exceeded", tether.Errorf(tether.CodeDeadlineExceeded, "context deadline exceeded"), context.DeadlineExceeded},
		{"canceled", tether.Errorf(tether.CodeCanceled, "tether: stream reset by peer"), context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := newCallCtx(parent, time.Hour, nil)
			defer ctx.stop()
			if ctx.inner != nil || ctx.done != nil {
				t.Fatal("the inner contexts were made before first use")
			}
			ctx.StreamEnded(tc.cause)
			if err := ctx.Err(); err != tc.want {
				t.Errorf("Err() = %v, want %v", err, tc.want)
			}
			select {
			case <-ctx.Done():
			default:
				t.Fatal("Done is open after the call ended")
			}
			if cause := context.Cause(ctx); cause != tc.cause {
				t.Errorf("Cause = %v, want %v", cause, tc.cause)
			}
			if v := ctx.Value(ctxKey{}); v != "v" {
				t.Errorf("Value = %v, want the parent's value", v)
			}
			derived, cancel := context.WithCancel(ctx)
			defer cancel()
			<-derived.Done()
			if derived.Err() != tc.want || context.Cause(derived) != tc.cause {
				t.Errorf("derived: Err() = %v, Cause = %v; want %v, %v", derived.Err(), context.Cause(derived), tc.want, tc.cause)
			}
		})
	}
}

// Err stays nil until Done is closed: end sets the error before it closes
// Done, and Err must not report it in between.
func TestCallCtxErrNotBeforeDone(t *testing.T) {
	for range 200 {
		ctx := newCallCtx(context.Background(), time.Hour, nil)
		done := ctx.Done() // made: end closes it after setting err
		go ctx.StreamEnded(tether.Errorf(tether.CodeCanceled, "canceled"))
		for {
			err := ctx.Err()
			closed := false
			select {
			case <-done:
				closed = true
			default:
			}
			if err != nil && !closed {
				// Done may close between the two reads; only an error
				// seen with Done still open after it is a failure.
				select {
				case <-done:
				default:
					t.Fatal("Err() is set while Done is open")
				}
			}
			if closed {
				break
			}
		}
		ctx.stop()
	}
}

// Contexts derived from a handler's context with a deadline cost no
// goroutine each: infoCtx passes the context package callCtx's AfterFunc.
func TestDerivedFromHandlerCtxNoGoroutine(t *testing.T) {
	c := new(call)
	c.cctx.start(context.Background(), time.Hour, nil)
	c.cctx.watchParent()
	defer c.cctx.stop()
	c.infoCtx = infoCtx{Context: &c.cctx, c: c}
	before := runtime.NumGoroutine()
	var cancels []context.CancelFunc
	for range 100 {
		_, cancel := context.WithCancel(&c.infoCtx)
		cancels = append(cancels, cancel)
	}
	after := runtime.NumGoroutine()
	for _, cancel := range cancels {
		cancel()
	}
	if after-before > 10 {
		t.Fatalf("100 contexts derived from a handler's context started %d goroutines", after-before)
	}
	// And they end with it, with its error.
	derived, cancel := context.WithCancel(&c.infoCtx)
	defer cancel()
	c.cctx.StreamEnded(tether.Errorf(tether.CodeCanceled, "reset"))
	select {
	case <-derived.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the derived context did not end with the handler's")
	}
	if derived.Err() != context.Canceled {
		t.Errorf("derived Err() = %v, want context.Canceled", derived.Err())
	}
}

// newCallCtx returns the context of a handler serving a call whose context
// is parent, with the deadline timeout after now (none if timeout is 0),
// watching parent with a context.AfterFunc; onDeadline, if not nil, is told
// when the server's own timer ends the call. Call stop when done.
// serveStream does the same with start and watchStream or watchParent on
// the callCtx inside the call's struct.
func newCallCtx(parent context.Context, timeout time.Duration, onDeadline expirer) *callCtx {
	c := new(callCtx)
	c.start(parent, timeout, onDeadline)
	c.watchParent()
	return c
}

// TestDeadlineTimerReused (issue 15): a call's deadline timer stopped
// before it fired serves a later call. It then ends that call at that
// call's deadline, and never the call it served before.
func TestDeadlineTimerReused(t *testing.T) {
	var firstExpired atomic.Bool
	first := newCallCtx(context.Background(), 20*time.Millisecond, expireFunc(func() { firstExpired.Store(true) }))
	timer := first.timer
	first.stop() // before the deadline: the timer goes back to the pool
	if err := first.Err(); err != context.Canceled {
		t.Fatalf("first call after stop: Err() = %v, want context.Canceled", err)
	}
	// The pool may keep the timer or drop it (it drops a share under
	// -race); calls take timers until one is the first call's.
	expired := make(chan struct{}, 1)
	var second *callCtx
	for range 100 {
		c := newCallCtx(context.Background(), 50*time.Millisecond, expireFunc(func() { expired <- struct{}{} }))
		if c.timer == timer {
			second = c
			break
		}
		c.stop()
	}
	if second == nil {
		t.Skip("the pool never gave the stopped timer back")
	}
	defer second.stop()
	select {
	case <-expired:
	case <-time.After(30 * time.Second):
		t.Fatal("the reused timer did not end the second call")
	}
	if err := second.Err(); err != context.DeadlineExceeded {
		t.Errorf("second call: Err() = %v, want context.DeadlineExceeded", err)
	}
	if firstExpired.Load() {
		t.Error("the reused timer told the first call's expirer")
	}
	if err := first.Err(); err != context.Canceled {
		t.Errorf("first call: Err() = %v, want context.Canceled", err)
	}
}

// TestDeadlineTimerThatFiredIsNotReused: a timer that fired is not given
// back (its function may still run), and the next call's deadline is its
// own.
func TestDeadlineTimerThatFiredIsNotReused(t *testing.T) {
	done := make(chan struct{})
	c := newCallCtx(context.Background(), time.Millisecond, expireFunc(func() { close(done) }))
	<-done
	timer := c.timer
	c.stop()
	for range 100 {
		n := newCallCtx(context.Background(), time.Hour, nil)
		if n.timer == timer {
			t.Fatal("a timer that fired was reused")
		}
		n.stop()
	}
}
