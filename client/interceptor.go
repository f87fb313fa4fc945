package client

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
)

// Call describes one logical call as client interceptors see it.
type Call struct {
	// Spec describes the procedure.
	Spec tether.Spec
	// Header is the request metadata; interceptors may add to it before
	// calling next.
	Header tether.Metadata
	// Target is the URL of the server the client calls, as given to New
	// ("wss://api.example.com/rpc"): tracing reads the server's address
	// and port from it.
	Target string
	// ResponseHeader and ResponseTrailer are filled in when a unary call
	// returns.
	ResponseHeader, ResponseTrailer tether.Metadata
	// Replay is true for the replay of a dead-lettered call (InvokeRaw, as
	// used by dlq.Replay and `tether dlq replay`). Its req and res are
	// *emptypb.Empty values whose unknown fields hold the encoded request
	// and response: proto.Size and proto.Marshal give the bytes on the
	// wire. A replay is one attempt and is never dead-lettered again.
	Replay bool

	sent int64 // times a unary call's request was written to a connection

	// A unary call without interceptors (Client.Invoke) keeps its
	// generated idempotency key here rather than in Header, which no one
	// else sees: no map, no hex string of its own. inlineKey says the
	// call may; key is the key (in keyBuf) once generated.
	inlineKey bool
	key       string
	keyBuf    [2 * idempotencyKeyBytes]byte
	// spare is the memory of the call's first stream (Client.Invoke's
	// unaryCall), or nil once taken.
	spare *spareStream
}

// MessagesSent returns how many times a unary call's request message was
// written to a connection, over all its attempts: 0 when the call never
// connected or every attempt failed before the request left, 1 for a call
// sent once. Interceptors read it after next returns (metrics). It counts
// on the Call that reached the client, so an interceptor that passes a copy
// to next reads the copy's count.
func (c *Call) MessagesSent() int64 { return c.sent }

// UnaryFunc is a unary call as interceptors see it: it sends req and decodes
// the response into res.
type UnaryFunc func(ctx context.Context, call *Call, req, res proto.Message) error

// StreamFunc opens a streaming call as interceptors see it.
type StreamFunc func(ctx context.Context, call *Call) (Stream, error)

// Interceptor wraps calls: logging, metrics, authentication, tracing.
type Interceptor interface {
	WrapUnary(next UnaryFunc) UnaryFunc
	WrapStream(next StreamFunc) StreamFunc
}

// UnaryInterceptorFunc is an Interceptor that wraps unary calls only.
type UnaryInterceptorFunc func(next UnaryFunc) UnaryFunc

// WrapUnary implements Interceptor.
func (f UnaryInterceptorFunc) WrapUnary(next UnaryFunc) UnaryFunc { return f(next) }

// WrapStream implements Interceptor and returns next unchanged.
func (f UnaryInterceptorFunc) WrapStream(next StreamFunc) StreamFunc { return next }

func (c *Client) wrapUnary(fn UnaryFunc) UnaryFunc {
	for i := len(c.cfg.interceptors) - 1; i >= 0; i-- {
		fn = c.cfg.interceptors[i].WrapUnary(fn)
	}
	return fn
}

func (c *Client) wrapStream(fn StreamFunc) StreamFunc {
	for i := len(c.cfg.interceptors) - 1; i >= 0; i-- {
		fn = c.cfg.interceptors[i].WrapStream(fn)
	}
	return fn
}
