// Package bench compares tether with its peers: BenchService (bench.v1)
// served by identical handlers over tether, grpc-go, connect-go (HTTP/2
// cleartext and HTTP/1.1) and drpc (plain TCP, and over a WebSocket with
// yamux as coder runs it), a raw gorilla/websocket echo as the ceiling tether
// is measured against, and clients for all of them behind one interface.
// Everything listens on loopback only.
//
// cmd/benchcmp runs the side-by-side comparison with client and server in
// separate processes; the testing.B benchmarks in this package measure
// allocations per call with both in one process. docs/BENCHMARKS.md has the
// commands and results.
package bench

import (
	"context"
	"errors"
	"io"

	"connectrpc.com/connect"

	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
	"github.com/tetherrpc/tether/bench/gen/bench/v1/benchv1connect"
	"github.com/tetherrpc/tether/bench/gen/bench/v1/benchv1drpc"
	"github.com/tetherrpc/tether/bench/gen/bench/v1/benchv1grpc"
	"github.com/tetherrpc/tether/server"
)

// PayloadSize is the body size of the small-message benchmarks.
const PayloadSize = 16

// MaxStreamSize bounds StreamRequest.size, so that a stray request cannot
// make the server allocate without limit.
const MaxStreamSize = 4 << 20

// The handlers' logic, shared by the handlers of every system so that all
// do exactly the same work per message.

// echo is Unary's and Bidi's answer: a new payload with the same body.
func echo(req *benchv1.Payload) *benchv1.Payload {
	return &benchv1.Payload{Body: req.GetBody()}
}

// streamPayload is the one message ServerStream sends count times. Every
// system marshals a message before Send returns, so it is safe to reuse.
func streamPayload(req *benchv1.StreamRequest) *benchv1.Payload {
	return &benchv1.Payload{Body: make([]byte, min(req.GetSize(), MaxStreamSize))}
}

// upload counts what ClientStream receives: recv returns the next payload
// or io.EOF once the client has closed its side.
func upload(recv func() (*benchv1.Payload, error)) (*benchv1.UploadSummary, error) {
	sum := new(benchv1.UploadSummary)
	for {
		m, err := recv()
		if errors.Is(err, io.EOF) {
			return sum, nil
		}
		if err != nil {
			return nil, err
		}
		sum.Count++
		sum.Bytes += uint64(len(m.GetBody()))
	}
}

// TetherHandler serves BenchService over tether.
type TetherHandler struct {
	benchv1.UnimplementedBenchServiceHandler
}

var _ benchv1.BenchServiceHandler = (*TetherHandler)(nil)

// Unary answers with the request's body.
func (*TetherHandler) Unary(_ context.Context, req *benchv1.Payload) (*benchv1.Payload, error) {
	return echo(req), nil
}

// ServerStream sends req.Count payloads of req.Size bytes.
func (*TetherHandler) ServerStream(_ context.Context, req *benchv1.StreamRequest, stream *server.ServerStream[benchv1.Payload]) error {
	msg := streamPayload(req)
	for range req.GetCount() {
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
	return nil
}

// ClientStream counts the payloads it receives.
func (*TetherHandler) ClientStream(_ context.Context, stream *server.ClientStream[benchv1.Payload]) (*benchv1.UploadSummary, error) {
	return upload(stream.Receive)
}

// Bidi answers every payload with its body.
func (*TetherHandler) Bidi(_ context.Context, stream *server.BidiStream[benchv1.Payload, benchv1.Payload]) error {
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(echo(req)); err != nil {
			return err
		}
	}
}

// GRPCHandler serves BenchService over grpc-go.
type GRPCHandler struct {
	benchv1grpc.UnimplementedBenchServiceServer
}

var _ benchv1grpc.BenchServiceServer = (*GRPCHandler)(nil)

// Unary answers with the request's body.
func (*GRPCHandler) Unary(_ context.Context, req *benchv1.Payload) (*benchv1.Payload, error) {
	return echo(req), nil
}

// ServerStream sends req.Count payloads of req.Size bytes.
func (*GRPCHandler) ServerStream(req *benchv1.StreamRequest, stream benchv1grpc.BenchService_ServerStreamServer) error {
	msg := streamPayload(req)
	for range req.GetCount() {
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
	return nil
}

// ClientStream counts the payloads it receives.
func (*GRPCHandler) ClientStream(stream benchv1grpc.BenchService_ClientStreamServer) error {
	sum, err := upload(stream.Recv)
	if err != nil {
		return err
	}
	return stream.SendAndClose(sum)
}

// Bidi answers every payload with its body.
func (*GRPCHandler) Bidi(stream benchv1grpc.BenchService_BidiServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(echo(req)); err != nil {
			return err
		}
	}
}

// ConnectHandler serves BenchService over connect-go.
type ConnectHandler struct {
	benchv1connect.UnimplementedBenchServiceHandler
}

var _ benchv1connect.BenchServiceHandler = (*ConnectHandler)(nil)

// Unary answers with the request's body.
func (*ConnectHandler) Unary(_ context.Context, req *connect.Request[benchv1.Payload]) (*connect.Response[benchv1.Payload], error) {
	return connect.NewResponse(echo(req.Msg)), nil
}

// ServerStream sends req.Count payloads of req.Size bytes.
func (*ConnectHandler) ServerStream(_ context.Context, req *connect.Request[benchv1.StreamRequest], stream *connect.ServerStream[benchv1.Payload]) error {
	msg := streamPayload(req.Msg)
	for range req.Msg.GetCount() {
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
	return nil
}

// ClientStream counts the payloads it receives.
func (*ConnectHandler) ClientStream(_ context.Context, stream *connect.ClientStream[benchv1.Payload]) (*connect.Response[benchv1.UploadSummary], error) {
	sum, err := upload(func() (*benchv1.Payload, error) {
		if !stream.Receive() {
			if err := stream.Err(); err != nil {
				return nil, err
			}
			return nil, io.EOF
		}
		return stream.Msg(), nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(sum), nil
}

// Bidi answers every payload with its body.
func (*ConnectHandler) Bidi(_ context.Context, stream *connect.BidiStream[benchv1.Payload, benchv1.Payload]) error {
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(echo(req)); err != nil {
			return err
		}
	}
}

// DRPCHandler serves BenchService over drpc.
type DRPCHandler struct {
	benchv1drpc.DRPCBenchServiceUnimplementedServer
}

var _ benchv1drpc.DRPCBenchServiceServer = (*DRPCHandler)(nil)

// Unary answers with the request's body.
func (*DRPCHandler) Unary(_ context.Context, req *benchv1.Payload) (*benchv1.Payload, error) {
	return echo(req), nil
}

// ServerStream sends req.Count payloads of req.Size bytes.
func (*DRPCHandler) ServerStream(req *benchv1.StreamRequest, stream benchv1drpc.DRPCBenchService_ServerStreamStream) error {
	msg := streamPayload(req)
	for range req.GetCount() {
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
	return nil
}

// ClientStream counts the payloads it receives.
func (*DRPCHandler) ClientStream(stream benchv1drpc.DRPCBenchService_ClientStreamStream) error {
	sum, err := upload(stream.Recv)
	if err != nil {
		return err
	}
	return stream.SendAndClose(sum)
}

// Bidi answers every payload with its body.
func (*DRPCHandler) Bidi(stream benchv1drpc.DRPCBenchService_BidiStream) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(echo(req)); err != nil {
			return err
		}
	}
}
