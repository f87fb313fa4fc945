package server

import (
	"context"
	"sync"
	"time"

	"github.com/tetherrpc/tether"
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
// come from inner, a standard cancelable context under the stream's; Done
// and AfterFunc come from done, canceled only once err is set, so that
// contexts derived from this one (which the context package cancels through
// AfterFunc, with this context's Err and Cause) get the same error.
type callCtx struct {
	inner       context.Context // values; canceled with the cause
	cancelInner context.CancelCauseFunc
	done        context.Context // closed after err is set
	cancelDone  context.CancelFunc
	deadline    time.Time // zero: none

	mu  sync.Mutex
	err error
}

// newCallCtx returns the context of a handler serving the stream whose
// context is stream, with the deadline timeout after now (none if timeout
// is 0). onDeadline runs when the server's own timer ends the call. stop
// releases the context's resources; call it when the handler has returned.
func newCallCtx(stream context.Context, timeout time.Duration, onDeadline func()) (ctx *callCtx, stop func()) {
	c := &callCtx{}
	c.inner, c.cancelInner = context.WithCancelCause(context.WithoutCancel(stream))
	c.done, c.cancelDone = context.WithCancel(context.Background())
	var timer *time.Timer
	if timeout > 0 {
		c.deadline = time.Now().Add(timeout)
		timer = time.AfterFunc(timeout, func() {
			if c.end(context.DeadlineExceeded, errDeadline) && onDeadline != nil {
				onDeadline()
			}
		})
	}
	stopStream := context.AfterFunc(stream, func() {
		cause := context.Cause(stream)
		if c.deadlinePassed(cause) {
			c.end(context.DeadlineExceeded, cause)
		} else {
			c.end(context.Canceled, cause)
		}
	})
	return c, func() {
		stopStream()
		if timer != nil {
			timer.Stop()
		}
		c.end(context.Canceled, context.Canceled)
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
	c.err = err
	c.mu.Unlock()
	c.cancelInner(cause) // before done: Cause is set once Done is closed
	c.cancelDone()
	return true
}

func (c *callCtx) Deadline() (time.Time, bool) { return c.deadline, !c.deadline.IsZero() }
func (c *callCtx) Done() <-chan struct{}       { return c.done.Done() }
func (c *callCtx) Value(key any) any           { return c.inner.Value(key) }

func (c *callCtx) Err() error {
	if c.done.Err() == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// AfterFunc lets the context package cancel derived contexts without a
// goroutine each, and with this context's Err and Cause.
func (c *callCtx) AfterFunc(f func()) func() bool { return context.AfterFunc(c.done, f) }

func (c *callCtx) String() string { return "tether.server.callContext" }
