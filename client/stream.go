package client

import (
	"errors"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
)

// ServerStream is the caller's side of a server-streaming call. The caller
// must end it: read it until Receive returns an error (io.EOF at a clean
// end), cancel its context, or Close it (see the package documentation).
type ServerStream[Res any] struct{ s Stream }

// Receive returns the next response, io.EOF once the server has ended the
// call successfully, or the call's error.
func (s *ServerStream[Res]) Receive() (*Res, error) {
	msg := new(Res)
	if err := s.s.Receive(any(msg).(proto.Message)); err != nil {
		return nil, err
	}
	return msg, nil
}

// Header waits for the response headers.
func (s *ServerStream[Res]) Header() (tether.Metadata, error) { return s.s.Header() }

// Trailer returns the response trailers once Receive has returned an error
// or io.EOF.
func (s *ServerStream[Res]) Trailer() tether.Metadata { return s.s.Trailer() }

// Close cancels the call if it is still running; always safe to defer.
func (s *ServerStream[Res]) Close() error { return s.s.Close() }

// Conn returns the untyped stream.
func (s *ServerStream[Res]) Conn() Stream { return s.s }

// ClientStream is the caller's side of a client-streaming call. The caller
// must end it: CloseAndReceive, cancel its context, or Close it (see the
// package documentation).
type ClientStream[Req, Res any] struct{ s Stream }

// Send sends one request. It blocks while the server's flow-control window
// is full. If the server has already ended the call it returns io.EOF, and
// CloseAndReceive returns the call's status.
func (s *ClientStream[Req, Res]) Send(msg *Req) error { return s.s.Send(any(msg).(proto.Message)) }

// CloseAndReceive ends the requests and waits for the response.
func (s *ClientStream[Req, Res]) CloseAndReceive() (*Res, error) {
	if err := s.s.CloseSend(); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return receiveLast[Res](s.s)
}

// Header waits for the response headers.
func (s *ClientStream[Req, Res]) Header() (tether.Metadata, error) { return s.s.Header() }

// Trailer returns the response trailers once CloseAndReceive has returned.
func (s *ClientStream[Req, Res]) Trailer() tether.Metadata { return s.s.Trailer() }

// Close cancels the call if it is still running; always safe to defer.
func (s *ClientStream[Req, Res]) Close() error { return s.s.Close() }

// Conn returns the untyped stream.
func (s *ClientStream[Req, Res]) Conn() Stream { return s.s }

// receiveLast reads the one response of a call and the clean end after it.
func receiveLast[Res any](s Stream) (*Res, error) {
	res := new(Res)
	if err := s.Receive(any(res).(proto.Message)); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, tether.Errorf(tether.CodeUnimplemented, "tether: server ended the call without a response")
		}
		return nil, err
	}
	extra := new(Res)
	switch err := s.Receive(any(extra).(proto.Message)); {
	case errors.Is(err, io.EOF):
		return res, nil
	case err != nil:
		return nil, err
	}
	s.Close()
	return nil, tether.Errorf(tether.CodeUnimplemented, "tether: server sent more than one response")
}

// BidiStream is the caller's side of a bidirectional call. One goroutine may
// send while another receives. The caller must end it: read it until
// Receive returns an error (io.EOF at a clean end), cancel its context, or
// Close it (see the package documentation).
type BidiStream[Req, Res any] struct{ s Stream }

// Send sends one request; io.EOF means the server has ended the call (see
// Receive for its status).
func (s *BidiStream[Req, Res]) Send(msg *Req) error { return s.s.Send(any(msg).(proto.Message)) }

// CloseSend tells the server no more requests follow.
func (s *BidiStream[Req, Res]) CloseSend() error { return s.s.CloseSend() }

// Receive returns the next response, io.EOF at a clean end, or the call's
// error.
func (s *BidiStream[Req, Res]) Receive() (*Res, error) {
	msg := new(Res)
	if err := s.s.Receive(any(msg).(proto.Message)); err != nil {
		return nil, err
	}
	return msg, nil
}

// Header waits for the response headers.
func (s *BidiStream[Req, Res]) Header() (tether.Metadata, error) { return s.s.Header() }

// Trailer returns the response trailers once Receive has returned an error
// or io.EOF.
func (s *BidiStream[Req, Res]) Trailer() tether.Metadata { return s.s.Trailer() }

// Close cancels the call if it is still running; always safe to defer.
func (s *BidiStream[Req, Res]) Close() error { return s.s.Close() }

// Conn returns the untyped stream.
func (s *BidiStream[Req, Res]) Conn() Stream { return s.s }
