package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
)

// UnaryFunc is a unary call as interceptors see it.
type UnaryFunc func(ctx context.Context, req proto.Message) (proto.Message, error)

// StreamFunc is a streaming call (client, server or bidi) as interceptors see
// it.
type StreamFunc func(ctx context.Context, stream Stream) error

// Interceptor wraps handlers: logging, authorization, metrics, recovery.
// connect-go's interceptors are the model.
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

// Handler serves one procedure. Build it with NewUnaryHandler,
// NewServerStreamHandler, NewClientStreamHandler or NewBidiStreamHandler
// (generated code does) and give it to Server.Register.
type Handler struct {
	spec         tether.Spec
	newReq       func() proto.Message // unary: a new request message
	unary        UnaryFunc
	stream       StreamFunc
	interceptors []Interceptor
	marked       bool // unary is wrapped by markHandlerStart
}

// Spec describes the handler's procedure.
func (h *Handler) Spec() tether.Spec { return h.spec }

// HandlerOption configures one Handler.
type HandlerOption func(*Handler)

// WithHandlerInterceptors adds interceptors to one handler, inside the
// server's interceptors.
func WithHandlerInterceptors(interceptors ...Interceptor) HandlerOption {
	return func(h *Handler) { h.interceptors = append(h.interceptors, interceptors...) }
}

// newMessage returns a constructor for *T, which must be a protobuf message.
// It panics at registration, not at call time, if *T is not one.
func newMessage[T any]() func() proto.Message {
	if _, ok := any(new(T)).(proto.Message); !ok {
		panic(fmt.Sprintf("tether: %v is not a protobuf message", reflect.TypeFor[*T]()))
	}
	return func() proto.Message { return any(new(T)).(proto.Message) }
}

func newHandler(spec tether.Spec, opts []HandlerOption) *Handler {
	h := &Handler{spec: spec}
	for _, o := range opts {
		o(h)
	}
	return h
}

// NewUnaryHandler returns a handler for a unary procedure.
func NewUnaryHandler[Req, Res any](spec tether.Spec, fn func(context.Context, *Req) (*Res, error), opts ...HandlerOption) *Handler {
	newMessage[Res]()
	h := newHandler(spec, opts)
	h.newReq = newMessage[Req]()
	h.unary = func(ctx context.Context, req proto.Message) (proto.Message, error) {
		res, err := fn(ctx, any(req).(*Req))
		if err != nil {
			return nil, err
		}
		if res == nil {
			return nil, tether.Errorf(tether.CodeInternal, "tether: %s returned a nil response and a nil error", spec.Procedure)
		}
		return any(res).(proto.Message), nil
	}
	return h
}

// NewServerStreamHandler returns a handler for a server-streaming procedure.
func NewServerStreamHandler[Req, Res any](spec tether.Spec, fn func(context.Context, *Req, *ServerStream[Res]) error, opts ...HandlerOption) *Handler {
	newMessage[Res]()
	newReq := newMessage[Req]()
	h := newHandler(spec, opts)
	h.stream = func(ctx context.Context, st Stream) error {
		req := newReq()
		if err := receiveOne(st, req); err != nil {
			return err
		}
		c, _ := ctx.Value(callInfoKey{}).(*call)
		return fn(ctx, any(req).(*Req), &ServerStream[Res]{st: st, c: c})
	}
	return h
}

// NewClientStreamHandler returns a handler for a client-streaming procedure.
func NewClientStreamHandler[Req, Res any](spec tether.Spec, fn func(context.Context, *ClientStream[Req]) (*Res, error), opts ...HandlerOption) *Handler {
	newMessage[Req]()
	newMessage[Res]()
	h := newHandler(spec, opts)
	h.stream = func(ctx context.Context, st Stream) error {
		c, _ := ctx.Value(callInfoKey{}).(*call)
		res, err := fn(ctx, &ClientStream[Req]{st: st, c: c})
		if err != nil {
			return err
		}
		if res == nil {
			return tether.Errorf(tether.CodeInternal, "tether: %s returned a nil response and a nil error", spec.Procedure)
		}
		return st.Send(any(res).(proto.Message))
	}
	return h
}

// NewBidiStreamHandler returns a handler for a bidirectional procedure.
func NewBidiStreamHandler[Req, Res any](spec tether.Spec, fn func(context.Context, *BidiStream[Req, Res]) error, opts ...HandlerOption) *Handler {
	newMessage[Req]()
	newMessage[Res]()
	h := newHandler(spec, opts)
	h.stream = func(ctx context.Context, st Stream) error {
		c, _ := ctx.Value(callInfoKey{}).(*call)
		return fn(ctx, &BidiStream[Req, Res]{st: st, c: c})
	}
	return h
}

// receiveOne reads the single request of a unary or server-streaming call.
func receiveOne(st Stream, req proto.Message) error {
	if err := st.Receive(req); err != nil {
		if errors.Is(err, io.EOF) {
			return tether.Errorf(tether.CodeUnimplemented, "tether: %s: the client sent no request message", st.Spec().Procedure)
		}
		return err
	}
	return nil
}

// compile applies the interceptors: server-wide ones outermost, then the
// handler's own.
func (h *Handler) compile(server []Interceptor) *Handler {
	all := append(append([]Interceptor(nil), server...), h.interceptors...)
	out := *h
	if out.unary != nil && len(all) > 0 {
		out.unary = markHandlerStart(out.unary) // RefuseUnprocessed
		out.marked = true
	}
	for i := len(all) - 1; i >= 0; i-- {
		if out.unary != nil {
			out.unary = all[i].WrapUnary(out.unary)
		} else {
			out.stream = all[i].WrapStream(out.stream)
		}
	}
	return &out
}

// serve runs the handler for one call and returns its result: for unary
// calls the response, which finish sends with the status in one write.
func (h *Handler) serve(ctx context.Context, c *call) (proto.Message, error) {
	if h.unary == nil {
		return nil, h.stream(ctx, c)
	}
	req := h.newReq()
	if err := receiveOne(c, req); err != nil {
		return nil, err
	}
	if !h.marked {
		// No interceptor: the handler starts now, and a RefuseUnprocessed
		// it returns is an ordinary error (see markHandlerStart).
		c.refusal.Store(handlerStarted)
	}
	return h.unary(ctx, req)
}
