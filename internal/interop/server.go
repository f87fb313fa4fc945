// Package interop is tether's interop suite, modeled on gRPC's interop test
// cases (grpc/grpc doc/interop-test-descriptions.md): a server implementing
// tether.testing.interop.v1.TestService as gRPC's interop server implements
// grpc.testing.TestService, and, in its tests, the client cases with the
// assertions gRPC's descriptions make.
//
// TestInterop runs every case -interop.iterations times (default 20, as in
// CI), each time followed by a stress round of -interop.stress goroutines
// (default 200) running the cases at once over the same client; a failure
// names the case and the iteration, and a summary counts failures per case.
// -interop.cases selects cases by regular expression. For a longer run:
//
//	go test -race -run TestInterop ./internal/interop -interop.iterations=200
package interop

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/tetherrpc/tether"
	interopv1 "github.com/tetherrpc/tether/gen/tether/testing/interop/v1"
	"github.com/tetherrpc/tether/server"
)

// The metadata keys the server echoes, as in gRPC's "Echo Metadata" server
// feature. Tether metadata values are UTF-8 strings (docs/PROTOCOL.md §9):
// the value of EchoTrailingKey, binary in gRPC, travels base64-encoded; the
// server sends it back unchanged.
const (
	// EchoInitialKey's values come back in the response headers.
	EchoInitialKey = "x-grpc-test-echo-initial"
	// EchoTrailingKey's values come back in the response trailers.
	EchoTrailingKey = "x-grpc-test-echo-trailing-bin"
)

// MaxPayloadSize bounds the payloads the server builds for a response, so
// that a request cannot make it allocate without bound.
const MaxPayloadSize = 4 << 20

// Server implements TestService as gRPC's interop server does. It does not
// implement UnimplementedCall: the embedded handler answers it with
// unimplemented. The zero value is ready to use.
type Server struct {
	interopv1.UnimplementedTestServiceHandler
}

var _ interopv1.TestServiceHandler = (*Server)(nil)

// Register serves s on srv. It does not serve UnimplementedService.
func (s *Server) Register(srv *server.Server, opts ...server.HandlerOption) {
	interopv1.RegisterTestServiceHandler(srv, s, opts...)
}

// EmptyCall answers with an empty message.
func (s *Server) EmptyCall(ctx context.Context, _ *interopv1.Empty) (*interopv1.Empty, error) {
	if ci, ok := server.CallInfoFromContext(ctx); ok {
		echoMetadata(ci)
	}
	return &interopv1.Empty{}, nil
}

// UnaryCall answers with a payload of req.ResponseSize zero bytes, or ends
// with req.ResponseStatus if it has a nonzero code.
func (s *Server) UnaryCall(ctx context.Context, req *interopv1.SimpleRequest) (*interopv1.SimpleResponse, error) {
	if ci, ok := server.CallInfoFromContext(ctx); ok {
		echoMetadata(ci)
	}
	if err := statusError(req.GetResponseStatus()); err != nil {
		return nil, err
	}
	p, err := newPayload(req.GetResponseSize())
	if err != nil {
		return nil, err
	}
	return &interopv1.SimpleResponse{Payload: p}, nil
}

// StreamingOutputCall sends one response per ResponseParameters, each after
// its interval, then ends with OK; or ends at once with req.ResponseStatus if
// it has a nonzero code.
func (s *Server) StreamingOutputCall(ctx context.Context, req *interopv1.StreamingOutputCallRequest, stream *server.ServerStream[interopv1.StreamingOutputCallResponse]) error {
	echoMetadata(stream.Conn())
	if err := statusError(req.GetResponseStatus()); err != nil {
		return err
	}
	return respond(ctx, req.GetResponseParameters(), stream.Send)
}

// StreamingInputCall receives requests until the client half-closes, then
// answers with the total size of their payload bodies. A receive error (the
// client's cancellation, for one) ends the call with that error.
func (s *Server) StreamingInputCall(ctx context.Context, stream *server.ClientStream[interopv1.StreamingInputCallRequest]) (*interopv1.StreamingInputCallResponse, error) {
	echoMetadata(stream.Conn())
	var total int
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return &interopv1.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)}, nil
		}
		if err != nil {
			return nil, err
		}
		total += len(req.GetPayload().GetBody())
	}
}

// FullDuplexCall answers each request as it arrives: it ends with the
// request's ResponseStatus if that has a nonzero code, and otherwise sends one
// response per ResponseParameters. It ends with OK once the client has
// half-closed.
func (s *Server) FullDuplexCall(ctx context.Context, stream *server.BidiStream[interopv1.StreamingOutputCallRequest, interopv1.StreamingOutputCallResponse]) error {
	echoMetadata(stream.Conn())
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := statusError(req.GetResponseStatus()); err != nil {
			return err
		}
		if err := respond(ctx, req.GetResponseParameters(), stream.Send); err != nil {
			return err
		}
	}
}

// HalfDuplexCall receives every request until the client half-closes, then
// answers them in order as FullDuplexCall would have.
func (s *Server) HalfDuplexCall(ctx context.Context, stream *server.BidiStream[interopv1.StreamingOutputCallRequest, interopv1.StreamingOutputCallResponse]) error {
	echoMetadata(stream.Conn())
	var reqs []*interopv1.StreamingOutputCallRequest
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		reqs = append(reqs, req)
	}
	for _, req := range reqs {
		if err := statusError(req.GetResponseStatus()); err != nil {
			return err
		}
		if err := respond(ctx, req.GetResponseParameters(), stream.Send); err != nil {
			return err
		}
	}
	return nil
}

// echoMetadata copies the echo keys' values from the request headers to the
// response headers and trailers.
func echoMetadata(ci server.CallInfo) {
	req := ci.RequestHeader()
	for _, v := range req.Values(EchoInitialKey) {
		ci.ResponseHeader().Add(EchoInitialKey, v)
	}
	for _, v := range req.Values(EchoTrailingKey) {
		ci.ResponseTrailer().Add(EchoTrailingKey, v)
	}
}

// statusError returns the error that ends a call with st, or nil if st is
// absent or has code 0.
func statusError(st *interopv1.EchoStatus) error {
	switch c := st.GetCode(); {
	case c == 0:
		return nil
	case c < 0:
		return tether.Errorf(tether.CodeInvalidArgument, "interop: negative status code %d", c)
	default:
		var msg error
		if st.GetMessage() != "" {
			msg = errors.New(st.GetMessage())
		}
		return tether.NewError(tether.Code(c), msg)
	}
}

// newPayload returns a payload of size zero bytes.
func newPayload(size int32) (*interopv1.Payload, error) {
	if size < 0 || size > MaxPayloadSize {
		return nil, tether.Errorf(tether.CodeInvalidArgument, "interop: payload size %d is outside [0, %d]", size, MaxPayloadSize)
	}
	return &interopv1.Payload{Body: make([]byte, size)}, nil
}

// respond sends one response per parameter, each after its interval.
func respond(ctx context.Context, params []*interopv1.ResponseParameters, send func(*interopv1.StreamingOutputCallResponse) error) error {
	for _, p := range params {
		if us := p.GetIntervalUs(); us > 0 {
			t := time.NewTimer(time.Duration(us) * time.Microsecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return tether.AsError(context.Cause(ctx))
			}
		}
		body, err := newPayload(p.GetSize())
		if err != nil {
			return err
		}
		if err := send(&interopv1.StreamingOutputCallResponse{Payload: body}); err != nil {
			return err
		}
	}
	return nil
}
