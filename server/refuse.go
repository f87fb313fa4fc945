package server

import (
	"context"
	"errors"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
)

// RefuseUnprocessed returns err, with its code, marked as a refusal of a
// unary call that no handler has seen: an interceptor returns it instead of
// calling next when nothing the call asked for has happened and a retry may
// succeed (a cache full of running calls, a dependency the handler needs
// that is down). The server then ends the call with a RESET whose
// unprocessed flag is set (docs/PROTOCOL.md, "RESET unprocessed") instead
// of an END, and the Go client retries it transparently, on any connection
// and whatever the method's idempotency, as it does a call refused over
// MaxConcurrentStreams; a client that gives up (after its bounded
// transparent retries) reports err's code. Response headers and trailers
// set on the call are not sent.
//
// The mark is honored only while the handler has not started: if the
// handler of the call ran (an interceptor called next, or calls next after
// RefuseUnprocessed), or the call is not unary, the call ends with an
// ordinary END with err's code, so a transparent retry can never repeat a
// handler's effect. Once the RESET unprocessed went out, the call's
// handler cannot start any more: an interceptor that calls next late (from
// a goroutine of its own, say) gets an aborted error back instead, as the
// client may already be retrying the call. ctx is the context the interceptor got; interceptors
// must pass it (or one derived from it) to next, as they must for
// CallInfoFromContext. err is wrapped by tether.AsError first; a nil err
// is returned as nil.
func RefuseUnprocessed(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	e := tether.AsError(err)
	c, ok := ctx.Value(callInfoKey{}).(*call)
	if !ok {
		return e
	}
	r := &unprocessedRefusal{err: e}
	for {
		old := c.refusal.Load()
		if old == handlerStarted || old == refusalSent {
			return e
		}
		if c.refusal.CompareAndSwap(old, r) {
			return r
		}
	}
}

// handlerStarted is what call.refusal holds once the call's handler
// started: no refusal of the call is sent as unprocessed from then on.
// refusalSent is what it holds once the call ended with a RESET
// unprocessed: its handler must not start then (an interceptor that calls
// next late, from another goroutine, gets the refusal back instead).
var handlerStarted, refusalSent = &unprocessedRefusal{}, &unprocessedRefusal{}

// unprocessedRefusal is the error RefuseUnprocessed returns.
type unprocessedRefusal struct{ err *tether.Error }

func (r *unprocessedRefusal) Error() string { return r.err.Error() }
func (r *unprocessedRefusal) Unwrap() error { return r.err }

// claimUnprocessed reports whether the call ends with err as a refusal of
// RefuseUnprocessed that the server may send as unprocessed, and if so
// claims it: err is the refusal recorded on this call, so the call's
// handler has not started (its start replaces the refusal with
// handlerStarted), and from now on it cannot start (refusalSent).
func (c *call) claimUnprocessed(err error) bool {
	var r *unprocessedRefusal
	return c.spec.StreamType == tether.StreamTypeUnary && c.rs == nil &&
		errors.As(err, &r) && r != handlerStarted && r != refusalSent && c.refusal.CompareAndSwap(r, refusalSent)
}

// startHandler records that the call's handler starts: from then on no
// refusal of the call is sent as unprocessed. It reports false if the call
// already ended as unprocessed; the handler must not run then.
func (c *call) startHandler() bool {
	for {
		old := c.refusal.Load()
		if old == refusalSent {
			return false
		}
		if old == handlerStarted || c.refusal.CompareAndSwap(old, handlerStarted) {
			return true
		}
	}
}

// markHandlerStart wraps the innermost unary function of a handler (below
// every interceptor) so that its start is recorded on the call (see
// startHandler).
func markHandlerStart(next UnaryFunc) UnaryFunc {
	return func(ctx context.Context, req proto.Message) (proto.Message, error) {
		if c, ok := ctx.Value(callInfoKey{}).(*call); ok && !c.startHandler() {
			return nil, tether.Errorf(tether.CodeAborted, "tether: %s: the call was already refused as unprocessed", c.spec.Procedure)
		}
		return next(ctx, req)
	}
}
