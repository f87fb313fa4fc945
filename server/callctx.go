package server

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/mux"
)

// deadlineSkew is how close to the call's deadline a RESET with code
// canceled may arrive and still count as the deadline. The server's
// deadline starts when the OPEN arrives, a little after the client's; a
// client in another language may reset with canceled when its own timer
// fires, and that RESET then lands just before the server's.
const deadlineSkew = 50 * time.Millisecond

// errDeadline is the cause of a handler's context whose deadline passed.
var errDeadline = tether.Errorf(tether.CodeDeadlineExceeded, "tether: deadline exceeded")

// callCtx is a handler's context. It ends when the call's stream ends
// (RESET from the client, connection closed, server closed) or when the
// deadline carried in OPEN passes, whichever comes first, and its Err says
// which: context.DeadlineExceeded when the deadline passed or the client's
// RESET says deadline_exceeded (the client's timer usually fires, and its
// RESET arrives, before the server's own timer: without this, most handlers
// of calls that ran out of time saw context.Canceled), context.Canceled
// otherwise. context.Cause returns the *tether.Error that ended the call.
//
// It is a Context implementation of its own because a standard context ends
// with DeadlineExceeded only through its own timer. Values and the cause
// come from inner, a standard cancelable context under the parent (the
// stream's context); Done and AfterFunc come from done, canceled only once
// err is set, so that contexts derived from this one (which the context
// package cancels through AfterFunc, with this context's Err and Cause) get
// the same error. Both are made when first needed (Done, Value, AfterFunc:
// a handler that never looks at its context costs none), already canceled
// if the call has ended by then. A call on a stream (watchStream) learns of
// the stream's end from the stream itself (mux.Stream.OnEnd), so that the
// stream's own context is not made for it either. serveStream keeps it in
// the call's struct, which is the stream's memory: a deadline costs the
// call a pooled timer (deadlineTimer), and nothing more.
type callCtx struct {
	parent     context.Context
	deadline   time.Time      // zero: none
	timer      *deadlineTimer // the deadline's, or nil
	stopParent func() bool    // watchParent's AfterFunc on parent, or nil
	ended      atomic.Bool    // err is set (read without mu)

	mu          sync.Mutex
	err, cause  error
	inner       context.Context // values; canceled with the cause
	cancelInner context.CancelCauseFunc
	done        context.Context // closed after err is set
	cancelDone  context.CancelFunc
}

// expirer is told when the server's own timer ends a call (the call
// resets its stream or ends its session).
type expirer interface{ expired() }

// start sets the context up under parent, and its timer if timeout > 0.
func (c *callCtx) start(parent context.Context, timeout time.Duration, onDeadline expirer) {
	c.parent = parent
	if timeout > 0 {
		c.deadline = time.Now().Add(timeout)
		c.timer = armDeadline(c, onDeadline, timeout)
	}
}

// A deadlineTimer ends a call's context when its deadline passes. Calls
// with a deadline are the common case of a server under load, so the
// timers are reused: a call takes one from deadlineTimers and gives it
// back when it stops it before it fired. That saves the timer and its
// function (two allocations a call), and the runtime's timer heap does not
// fill with stopped timers, which it would clean by scanning the whole
// heap, every connection's read deadline included.
type deadlineTimer struct {
	t          *time.Timer // runs fire; made once, re-armed with Reset
	c          *callCtx
	onDeadline expirer
}

var deadlineTimers sync.Pool // of *deadlineTimer, stopped before they fired

// armDeadline returns a timer that ends c (and tells onDeadline) after
// timeout.
func armDeadline(c *callCtx, onDeadline expirer, timeout time.Duration) *deadlineTimer {
	d, _ := deadlineTimers.Get().(*deadlineTimer)
	if d == nil {
		d = &deadlineTimer{c: c, onDeadline: onDeadline}
		d.t = time.AfterFunc(timeout, d.fire)
		return d
	}
	d.c, d.onDeadline = c, onDeadline
	d.t.Reset(timeout)
	return d
}

// fire runs on the timer's own goroutine when the deadline passes.
func (d *deadlineTimer) fire() {
	if d.c.end(context.DeadlineExceeded, errDeadline) && d.onDeadline != nil {
		d.onDeadline.expired()
	}
}

// stop stops the timer. One stopped before it fired goes back to the pool:
// Stop returning true means fire will not run for this call. One that
// fired is left to the collector (fire may still be running).
func (d *deadlineTimer) stop() {
	if d.t.Stop() {
		d.c, d.onDeadline = nil, nil
		deadlineTimers.Put(d)
	}
}

// watchParent ends the context when parent ends (a resumable call's
// session, which outlives the connection).
func (c *callCtx) watchParent() {
	parent := c.parent
	c.stopParent = context.AfterFunc(parent, func() { c.StreamEnded(context.Cause(parent)) })
}

// watchStream ends the context when st, the stream whose context parent
// is, ends (mux.Stream.OnEnd), without making parent.
func (c *callCtx) watchStream(st *mux.Stream) { st.OnEnd(c) }

// stop stops the timer, stops watching the parent and ends the context.
func (c *callCtx) stop() {
	if c.stopParent != nil {
		c.stopParent()
	}
	if c.timer != nil {
		c.timer.stop()
		c.timer = nil
	}
	c.end(context.Canceled, context.Canceled)
}

// StreamEnded ends the context when its parent (the stream) ended with
// cause (mux.EndNotifier).
func (c *callCtx) StreamEnded(cause error) {
	if c.deadlinePassed(cause) {
		c.end(context.DeadlineExceeded, cause)
	} else {
		c.end(context.Canceled, cause)
	}
}

// deadlinePassed reports whether the stream ended with cause because the
// call ran out of time.
func (c *callCtx) deadlinePassed(cause error) bool {
	if c.deadline.IsZero() {
		return false
	}
	switch tether.CodeOf(cause) {
	case tether.CodeDeadlineExceeded:
		return true
	case tether.CodeCanceled:
		return !time.Now().Before(c.deadline.Add(-deadlineSkew))
	}
	return false
}

// end ends the context with err and cause and reports whether this call
// ended it.
func (c *callCtx) end(err, cause error) bool {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return false
	}
	c.err, c.cause = err, cause
	c.ended.Store(true)
	cancelInner, cancelDone := c.cancelInner, c.cancelDone
	c.mu.Unlock()
	if cancelInner != nil { // made (made cancels them itself once err is set)
		cancelInner(cause) // before done: Cause is set once Done is closed
		cancelDone()
	}
	return true
}

// made returns inner and done, making them on first use: canceled already
// if the call has ended.
func (c *callCtx) made() (inner, done context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inner == nil {
		c.inner, c.cancelInner = context.WithCancelCause(context.WithoutCancel(c.parent))
		c.done, c.cancelDone = context.WithCancel(context.Background())
		if c.err != nil {
			c.cancelInner(c.cause)
			c.cancelDone()
		}
	}
	return c.inner, c.done
}

func (c *callCtx) Deadline() (time.Time, bool) { return c.deadline, !c.deadline.IsZero() }

func (c *callCtx) Done() <-chan struct{} {
	_, done := c.made()
	return done.Done()
}

func (c *callCtx) Value(key any) any {
	inner, _ := c.made()
	return inner.Value(key)
}

// Err is nil until Done is closed (or would be, were it made), then the
// error the call ended with.
func (c *callCtx) Err() error {
	if !c.ended.Load() { // no lock while the call runs
		return nil
	}
	c.mu.Lock()
	done, err := c.done, c.err
	c.mu.Unlock()
	if done != nil && done.Err() == nil {
		return nil // end has not closed Done yet
	}
	return err
}

// AfterFunc lets the context package cancel derived contexts without a
// goroutine each, and with this context's Err and Cause.
func (c *callCtx) AfterFunc(f func()) func() bool {
	_, done := c.made()
	return context.AfterFunc(done, f)
}

func (c *callCtx) String() string { return "tether.server.callContext" }
