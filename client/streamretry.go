package client

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/mux"
)

// RetryBufferSize bounds what a client-streaming or bidi call keeps of the
// messages it has sent, to re-send them on a retry (256 KiB, as grpc-go's
// per-call retry buffer). A call that sends more is committed: it is no
// longer retried. A server-streaming call always keeps its one request.
const RetryBufferSize = 256 << 10

// retryStream is the Stream of a streaming call whose policy allows retries.
// As grpc-go does, it keeps the requests sent so far and retries the call
// under the method's retry policy until the first response message has been
// delivered to the application: then the call is committed and its errors
// are the caller's. A server-streaming call keeps its one request; it is
// opened by its first Send, so that the request goes with the OPEN, and a
// call that ends in a delivery failure before any response is dead-lettered
// with that request, as a unary call is, when the policy says so. A
// client-streaming or bidi call keeps at most RetryBufferSize bytes of
// requests (past that it is committed) and is never dead-lettered: a live
// stream cannot be parked.
//
// One goroutine may Send while another Receives; Header and Close may run in
// others. A retry is made by whichever method met the failure, one at a time
// (mu), and the others carry on with the new attempt.
type retryStream struct {
	c       *Client
	ctx     context.Context
	cancel  context.CancelFunc
	co      *callOptions
	call    *Call
	p       policy
	kind    tether.StreamType
	started time.Time

	mu          sync.Mutex
	cur         *clientStream
	gen         int      // attempts opened so far (the number of cur)
	buf         [][]byte // the requests sent so far, while not committed
	bufBytes    int
	requests    int // requests sent
	halfClosed  bool
	committed   bool  // a response was delivered, the buffer overflowed, or the call ended
	final       error // the call's error once it can no longer be tried
	attempts    int   // attempts that may have reached the server, as invokeUnary counts them
	transparent int
	receiving   bool          // a goroutine is receiving on cur (one at a time)
	pending     []byte        // a response Send found on an ended attempt, for the next Receive
	changed     chan struct{} // closed (and replaced) when receiving, gen, committed or final change
	waiters     int           // goroutines waiting on changed

	// live holds the current attempt's engine stream for the cleanup that
	// releases an abandoned call (releaseAbandonedRetry); it is allocated
	// apart so that the cleanup does not keep the retryStream reachable.
	live *atomic.Pointer[mux.Stream]

	// done is set, with mu held, once the call is committed to cur with no
	// response pending, or has failed: Send and Receive then go straight
	// to cur (or return final) without taking mu.
	done atomic.Bool
}

// openRetryStream returns the stream of a streaming call that is retried per
// p. A client-streaming or bidi call opens its first attempt at once, a
// server-streaming call at its first Send.
func (c *Client) openRetryStream(ctx context.Context, m *Method, co *callOptions, call *Call, p policy) (Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, tether.AsError(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &retryStream{c: c, ctx: ctx, cancel: cancel, co: co, call: call, p: p, kind: m.Spec.StreamType, started: time.Now(), attempts: 1, changed: make(chan struct{}), live: new(atomic.Pointer[mux.Stream])}
	// As for a plain stream (releaseAbandoned): a call the caller drops
	// without ending it is canceled once unreachable, which resets its
	// current attempt and releases its context.
	runtime.AddCleanup(s, releaseAbandonedRetry, abandonedRetry{live: s.live, cancel: cancel, procedure: call.Spec.Procedure, logger: c.cfg.logger})
	if s.kind != tether.StreamTypeServer {
		if _, _, err := s.current(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// abandonedRetry is what releaseAbandonedRetry needs of a retryStream; it
// must not refer to the retryStream.
type abandonedRetry struct {
	live      *atomic.Pointer[mux.Stream]
	cancel    context.CancelFunc
	procedure string
	logger    *slog.Logger
}

// releaseAbandonedRetry runs once a retried streaming call is unreachable:
// it cancels the call's context (the AfterFunc of its current attempt
// resets that stream with canceled) and, if that attempt had not ended,
// warns once, as releaseAbandoned does for a plain stream.
func releaseAbandonedRetry(a abandonedRetry) {
	st := a.live.Load()
	a.cancel()
	if st == nil || st.Ended() {
		return
	}
	st.Reset(tether.Errorf(tether.CodeCanceled, "tether: stream abandoned by the client"))
	a.logger.Warn("tether: stream abandoned without Close or reading it to its end; reset it (defer the stream's Close, or cancel its context)", "procedure", a.procedure)
}

// streamRetries reports whether a streaming call under p needs a retryStream:
// a server-streaming call always does (it is retried transparently whatever
// the policy, and may be dead-lettered); a client-streaming or bidi call only
// when its policy allows more than one attempt.
func streamRetries(kind tether.StreamType, p policy) bool {
	return kind == tether.StreamTypeServer || p.maxAttempts > 1
}

// current returns the current attempt and its number, opening the first
// attempt if there is none yet. It returns the call's error instead when
// the call can no longer be tried.
func (s *retryStream) current() (*clientStream, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.final != nil {
		return nil, s.gen, s.final
	}
	if s.cur == nil {
		if err := s.reopen(nil); err != nil {
			return nil, s.gen, err
		}
	}
	return s.cur, s.gen, nil
}

// reopen opens a new attempt, re-sending the requests (and half-close) the
// caller has sent so far; cause is the previous attempt's error, nil for
// the first. It runs with mu held. Errors of the new attempt are handled as
// any attempt's: it returns them only when no more attempts are allowed.
func (s *retryStream) reopen(cause error) error {
	for {
		if cause != nil {
			if err := s.backoff(cause); err != nil {
				return err
			}
		}
		if s.attempts+s.transparent > 1 {
			s.call.Header.Set(tether.MetadataAttempt, strconv.Itoa(s.attempts+s.transparent))
		}
		cs, err := s.attempt()
		if err == nil {
			s.cur = cs
			s.live.Store(cs.st)
			s.gen++
			s.signalLocked()
			return nil
		}
		cause = err
	}
}

// attempt opens one stream and sends the requests kept so far: the first
// with the OPEN when it fits.
func (s *retryStream) attempt() (*clientStream, error) {
	var first []byte
	if len(s.buf) > 0 {
		first = s.buf[0]
	}
	closeWithFirst := s.halfClosed && len(s.buf) == 1
	cs, sent, err := s.c.openStream(s.ctx, s.co, s.call, first, closeWithFirst, true)
	if err != nil {
		return nil, err
	}
	rest := s.buf
	if sent {
		rest = rest[1:]
	}
	for _, b := range rest {
		if err := cs.Send(rawMessage(b)); err != nil {
			if errors.Is(err, io.EOF) {
				// The server ended the call before taking every request:
				// its status says whether to try again.
				err = s.status(cs)
			}
			cs.Close()
			return nil, err
		}
	}
	if s.halfClosed && !(sent && closeWithFirst) {
		if err := cs.CloseSend(); err != nil && !errors.Is(err, io.EOF) {
			cs.Close()
			return nil, err
		}
	}
	return cs, nil
}

// status returns the error that ended cs, or unavailable if it ended
// cleanly before taking its requests.
func (s *retryStream) status(cs *clientStream) error {
	err := cs.Receive(rawMessage(nil))
	if err == nil || errors.Is(err, io.EOF) {
		return tether.Errorf(tether.CodeUnavailable, "tether: server ended the call before taking the re-sent requests")
	}
	return err
}

// backoff decides whether the call may be tried again after err and waits
// for the retry; it returns the call's final error when it may not.
func (s *retryStream) backoff(err error) error {
	if s.ctx.Err() != nil {
		return s.fail(err)
	}
	if errors.Is(err, mux.ErrUnprocessed) && s.transparent < maxTransparentRetries {
		s.transparent++
		s.c.counters.retries.Add(1)
		if !sleepCtx(s.ctx, transparentDelay(s.transparent)) {
			return s.fail(err)
		}
		return nil
	}
	if !s.p.retryable(err) {
		return s.fail(err)
	}
	s.c.budget.failure()
	if s.attempts >= s.p.maxAttempts || !s.c.budget.allow() {
		return s.fail(err)
	}
	d := s.p.delay(s.attempts)
	if !fitsDeadline(s.ctx, d) || !sleepCtx(s.ctx, d) {
		return s.fail(err)
	}
	s.attempts++
	s.c.counters.retries.Add(1)
	return nil
}

// fail ends the call with err, or parks it when the policy says so and it
// is a server stream (the only kind whose request is complete), and returns
// the caller's error.
func (s *retryStream) fail(err error) error {
	if s.p.deadLetter && s.kind == tether.StreamTypeServer && len(s.buf) == 1 &&
		s.p.deliveryFailure(err) && !errors.Is(s.ctx.Err(), context.Canceled) {
		err = s.c.deadLetter(s.call, s.buf[0], s.attempts+s.transparent, err, s.started)
	}
	s.final = err
	s.commitLocked()
	s.cancel()
	return err
}

// commitLocked ends the retries: the requests are no longer kept.
func (s *retryStream) commitLocked() {
	s.committed = true
	s.buf, s.bufBytes = nil, 0
	s.settleLocked()
	s.signalLocked()
}

// settleLocked sets done once nothing but cur (or final) is left to use.
func (s *retryStream) settleLocked() {
	if s.final != nil || (s.committed && s.pending == nil && s.cur != nil) {
		s.done.Store(true)
	}
}

// signalLocked wakes the goroutines waiting for a change of the stream's
// state.
func (s *retryStream) signalLocked() {
	if s.waiters > 0 {
		close(s.changed)
		s.changed = make(chan struct{})
	}
}

// waitLocked waits, with mu held, for the next change of the stream's state.
func (s *retryStream) waitLocked() {
	ch := s.changed
	s.waiters++
	s.mu.Unlock()
	<-ch
	s.mu.Lock()
	s.waiters--
}

// recover handles err, met on attempt gen: unless the call is committed, it
// opens the next attempt if the policy allows (or another goroutine already
// did) and returns nil; otherwise it returns the error to give the caller.
func (s *retryStream) recover(gen int, err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.final != nil:
		return s.final
	case gen != s.gen:
		return nil // another method has moved on to a newer attempt
	case s.committed || errors.Is(err, io.EOF):
		return err
	}
	s.cur.Close()
	return s.reopen(err)
}

// Send sends a request on the current attempt, and keeps it for the next
// ones while the call is not committed. The first Send of a server stream
// opens its first attempt, with the request.
func (s *retryStream) Send(msg proto.Message) error {
	if s.done.Load() && s.kind != tether.StreamTypeServer {
		return s.sendDone(msg)
	}
	s.mu.Lock()
	switch {
	case s.final != nil:
		s.mu.Unlock()
		return s.final
	case s.kind == tether.StreamTypeServer && s.requests > 0:
		s.mu.Unlock()
		return tether.Errorf(tether.CodeInternal, "tether: a server-streaming call has one request")
	case s.committed:
		s.requests++
		cur := s.cur
		s.mu.Unlock()
		return cur.Send(msg)
	}
	b, err := proto.Marshal(msg)
	if err != nil {
		s.mu.Unlock()
		return tether.Errorf(tether.CodeInternal, "tether: marshal request: %v", err)
	}
	s.requests++
	if s.kind != tether.StreamTypeServer && s.bufBytes+len(b) > RetryBufferSize {
		s.commitLocked() // too much to keep: no more retries
	} else {
		s.buf = append(s.buf, b)
		s.bufBytes += len(b)
	}
	if s.cur == nil {
		err := s.reopen(nil) // the first attempt, with the request
		s.mu.Unlock()
		return err
	}
	cur, gen := s.cur, s.gen
	s.mu.Unlock()
	switch err := cur.Send(rawMessage(b)); {
	case errors.Is(err, io.EOF):
		return s.sendEnded(gen)
	case err != nil:
		return s.recover(gen, err) // the next attempt re-sends the request
	}
	return nil
}

// sendDone is Send once the call is done with retries.
func (s *retryStream) sendDone(msg proto.Message) error {
	if s.final != nil {
		return s.final
	}
	return s.cur.Send(msg)
}

// sendEnded handles io.EOF from Send on attempt gen, which means that the
// server ended that attempt. If it did so with a retryable error before any
// response, the call goes on with the next attempt, which re-sends the
// requests, and the caller keeps sending; otherwise Send returns io.EOF and
// Receive gives the call's status. The attempt's status is read by the
// goroutine receiving, or here if none is (a client stream's caller sends
// before it receives); a response found here is kept for the next Receive.
func (s *retryStream) sendEnded(gen int) error {
	s.mu.Lock()
	for {
		switch {
		case s.final != nil || s.committed:
			s.mu.Unlock()
			return io.EOF
		case s.gen != gen:
			s.mu.Unlock()
			return nil // the next attempt carries the request
		case s.receiving:
			s.waitLocked()
			continue
		}
		break
	}
	s.receiving = true
	cur := s.cur
	s.mu.Unlock()
	res := rawMessage(nil)
	err := cur.Receive(res)
	s.mu.Lock()
	s.receiving = false
	s.signalLocked()
	if err == nil {
		s.pending, _ = proto.Marshal(res)
		if s.pending == nil {
			s.pending = []byte{}
		}
		s.commitLocked()
		s.c.budget.success()
	}
	s.mu.Unlock()
	if err == nil || errors.Is(err, io.EOF) {
		return io.EOF // Receive reads the response, or the clean end, again
	}
	if s.recover(gen, err) != nil {
		return io.EOF // Receive returns the call's error
	}
	return nil
}

// CloseSend half-closes the current attempt and every later one.
func (s *retryStream) CloseSend() error {
	s.mu.Lock()
	s.halfClosed = true
	cur, gen, final := s.cur, s.gen, s.final
	s.mu.Unlock()
	if final != nil {
		return final
	}
	if cur == nil {
		// The first attempt: current opens it half-closed.
		_, _, err := s.current()
		return err
	}
	if err := cur.CloseSend(); err != nil && !errors.Is(err, io.EOF) {
		return s.recover(gen, err) // the next attempt half-closes
	}
	return nil
}

// Receive returns the next response of the current attempt. An error before
// the first response starts the next attempt, if the policy allows.
func (s *retryStream) Receive(msg proto.Message) error {
	if s.done.Load() {
		if s.final != nil {
			return s.final
		}
		err := s.cur.Receive(msg)
		if err != nil {
			s.cancel() // the call has ended
		}
		return err
	}
	for {
		cur, gen, pending, err := s.startReceive()
		if err != nil {
			return err
		}
		if pending != nil {
			if err := proto.Unmarshal(pending, msg); err != nil {
				err = tether.Errorf(tether.CodeInternal, "tether: unmarshal %s: %v", msg.ProtoReflect().Descriptor().FullName(), err)
				s.Close()
				return err
			}
			return nil
		}
		err = cur.Receive(msg)
		s.mu.Lock()
		s.receiving = false
		s.signalLocked()
		if (err == nil || errors.Is(err, io.EOF)) && !s.committed {
			s.commitLocked()
			s.c.budget.success()
		}
		s.mu.Unlock()
		if err == nil || errors.Is(err, io.EOF) {
			if err != nil {
				s.cancel() // the call ended cleanly
			}
			return err
		}
		if rerr := s.recover(gen, err); rerr != nil {
			s.cancel()
			return rerr
		}
	}
}

// startReceive makes the calling goroutine the one receiving, once no other
// is, and returns the current attempt (opening the first), or a response
// that Send found, or the call's error.
func (s *retryStream) startReceive() (cur *clientStream, gen int, pending []byte, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.receiving {
		s.waitLocked()
	}
	if s.pending != nil {
		pending, s.pending = s.pending, nil
		s.settleLocked()
		return nil, s.gen, pending, nil
	}
	if s.final != nil {
		return nil, s.gen, nil, s.final
	}
	if s.cur == nil {
		if err := s.reopen(nil); err != nil {
			return nil, s.gen, nil, err
		}
	}
	s.receiving = true
	return s.cur, s.gen, nil, nil
}

// Header waits for the response headers of the current attempt.
func (s *retryStream) Header() (tether.Metadata, error) {
	cur, _, err := s.current()
	if err != nil {
		return nil, err
	}
	return cur.Header()
}

// Trailer returns the trailers of the current attempt.
func (s *retryStream) Trailer() tether.Metadata {
	s.mu.Lock()
	cur := s.cur
	s.mu.Unlock()
	if cur == nil {
		return tether.Metadata{}
	}
	return cur.Trailer()
}

// Close cancels the call: the current attempt, and any retry.
func (s *retryStream) Close() error {
	s.cancel()
	s.mu.Lock()
	cur := s.cur
	s.mu.Unlock()
	if cur != nil {
		return cur.Close()
	}
	return nil
}
