package clientconn

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
)

// Conn is what generated clients make their calls on: one connection to a
// server, or anything that behaves like one. *client.Client implements it.
//
// Implementations apply opts with NewCallOptions. They must be safe for
// concurrent use.
type Conn interface {
	// Invoke makes a unary call of m: it sends req and decodes the one
	// response into res. The error is a *tether.Error, or satisfies
	// errors.As with one.
	Invoke(ctx context.Context, m *Method, req, res proto.Message, opts ...CallOption) error
	// NewStream opens a streaming call of m (client-, server- or
	// bidirectional streaming). The caller must end the stream it gets
	// (see Stream).
	NewStream(ctx context.Context, m *Method, opts ...CallOption) (Stream, error)
}

// Method describes a procedure for the calling side: its Spec and the retry
// policy declared in the .proto. Generated code declares one per method and
// shares it with the server's registration.
type Method struct {
	// Spec describes the procedure.
	Spec tether.Spec
	// Retry is the policy from the method's (tether.v1.retry) option, or nil.
	Retry *RetryPolicy
	// Resumable makes the method's streams resumable by default (the
	// (tether.v1.resumable) option): they survive a dropped connection
	// (docs/PROTOCOL.md, "Resumable streams"). Ignored for unary methods.
	Resumable bool
}

// CallOption configures one call. The client package makes them
// (client.WithHeader, client.WithResponseHeader, client.FailFast, ...). It
// sets fields of the *CallOptions it is given and must not keep the
// pointer: the client reuses that memory for later calls.
type CallOption func(*CallOptions)

// CallOptions is what a call's CallOptions set, as a Conn reads them.
type CallOptions struct {
	// Header is the request metadata to add to the call.
	Header tether.Metadata
	// ResponseHeader and ResponseTrailer, when not nil, receive the
	// response headers and trailers of a unary call when it returns (the
	// trailers also on error).
	ResponseHeader, ResponseTrailer *tether.Metadata
	// FailFast fails the call at once with unavailable when there is no
	// connection, instead of waiting for one until the call's context
	// ends.
	FailFast bool
	// RetryPolicy overrides the method's retry policy for this call.
	RetryPolicy *RetryPolicy
	// NoRetry makes the call a single attempt (requests that never reached
	// the server are still retried transparently).
	NoRetry bool
	// Resumable, when not nil, overrides the method's Resumable for this
	// call.
	Resumable *bool
}

// NewCallOptions applies opts, in order, to zero CallOptions.
func NewCallOptions(opts ...CallOption) *CallOptions {
	co := &CallOptions{}
	for _, o := range opts {
		o(co)
	}
	return co
}
