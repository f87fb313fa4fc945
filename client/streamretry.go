package client

import (
	"context"
	"errors"
	"io"
	"strconv"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/mux"
)

// serverStream is the Stream of a server-streaming call. It keeps the one
// request and, as grpc-go does, retries the call under the method's retry
// policy until the first response message has been delivered to the
// application: after that the call is committed and its errors are the
// caller's. A call that ends in a delivery failure before any response is
// dead-lettered, as a unary call is, when the policy says so.
//
// Receive runs in one goroutine; Header and Close may run in others. Retries
// are made by whichever method met the failure, one at a time (mu).
type serverStream struct {
	c       *Client
	ctx     context.Context
	cancel  context.CancelFunc
	co      *callOptions
	call    *Call
	p       policy
	started time.Time

	mu          sync.Mutex
	cur         *clientStream
	gen         int    // attempts opened so far (the number of cur)
	req         []byte // the request, once Send has been called
	halfClosed  bool
	committed   bool  // a response was delivered, or the call ended: no more retries
	final       error // the call's error once it can no longer be retried
	attempts    int   // attempts that reached the server, as invokeUnary counts them
	transparent int
}

// openServerStream returns the stream of a server-streaming call. Its first
// attempt is opened by the first method called, normally Send, so that the
// request goes with the OPEN and a call that never got through can be
// dead-lettered with it.
func (c *Client) openServerStream(ctx context.Context, m *Method, co *callOptions, call *Call) (Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, tether.AsError(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	return &serverStream{c: c, ctx: ctx, cancel: cancel, co: co, call: call, p: c.policyFor(m, co), started: time.Now(), attempts: 1}, nil
}

// current returns the current attempt and its number, opening the first
// attempt if there is none yet. It returns the call's error instead when
// the call can no longer be tried.
func (s *serverStream) current() (*clientStream, int, error) {
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

// reopen opens a new attempt, resending the request (and half-close) the
// caller has sent so far; cause is the previous attempt's error, nil for
// the first. It runs with mu held. Errors of
// the new attempt are handled as any attempt's: it returns them only when
// no more attempts are allowed.
func (s *serverStream) reopen(cause error) error {
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
			s.gen++
			return nil
		}
		cause = err
	}
}

// attempt opens one stream and sends the request kept so far.
func (s *serverStream) attempt() (*clientStream, error) {
	cs, sent, err := s.c.openStream(s.ctx, s.co, s.call, s.req, s.halfClosed)
	if err != nil {
		return nil, err
	}
	if s.req != nil && !sent {
		if err := cs.Send(rawMessage(s.req)); err != nil && !errors.Is(err, io.EOF) {
			cs.Close()
			return nil, err
		}
		if s.halfClosed {
			if err := cs.CloseSend(); err != nil {
				cs.Close()
				return nil, err
			}
		}
	}
	return cs, nil
}

// backoff decides whether the call may be tried again after err and waits
// for the retry; it returns the call's final error when it may not.
func (s *serverStream) backoff(err error) error {
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

// fail ends the call with err, or parks it when the policy says so, and
// returns the caller's error.
func (s *serverStream) fail(err error) error {
	if s.p.deadLetter && s.req != nil && s.p.deliveryFailure(err) && !errors.Is(s.ctx.Err(), context.Canceled) {
		err = s.c.deadLetter(s.call, s.req, s.attempts+s.transparent, err, s.started)
	}
	s.final = err
	s.committed = true
	s.cancel()
	return err
}

// recover handles err, met on attempt gen: unless the call is committed, it
// opens the next attempt if the policy allows (or another goroutine already
// did) and returns nil; otherwise it returns the error to give the caller.
func (s *serverStream) recover(gen int, err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.final != nil:
		return s.final
	case gen != s.gen:
		return nil // another method has moved to a newer attempt
	case s.committed || errors.Is(err, io.EOF):
		return err
	}
	s.cur.Close()
	return s.reopen(err)
}

// Send keeps the request and sends it: with the OPEN of the first attempt,
// or on the current one. A server stream has exactly one request.
func (s *serverStream) Send(msg proto.Message) error {
	b, err := proto.Marshal(msg)
	if err != nil {
		return tether.Errorf(tether.CodeInternal, "tether: marshal request: %v", err)
	}
	s.mu.Lock()
	switch {
	case s.final != nil:
		s.mu.Unlock()
		return s.final
	case s.req != nil:
		s.mu.Unlock()
		return tether.Errorf(tether.CodeInternal, "tether: a server-streaming call has one request")
	}
	s.req = b
	if s.cur == nil {
		err := s.reopen(nil) // sends the request
		s.mu.Unlock()
		return err
	}
	cur, gen := s.cur, s.gen
	s.mu.Unlock()
	if err := cur.Send(rawMessage(b)); err != nil && !errors.Is(err, io.EOF) {
		return s.recover(gen, err) // the next attempt sends the request
	}
	return nil
}

// CloseSend half-closes the current attempt and every later one.
func (s *serverStream) CloseSend() error {
	s.mu.Lock()
	s.halfClosed = true
	s.mu.Unlock()
	cur, gen, err := s.current()
	if err != nil {
		return err
	}
	if err := cur.CloseSend(); err != nil && !errors.Is(err, io.EOF) {
		return s.recover(gen, err) // the next attempt half-closes
	}
	return nil
}

// Receive returns the next response of the current attempt. An error before
// the first response starts the next attempt, if the policy allows.
func (s *serverStream) Receive(msg proto.Message) error {
	for {
		cur, gen, err := s.current()
		if err != nil {
			return err
		}
		err = cur.Receive(msg)
		if err == nil || errors.Is(err, io.EOF) {
			s.mu.Lock()
			if !s.committed {
				s.committed = true
				s.c.budget.success()
			}
			s.mu.Unlock()
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

// Header waits for the response headers of the current attempt.
func (s *serverStream) Header() (tether.Metadata, error) {
	cur, _, err := s.current()
	if err != nil {
		return nil, err
	}
	return cur.Header()
}

// Trailer returns the trailers of the current attempt.
func (s *serverStream) Trailer() tether.Metadata {
	s.mu.Lock()
	cur := s.cur
	s.mu.Unlock()
	if cur == nil {
		return tether.Metadata{}
	}
	return cur.Trailer()
}

// Close cancels the call: the current attempt, and any retry.
func (s *serverStream) Close() error {
	s.cancel()
	s.mu.Lock()
	cur := s.cur
	s.mu.Unlock()
	if cur != nil {
		return cur.Close()
	}
	return nil
}
