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
// handler's effect. ctx is the context the interceptor got; interceptors
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
		if old == handlerStarted {
			return e
		}
		if c.refusal.CompareAndSwap(old, r) {
			return r
		}
	}
}

// handlerStarted is what call.refusal holds once the call's handler
// started: no refusal of the call is sent as unprocessed from then on.
var handlerStarted = &unprocessedRefusal{}

// unprocessedRefusal is the error RefuseUnprocessed returns.
type unprocessedRefusal struct{ err *tether.Error }

func (r *unprocessedRefusal) Error() string { return r.err.Error() }
func (r *unprocessedRefusal) Unwrap() error { return r.err }

// refusedUnprocessed reports whether the call ends with err as a refusal
// of RefuseUnprocessed that the server may send as unprocessed: err is the
// refusal recorded on this call, which means that the call's handler has
// not started (its start replaces the refusal with handlerStarted).
func (c *call) refusedUnprocessed(err error) bool {
	var r *unprocessedRefusal
	return c.spec.StreamType == tether.StreamTypeUnary && c.rs == nil &&
		errors.As(err, &r) && r != handlerStarted && c.refusal.Load() == r
}

// markHandlerStart wraps the innermost unary function of a handler (below
// every interceptor) so that its start is recorded on the call: from then
// on no refusal of the call is sent as unprocessed.
func markHandlerStart(next UnaryFunc) UnaryFunc {
	return func(ctx context.Context, req proto.Message) (proto.Message, error) {
		if c, ok := ctx.Value(callInfoKey{}).(*call); ok {
			c.refusal.Store(handlerStarted)
		}
		return next(ctx, req)
	}
}
