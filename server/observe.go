package server

import (
	"context"
	"errors"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
)

// HandlerError returns the error that err, a handler's result, stands for,
// for interceptors that report a call's outcome (take its code with
// tether.CodeOf). It is err itself, except when err is a bare context error
// (it matches context.Canceled or context.DeadlineExceeded and holds no
// *tether.Error) and ctx has a cause: then it is context.Cause(ctx). The
// server cancels a handler's context with the error that ended the call, so
// a handler that returns ctx.Err() after its client gave up at its deadline
// is reported as deadline_exceeded rather than canceled.
func HandlerError(ctx context.Context, err error) error {
	var te *tether.Error
	if err != nil && !errors.As(err, &te) &&
		(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		if cause := context.Cause(ctx); cause != nil {
			return cause
		}
	}
	return err
}

// ObserveStream wraps s for interceptors that measure a streaming call
// (logging, metrics). Pass the returned Stream to the next handler in place
// of s; it behaves like s and counts the messages that Receive and Send
// handled successfully. counts returns the numbers so far: call it once the
// handler has returned to get the call's totals. Both are safe for
// concurrent use.
func ObserveStream(s Stream) (observed Stream, counts func() (sent, received int64)) {
	o := &observedStream{Stream: s}
	return o, o.counts
}

// observedStream is the Stream ObserveStream returns.
type observedStream struct {
	Stream
	sent, received atomic.Int64
}

func (s *observedStream) counts() (sent, received int64) {
	return s.sent.Load(), s.received.Load()
}

func (s *observedStream) Receive(msg proto.Message) error {
	err := s.Stream.Receive(msg)
	if err == nil {
		s.received.Add(1)
	}
	return err
}

func (s *observedStream) Send(msg proto.Message) error {
	err := s.Stream.Send(msg)
	if err == nil {
		s.sent.Add(1)
	}
	return err
}
