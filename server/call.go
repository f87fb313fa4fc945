package server

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/mux"
	"github.com/tetherrpc/tether/internal/wire"
)

// Peer describes the client of a call.
type Peer struct {
	// Addr is the client's network address, as the server saw it.
	Addr string
	// Principal is what the server's Authenticator returned for this
	// connection, or nil.
	Principal any
	// ConnID identifies the connection within this server process, for
	// per-connection state such as rate limits.
	ConnID uint64
}

// CallInfo describes the call a handler is serving. Handlers and
// interceptors get it with CallInfoFromContext.
type CallInfo interface {
	// Spec describes the procedure.
	Spec() tether.Spec
	// Peer describes the client.
	Peer() Peer
	// RequestHeader is the metadata the client sent. Do not modify it.
	RequestHeader() tether.Metadata
	// ResponseHeader is sent to the client before the first response
	// message (or with the end of the call). Modify it before then.
	ResponseHeader() tether.Metadata
	// ResponseTrailer is sent to the client with the end of the call.
	ResponseTrailer() tether.Metadata
}

// Stream is a streaming call as interceptors see it, without message types.
type Stream interface {
	CallInfo
	// Receive reads the next request message into msg; io.EOF means the
	// client sent no more.
	Receive(msg proto.Message) error
	// Send sends one response message.
	Send(msg proto.Message) error
}

type callInfoKey struct{}

// infoCtx is the handler's context: its parent with the call's CallInfo
// under callInfoKey, as context.WithValue would give it, but living in the
// call's struct (no allocation of its own). Everything else, cancellation
// included, is the parent's, so contexts derived from it propagate
// cancellation as they would from a WithValue context.
type infoCtx struct {
	context.Context
	c         *call
	restarted *resumeCursor // a restarted handler run's cursor (ResumeCursor), or nil
}

// Value returns the call for callInfoKey, the cursor for resumeCursorKey
// when the run was restarted, and asks the parent otherwise.
func (x *infoCtx) Value(key any) any {
	switch key.(type) {
	case callInfoKey:
		return x.c
	case resumeCursorKey:
		if x.restarted != nil {
			return x.restarted
		}
	}
	return x.Context.Value(key)
}

// AfterFunc lets the context package cancel contexts derived directly from
// the handler's without a goroutine each: through the parent's own
// AfterFunc (callCtx's), or as a child of the stream's context
// (streamCtx), as context.AfterFunc picks. (Below a context.WithValue of
// an interceptor's, a context derived from a callCtx costs the context
// package's goroutine again: the value context has no AfterFunc of its
// own, and callCtx's Done is not its inner cancelCtx's.)
func (x *infoCtx) AfterFunc(f func()) func() bool { return context.AfterFunc(x.Context, f) }

// CallInfoFromContext returns the CallInfo of the call a handler's context
// belongs to.
func CallInfoFromContext(ctx context.Context) (CallInfo, bool) {
	ci, ok := ctx.Value(callInfoKey{}).(CallInfo)
	return ci, ok
}

// responseBuffers holds the buffers unary and client-streaming responses
// are marshalled into (call.finish): one is in use only until the response
// has been copied into the connection's write queue.
var responseBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// maxPooledResponse: a buffer grown past this by a large response is not
// kept in responseBuffers.
const maxPooledResponse = 64 << 10

// serverStream is the memory of one call on the server: the mux's stream
// and the call in one allocation (mux.Config.NewStream).
type serverStream struct {
	st mux.Stream
	c  call
}

// newServerStream is mux.Config.NewStream: the stream, and its call as its
// owner, for serveStream.
func newServerStream() (*mux.Stream, any) {
	x := new(serverStream)
	return &x.st, &x.c
}

// streamCtx is the stream's context (mux.Stream.Context) as a handler
// without a deadline sees it: the mux makes it only when one of its methods
// is first called, so a handler that never uses its context costs none. It
// forwards everything, Value included (context.Cause finds the stream's
// cancelCtx through it, and contexts derived from it are canceled with it
// as from the stream's own).
type streamCtx struct{ s *mux.Stream }

func (x *streamCtx) Deadline() (time.Time, bool) { return x.s.Context().Deadline() }
func (x *streamCtx) Done() <-chan struct{}       { return x.s.Context().Done() }
func (x *streamCtx) Err() error                  { return x.s.Context().Err() }
func (x *streamCtx) Value(key any) any           { return x.s.Context().Value(key) }

// call is the untyped server side of one stream.
type call struct {
	ctx      context.Context
	infoCtx  infoCtx // the handler's context (its CallInfo), below any value added after it
	s        *mux.Stream
	rs       *session // a resumable call's session (resume.go), or nil: then s
	spec     tether.Spec
	peer     Peer
	reqOnce  sync.Once
	reqMD    tether.Metadata // decoded from the OPEN on first use (RequestHeader)
	mu       sync.Mutex
	respMD   tether.Metadata
	trailer  tether.Metadata
	sentHead bool
	headDone atomic.Bool // sentHead, readable without the lock
	cursor   []byte      // the cursor of the message being sent (cursor.go)
	// refusal is the refusal an interceptor made with RefuseUnprocessed,
	// or handlerStarted once the handler below the interceptors started
	// (refuse.go).
	refusal atomic.Pointer[unprocessedRefusal]
	// the handler's context below infoCtx, without a deadline or a session
	stCtx streamCtx
	cctx  callCtx // the handler's context when the call has a deadline
}

func (c *call) Spec() tether.Spec { return c.spec }
func (c *call) Peer() Peer        { return c.peer }
func (c *call) RequestHeader() tether.Metadata {
	c.reqOnce.Do(c.decodeRequestHeader)
	return c.reqMD
}

// decodeRequestHeader decodes the request metadata, which most handlers
// never read, when first asked for.
func (c *call) decodeRequestHeader() {
	c.reqMD = wire.MetadataFromProto(c.s.RequestMetadata())
}

// ResponseHeader and ResponseTrailer make their maps on first use (under
// mu): most calls set neither.
func (c *call) ResponseHeader() tether.Metadata {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.respMD == nil {
		c.respMD = tether.Metadata{}
	}
	return c.respMD
}

func (c *call) ResponseTrailer() tether.Metadata {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.trailer == nil {
		c.trailer = tether.Metadata{}
	}
	return c.trailer
}

func (c *call) Receive(msg proto.Message) error {
	var b []byte
	var err error
	if c.rs != nil {
		b, err = c.rs.recv()
	} else {
		b, err = c.s.RecvMsg()
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			return io.EOF
		}
		return err
	}
	err = proto.Unmarshal(b, msg) // copies what msg keeps
	if c.rs == nil && c.s.Single() {
		// b was lent (mux.Config.LendFirstMessage) and no receive will
		// follow to give it back; a streaming request's next receive does.
		c.s.ReleaseMsg()
	}
	if err != nil {
		return tether.Errorf(tether.CodeInvalidArgument, "tether: unmarshal %s: %v", msg.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

func (c *call) Send(msg proto.Message) error {
	if err := c.flushHeader(); err != nil {
		return err
	}
	if c.rs != nil {
		b, err := c.marshalResume(msg)
		if err != nil {
			return tether.Errorf(tether.CodeInternal, "tether: marshal %s: %v", msg.ProtoReflect().Descriptor().FullName(), err)
		}
		return c.rs.send(b)
	}
	return c.s.SendProto(c.ctx, msg)
}

// flushHeader sends the response headers once, if there are any.
func (c *call) flushHeader() error {
	if c.headDone.Load() {
		return nil
	}
	c.mu.Lock()
	if c.sentHead {
		c.mu.Unlock()
		return nil
	}
	c.sentHead = true
	c.headDone.Store(true)
	md := c.respMD
	c.mu.Unlock()
	if len(md) == 0 {
		return nil
	}
	if c.rs != nil {
		return c.rs.sendHeaders(md)
	}
	return c.s.SendHeaders(md)
}

// finish ends the call: response headers if not sent yet, the unary
// response if there is one, and END with the status and trailers, in one
// write when they fit.
func (c *call) finish(res proto.Message, err error) {
	if err != nil && c.claimUnprocessed(err) {
		c.s.ResetUnprocessed(tether.AsError(err))
		return
	}
	if err != nil {
		if e := tether.AsError(err); len(e.Meta()) > 0 {
			c.ResponseTrailer().Merge(e.Meta())
		}
	}
	var last []byte
	var pooled *[]byte
	if err == nil && res != nil {
		var merr error
		if c.rs == nil {
			// FinishWith copies the response into the write queue (or
			// SendMsg does) before it returns: the buffer goes back to
			// the pool after. A resumable call's session keeps its
			// last message for replay: it gets its own.
			pooled = responseBuffers.Get().(*[]byte)
			last, merr = proto.MarshalOptions{}.MarshalAppend((*pooled)[:0], res)
		} else {
			last, merr = proto.Marshal(res)
		}
		if merr != nil {
			err = tether.Errorf(tether.CodeInternal, "tether: marshal %s: %v", res.ProtoReflect().Descriptor().FullName(), merr)
			last = nil
		} else if last == nil {
			last = []byte{} // an empty message is still a message
		}
	}
	if pooled != nil {
		defer func() {
			if cap(last) <= maxPooledResponse {
				*pooled = last[:0]
				responseBuffers.Put(pooled)
			}
		}()
	}
	c.mu.Lock()
	var headers tether.Metadata
	if !c.sentHead {
		c.sentHead = true
		c.headDone.Store(true)
		headers = c.respMD
	}
	trailer := c.trailer // nil when the handler set none
	c.mu.Unlock()
	if c.rs != nil {
		c.rs.finish(headers, last, err, trailer)
		return
	}
	if ferr := c.s.FinishWith(headers, last, err, trailer); ferr != nil && err == nil {
		// The response could not be sent (too large, stream gone): end
		// with that error instead.
		_ = c.s.Finish(ferr, trailer)
	}
}
