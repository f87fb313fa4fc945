package server

import (
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
)

// ServerStream is the handler's side of a server-streaming call: it sends
// any number of responses.
type ServerStream[Res any] struct {
	st Stream
	c  *call // the call under any interceptors, for SendWithCursor; nil in tests
}

// Send sends one response. It blocks while the client's flow-control window
// is full, and fails once the call is canceled or its deadline passes.
func (s *ServerStream[Res]) Send(msg *Res) error { return s.st.Send(any(msg).(proto.Message)) }

// RequestHeader is the metadata the client sent.
func (s *ServerStream[Res]) RequestHeader() tether.Metadata { return s.st.RequestHeader() }

// ResponseHeader is sent before the first response; set it before Send.
func (s *ServerStream[Res]) ResponseHeader() tether.Metadata { return s.st.ResponseHeader() }

// ResponseTrailer is sent when the handler returns.
func (s *ServerStream[Res]) ResponseTrailer() tether.Metadata { return s.st.ResponseTrailer() }

// Conn returns the untyped stream, for code that works on any message type.
func (s *ServerStream[Res]) Conn() Stream { return s.st }

// ClientStream is the handler's side of a client-streaming call: it
// receives any number of requests.
type ClientStream[Req any] struct {
	st Stream
	c  *call // the call under any interceptors, for Checkpoint; nil in tests
}

// Receive returns the next request, or io.EOF once the client has sent all
// of them.
func (s *ClientStream[Req]) Receive() (*Req, error) {
	msg := new(Req)
	if err := s.st.Receive(any(msg).(proto.Message)); err != nil {
		return nil, err
	}
	return msg, nil
}

// RequestHeader is the metadata the client sent.
func (s *ClientStream[Req]) RequestHeader() tether.Metadata { return s.st.RequestHeader() }

// ResponseHeader is sent with the response; set it before returning.
func (s *ClientStream[Req]) ResponseHeader() tether.Metadata { return s.st.ResponseHeader() }

// ResponseTrailer is sent when the handler returns.
func (s *ClientStream[Req]) ResponseTrailer() tether.Metadata { return s.st.ResponseTrailer() }

// Conn returns the untyped stream.
func (s *ClientStream[Req]) Conn() Stream { return s.st }

// BidiStream is the handler's side of a bidirectional call.
type BidiStream[Req, Res any] struct {
	st Stream
	c  *call // the call under any interceptors, for SendWithCursor and Checkpoint; nil in tests
}

// Receive returns the next request, or io.EOF once the client has sent all
// of them.
func (s *BidiStream[Req, Res]) Receive() (*Req, error) {
	msg := new(Req)
	if err := s.st.Receive(any(msg).(proto.Message)); err != nil {
		return nil, err
	}
	return msg, nil
}

// Send sends one response.
func (s *BidiStream[Req, Res]) Send(msg *Res) error { return s.st.Send(any(msg).(proto.Message)) }

// RequestHeader is the metadata the client sent.
func (s *BidiStream[Req, Res]) RequestHeader() tether.Metadata { return s.st.RequestHeader() }

// ResponseHeader is sent before the first response; set it before Send.
func (s *BidiStream[Req, Res]) ResponseHeader() tether.Metadata { return s.st.ResponseHeader() }

// ResponseTrailer is sent when the handler returns.
func (s *BidiStream[Req, Res]) ResponseTrailer() tether.Metadata { return s.st.ResponseTrailer() }

// Conn returns the untyped stream.
func (s *BidiStream[Req, Res]) Conn() Stream { return s.st }
