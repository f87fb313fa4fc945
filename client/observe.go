package client

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
)

// errClosed is what ObserveStream reports for a stream closed before it
// ended, when no Send or CloseSend failed.
var errClosed = tether.Errorf(tether.CodeCanceled, "tether: stream closed by the client")

// ObserveStream wraps s for interceptors that act when a streaming call ends
// (logging, metrics, tracing). The returned Stream behaves like s and counts
// the messages that Send and Receive handled successfully. onEnd runs exactly
// once, synchronously, in the goroutine of the method that ended the stream:
//
//   - when Receive returns io.EOF: with a nil error;
//   - when Receive returns any other error: with that error;
//   - when Close is called before either: after s.Close returns, with the
//     first error other than io.EOF that Send or CloseSend returned, or, if
//     none did, an error with code tether.CodeCanceled ("tether: stream
//     closed by the client").
//
// sent and received are the numbers of successful Sends and Receives up to
// then. If the caller neither reads the stream to its end nor closes it,
// onEnd never runs.
//
// Like every Stream, the result allows one goroutine to Send while another
// Receives, and Close from any goroutine.
func ObserveStream(s Stream, onEnd func(err error, sent, received int64)) Stream {
	return &observedStream{Stream: s, onEnd: onEnd}
}

// observedStream is the Stream ObserveStream returns.
type observedStream struct {
	Stream
	onEnd          func(err error, sent, received int64)
	sent, received atomic.Int64
	once           sync.Once
	mu             sync.Mutex
	sendErr        error // the first error of Send or CloseSend other than io.EOF
}

func (s *observedStream) finish(err error) {
	s.once.Do(func() { s.onEnd(err, s.sent.Load(), s.received.Load()) })
}

func (s *observedStream) noteSendErr(err error) {
	if err == nil || errors.Is(err, io.EOF) {
		return
	}
	s.mu.Lock()
	if s.sendErr == nil {
		s.sendErr = err
	}
	s.mu.Unlock()
}

func (s *observedStream) Send(msg proto.Message) error {
	err := s.Stream.Send(msg)
	if err == nil {
		s.sent.Add(1)
	}
	s.noteSendErr(err)
	return err
}

func (s *observedStream) CloseSend() error {
	err := s.Stream.CloseSend()
	s.noteSendErr(err)
	return err
}

func (s *observedStream) Receive(msg proto.Message) error {
	err := s.Stream.Receive(msg)
	switch {
	case err == nil:
		s.received.Add(1)
	case errors.Is(err, io.EOF):
		s.finish(nil)
	default:
		s.finish(err)
	}
	return err
}

func (s *observedStream) Close() error {
	err := s.Stream.Close()
	s.mu.Lock()
	cause := s.sendErr
	s.mu.Unlock()
	if cause == nil {
		cause = errClosed
	}
	s.finish(cause)
	return err
}
