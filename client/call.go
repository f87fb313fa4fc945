package client

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/mux"
	"github.com/tetherrpc/tether/internal/wire"
)

// Method describes a procedure for the client: its Spec and the retry policy
// declared in the .proto. Generated code declares one per method.
type Method struct {
	Spec tether.Spec
	// Retry is the policy from the method's (tether.v1.retry) option, or nil.
	Retry *RetryPolicy
}

func newCallOptions(opts []CallOption) *callOptions {
	co := &callOptions{}
	for _, o := range opts {
		o(co)
	}
	return co
}

func (co *callOptions) newCall(m *Method) *Call {
	h := co.header.Clone()
	if h == nil {
		h = tether.Metadata{}
	}
	return &Call{Spec: m.Spec, Header: h}
}

func (co *callOptions) capture(call *Call) {
	if co.respHeader != nil {
		*co.respHeader = call.ResponseHeader
	}
	if co.respTrailer != nil {
		*co.respTrailer = call.ResponseTrailer
	}
}

// CallUnary makes a unary call. Generated clients call it; user code calls
// the generated methods.
func CallUnary[Req, Res any](ctx context.Context, c *Client, m *Method, req *Req, opts ...CallOption) (*Res, error) {
	co := newCallOptions(opts)
	call := co.newCall(m)
	res := new(Res)
	err := c.wrapUnary(func(ctx context.Context, call *Call, req, res proto.Message) error {
		b, err := proto.Marshal(req)
		if err != nil {
			return tether.Errorf(tether.CodeInternal, "tether: marshal request: %v", err)
		}
		out, err := c.invokeUnary(ctx, m, co, call, b)
		if err != nil {
			return err
		}
		if err := proto.Unmarshal(out, res); err != nil {
			return tether.Errorf(tether.CodeInternal, "tether: unmarshal %s: %v", res.ProtoReflect().Descriptor().FullName(), err)
		}
		return nil
	})(ctx, call, any(req).(proto.Message), any(res).(proto.Message))
	co.capture(call)
	if err != nil {
		return nil, err
	}
	return res, nil
}

// unaryAttempt sends the request on one stream and reads one response and
// the status.
func (c *Client) unaryAttempt(ctx context.Context, co *callOptions, call *Call, req []byte) ([]byte, error) {
	s, sent, err := c.openStream(ctx, co, call, req, true)
	if err != nil {
		return nil, err
	}
	defer s.release()
	if sent {
		call.sent++
	} else {
		// As for streams (clientStream): a call canceled by now sends
		// nothing but its RESET.
		if err := s.ended(); err != nil {
			return nil, err
		}
		switch err := s.st.SendMsg(ctx, req); {
		case err == nil:
			call.sent++
		case !errors.Is(err, io.EOF):
			s.st.Reset(err)
			return nil, err
		}
		if err := s.ended(); err != nil {
			return nil, err
		}
		if err := s.st.CloseSend(ctx); err != nil {
			s.st.Reset(err)
			return nil, err
		}
	}
	msg, err := s.st.RecvMsg()
	if err == nil {
		c.markServed(s.conn)
		_, err = s.st.RecvMsg()
		if err == nil {
			err = tether.Errorf(tether.CodeUnimplemented, "tether: server sent more than one response to a unary call")
			s.st.Reset(err)
		}
	} else if errors.Is(err, io.EOF) {
		err = tether.Errorf(tether.CodeUnimplemented, "tether: server ended a unary call without a response")
	}
	if co.respHeader != nil || co.respTrailer != nil || len(c.cfg.interceptors) > 0 {
		call.ResponseHeader, _ = s.st.Header(context.Background())
		call.ResponseTrailer = s.st.Trailer()
	}
	if errors.Is(err, io.EOF) {
		return msg, nil
	}
	return nil, err
}

// openStream opens a stream for a call on the ready connection, with the
// call's metadata and deadline, and resets it when ctx ends.
//
// first, when not nil, is sent with the OPEN if it fits (then closeSend also
// half-closes); sent reports whether it was.
func (c *Client) openStream(ctx context.Context, co *callOptions, call *Call, first []byte, closeSend bool) (cs *clientStream, sent bool, err error) {
	open := &tetherv1.Open{Procedure: call.Spec.Procedure, Metadata: wire.MetadataToProto(call.Header)}
	if dl, ok := ctx.Deadline(); ok {
		rem := time.Until(dl)
		if rem <= 0 {
			return nil, false, tether.Errorf(tether.CodeDeadlineExceeded, "tether: deadline exceeded before the call started")
		}
		open.TimeoutMicros = uint64((rem + time.Microsecond - 1) / time.Microsecond)
	}
	if err := ctx.Err(); err != nil {
		return nil, false, tether.AsError(err)
	}
	conn, err := c.getConn(ctx, co.failFast)
	if err != nil {
		return nil, false, err
	}
	st, sent, err := conn.Open(ctx, open, first, closeSend)
	if err != nil {
		return nil, false, err
	}
	s := &clientStream{st: st, ctx: ctx, c: c, conn: conn}
	s.stop = context.AfterFunc(ctx, func() { st.Reset(tether.AsError(context.Cause(ctx))) })
	return s, sent, nil
}

// clientStream is the untyped client side of one stream.
//
// Once the caller's context has ended, every method returns the context's
// error (canceled or deadline_exceeded) and nothing but the RESET leaves for
// the stream. The RESET is sent by a context.AfterFunc goroutine, which may
// not have run yet when the caller, having called cancel, calls the next
// method: so each method first checks ctx itself and, if it has ended,
// resets the stream synchronously before anything else is queued (the
// stream's reset state then stops every later write; Reset is idempotent,
// whichever of the two comes first sends the one RESET). cancel closes
// ctx.Done before it returns, so a method called after cancel returned
// always sees it: a HALF_CLOSE can no longer overtake the RESET and let the
// handler complete a call the client canceled.
type clientStream struct {
	st   *mux.Stream
	ctx  context.Context
	stop func() bool
	once sync.Once
	c    *Client
	conn *mux.Conn // the connection the stream is on
}

func (s *clientStream) release() { s.once.Do(func() { s.stop() }) }

// ended returns the call's error if ctx has ended, after resetting the
// stream.
func (s *clientStream) ended() error {
	if s.ctx.Err() == nil {
		return nil
	}
	err := tether.AsError(context.Cause(s.ctx))
	s.st.Reset(err)
	s.release()
	return err
}

func (s *clientStream) Send(msg proto.Message) error {
	if err := s.ended(); err != nil {
		return err
	}
	return s.st.SendProto(s.ctx, msg)
}

func (s *clientStream) Receive(msg proto.Message) error {
	if err := s.ended(); err != nil {
		return err
	}
	b, err := s.st.RecvMsg()
	if err != nil {
		if errors.Is(err, io.EOF) {
			s.c.markServed(s.conn)
		}
		s.release()
		return err
	}
	s.c.markServed(s.conn)
	if err := proto.Unmarshal(b, msg); err != nil {
		err = tether.Errorf(tether.CodeInternal, "tether: unmarshal %s: %v", msg.ProtoReflect().Descriptor().FullName(), err)
		s.st.Reset(err)
		s.release()
		return err
	}
	return nil
}

func (s *clientStream) CloseSend() error {
	if err := s.ended(); err != nil {
		return err
	}
	return s.st.CloseSend(s.ctx)
}

func (s *clientStream) Header() (tether.Metadata, error) {
	if err := s.ended(); err != nil {
		return nil, err
	}
	return s.st.Header(s.ctx)
}

func (s *clientStream) Trailer() tether.Metadata { return s.st.Trailer() }

func (s *clientStream) Close() error {
	s.st.Reset(tether.Errorf(tether.CodeCanceled, "tether: stream closed by the client"))
	s.release()
	return nil
}

// abandoned is what releaseAbandoned needs of a stream; it must not refer to
// the clientStream, or the stream would never become unreachable.
type abandoned struct {
	st        *mux.Stream
	stop      func() bool
	procedure string
	logger    *slog.Logger
}

// releaseAbandoned runs once the caller's stream is unreachable (a
// runtime.AddCleanup cleanup). If the call has not ended, the caller
// dropped it without Close, without reading it to its end and with a
// context that never ended: nothing can end it any more, and it would hold
// a stream slot and a handler on the server for the connection's life. It
// is reset with canceled, and a warning names the procedure, once per
// stream.
func releaseAbandoned(a abandoned) {
	a.stop()
	if a.st.Ended() {
		return
	}
	a.st.Reset(tether.Errorf(tether.CodeCanceled, "tether: stream abandoned by the client"))
	a.logger.Warn("tether: stream abandoned without Close or reading it to its end; reset it (defer the stream's Close, or cancel its context)", "procedure", a.procedure)
}

// openTyped opens a streaming call through the interceptors.
func (c *Client) openTyped(ctx context.Context, m *Method, opts []CallOption) (Stream, error) {
	co := newCallOptions(opts)
	call := co.newCall(m)
	ensureIdempotencyKey(call)
	return c.wrapStream(func(ctx context.Context, call *Call) (Stream, error) {
		if p := c.policyFor(m, co); streamRetries(m.Spec.StreamType, p) {
			return c.openRetryStream(ctx, m, co, call, p) // retried per policy: streamretry.go
		}
		for try := 0; ; try++ {
			s, _, err := c.openStream(ctx, co, call, nil, false)
			if err == nil || !errors.Is(err, mux.ErrUnprocessed) || try >= maxTransparentRetries || ctx.Err() != nil {
				if s == nil {
					return nil, err
				}
				runtime.AddCleanup(s, releaseAbandoned, abandoned{st: s.st, stop: s.stop, procedure: call.Spec.Procedure, logger: c.cfg.logger})
				return s, nil
			}
			c.counters.retries.Add(1)
		}
	})(ctx, call)
}

// CallServerStream starts a server-streaming call: it sends req and returns
// the stream of responses.
func CallServerStream[Req, Res any](ctx context.Context, c *Client, m *Method, req *Req, opts ...CallOption) (*ServerStream[Res], error) {
	s, err := c.openTyped(ctx, m, opts)
	if err != nil {
		return nil, err
	}
	if err := s.Send(any(req).(proto.Message)); err != nil && !errors.Is(err, io.EOF) {
		s.Close()
		return nil, err
	}
	if err := s.CloseSend(); err != nil {
		s.Close()
		return nil, err
	}
	return &ServerStream[Res]{s: s}, nil
}

// CallClientStream starts a client-streaming call.
func CallClientStream[Req, Res any](ctx context.Context, c *Client, m *Method, opts ...CallOption) (*ClientStream[Req, Res], error) {
	s, err := c.openTyped(ctx, m, opts)
	if err != nil {
		return nil, err
	}
	return &ClientStream[Req, Res]{s: s}, nil
}

// CallBidiStream starts a bidirectional call.
func CallBidiStream[Req, Res any](ctx context.Context, c *Client, m *Method, opts ...CallOption) (*BidiStream[Req, Res], error) {
	s, err := c.openTyped(ctx, m, opts)
	if err != nil {
		return nil, err
	}
	return &BidiStream[Req, Res]{s: s}, nil
}
