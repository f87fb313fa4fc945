package client

// Resumable streams on the client (docs/PROTOCOL.md, "Resumable streams").
//
// A resumable call is one logical stream carried by a succession of
// mux.Streams, one per connection. When the current one is lost with its
// connection, the first of Send, Receive or CloseSend to notice
// re-attaches: it waits for the client's next connection (the connection
// manager reconnects as usual), opens the stream again with the token and
// the sequence number of the last response consumed, reads the server's
// answer (the last request the handler consumed), replays the requests
// after it and carries on. The caller sees none of it; a stream that cannot
// be resumed fails with aborted and ErrNotResumed.
//
// Goroutines: the caller's sending and receiving goroutines (one each at a
// time), the reader goroutine of the current connection (onAck) and the
// context.AfterFunc that resets the current attachment when the call's
// context ends. Locks: reattachMu → sendMu → mu.

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/clientconn"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/mux"
	"github.com/tetherrpc/tether/internal/wire"
)

// DefaultResumeBufferBytes bounds a resumable stream's replay buffer of
// requests sent and not yet acknowledged by the server (WithResumeBuffer).
const DefaultResumeBufferBytes = 1 << 20

// ErrNotResumed is the cause of the error of a resumable stream that could
// not be resumed after its connection was lost: the server did not know
// the token any more (grace period over, server restarted), refused it, or
// no connection came back within the grace period. errors.Is(err,
// ErrNotResumed) reports it; the code is aborted. Messages after the last
// one received may be lost: the application starts a new call.
var ErrNotResumed = errors.New("tether: stream could not be resumed")

// WithResumable makes this call's stream resumable (on) or plain (off),
// whatever the method's (tether.v1.resumable) option says. It applies to
// streaming methods; a server that does not announce resumable streams
// gets a plain stream.
func WithResumable(on bool) CallOption {
	return func(o *clientconn.CallOptions) { o.Resumable = &on }
}

// WithResumeBuffer bounds, per resumable stream, the requests kept until
// the server acknowledges them (default 1 MiB). Send waits while it is
// full; a larger request fails with resource_exhausted.
func WithResumeBuffer(bytes int) Option {
	return func(c *config) { c.resumeBuffer = bytes }
}

// resumable reports whether a call of m with options co asks for a
// resumable stream.
func resumable(m *Method, co *callOptions) bool {
	if m.Spec.StreamType == tether.StreamTypeUnary {
		return false
	}
	if co.Resumable != nil {
		return *co.Resumable
	}
	return m.Resumable
}

type sentMsg struct {
	seq uint64
	b   []byte
}

// resumeStream is the untyped client side of a resumable call.
type resumeStream struct {
	c     *Client
	ctx   context.Context
	stop  func() bool
	open  *tetherv1.Open // the first OPEN, re-sent with Resume.attach
	first *mux.Stream    // the first attachment: its headers are the call's
	limit int

	reattachMu sync.Mutex
	sendMu     sync.Mutex

	mu         sync.Mutex
	wake       chan struct{}
	st         *mux.Stream
	conn       *mux.Conn
	gen        uint64
	out        []sentMsg
	outBytes   int
	sent       uint64
	closedSend bool
	failed     error
	grace      time.Duration
	laterHdr   tether.Metadata // response headers carried by a re-attachment's answer

	// Cursors (a server stream to a server that announced them, or a
	// client-streaming or bidi stream of a marked method to a server that
	// announced level 2): the server prefixes its messages with the
	// handler's cursors, and a re-attachment that reaches a server without
	// the stream restarts it from the cursor of the last response consumed.
	cursors   bool
	req       []byte // the request, sent again to a restarted handler
	cursorSeq uint64 // the response whose cursor is cursor
	hasCursor bool   // false: that response carried none
	cursor    []byte // reused from response to response

	// Client-streaming and bidi streams with cursors (resume_cursor.go).
	withRequests bool
	recvTok      chan struct{} // capacity 1: held by the goroutine taking responses off the attachment
	pending      []byte        // a response Send took off the attachment, for Receive
	hasPending   bool
	acked        uint64 // the last request the server acknowledged
	covered      uint64 // the requests the last cursor consumed covers (its R)
}

// openResumable opens a resumable stream, or a plain one when the server
// does not announce resumption.
func (c *Client) openResumable(ctx context.Context, co *callOptions, call *Call) (Stream, error) {
	for try := 0; ; try++ {
		s, err := c.openResumableOnce(ctx, co, call)
		if err == nil || !errors.Is(err, mux.ErrUnprocessed) || try >= maxTransparentRetries || ctx.Err() != nil {
			return s, err
		}
		c.counters.retries.Add(1)
	}
}

// openResumableOnce is one try of openResumable.
func (c *Client) openResumableOnce(ctx context.Context, co *callOptions, call *Call) (Stream, error) {
	conn, err := c.getConn(ctx, co.FailFast)
	if err != nil {
		return nil, err
	}
	if conn.PeerResumeGrace() == 0 {
		s, _, err := c.openStream(ctx, co, call, nil, false, true)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	token := make([]byte, 16)
	_, _ = rand.Read(token) // never fails (crypto/rand)
	withRequests := conn.PeerResumeCursors() >= 2 && call.Spec.ResumeFromCursor && call.Spec.StreamType != tether.StreamTypeServer
	cursors := conn.PeerResumeCursors() >= 1 && call.Spec.StreamType == tether.StreamTypeServer || withRequests
	open := &tetherv1.Open{Procedure: call.Spec.Procedure, Metadata: wire.MetadataToProto(call.Header), Resume: &tetherv1.Resume{Token: token, Cursors: cursors}}
	if err := setTimeout(ctx, open); err != nil {
		return nil, err
	}
	st, _, err := conn.Open(ctx, open, nil, false)
	if err != nil {
		return nil, err
	}
	limit := c.cfg.resumeBuffer
	if limit <= 0 {
		limit = DefaultResumeBufferBytes
	}
	rs := &resumeStream{c: c, ctx: ctx, open: open, first: st, st: st, conn: conn, limit: limit, wake: make(chan struct{}), grace: conn.PeerResumeGrace(), cursors: cursors, withRequests: withRequests}
	if withRequests {
		rs.recvTok = make(chan struct{}, 1)
	}
	st.OnAck(rs.onAck)
	rs.stop = context.AfterFunc(ctx, func() {
		rs.mu.Lock()
		cur := rs.st
		rs.mu.Unlock()
		cur.Reset(tether.AsError(context.Cause(ctx)))
	})
	// As for a plain stream (releaseAbandoned): a call the caller drops
	// without ending it is ended once its handle is unreachable. The
	// engine's callbacks and the AfterFunc hold rs, not the handle.
	h := &resumeHandle{rs}
	runtime.AddCleanup(h, releaseAbandonedResume, abandonedResume{rs: rs, procedure: call.Spec.Procedure, logger: c.cfg.logger})
	return h, nil
}

// resumeHandle is a resumable stream as its caller holds it: nothing of
// the client or the engine refers to it, so it becomes unreachable when the
// caller drops it, while rs may not (the current attachment's OnAck, the
// AfterFunc on the call's context).
type resumeHandle struct{ *resumeStream }

// abandonedResume is what releaseAbandonedResume needs.
type abandonedResume struct {
	rs        *resumeStream
	procedure string
	logger    *slog.Logger
}

// releaseAbandonedResume runs once a resumable stream's handle is
// unreachable. If the call has not ended (the caller dropped it without
// Close, without reading it to its end, with a context that never ended),
// it is ended as Close does: the current attachment is reset with
// canceled, which ends the server's session and handler (or, if the
// connection is lost, the session expires after its grace period), and a
// warning names the procedure, once.
func releaseAbandonedResume(a abandonedResume) {
	rs := a.rs
	rs.mu.Lock()
	st, failed := rs.st, rs.failed
	rs.mu.Unlock()
	ended := failed != nil || st.Ended() && !st.ConnClosed()
	rs.Close()
	if !ended {
		a.logger.Warn("tether: stream abandoned without Close or reading it to its end; reset it (defer the stream's Close, or cancel its context)", "procedure", a.procedure)
	}
}

// setTimeout sets open's timeout from ctx's deadline. It returns ctx's
// cause if ctx has ended or its deadline has passed.
func setTimeout(ctx context.Context, open *tetherv1.Open) error {
	open.TimeoutMicros = 0
	if dl, ok := ctx.Deadline(); ok {
		rem := time.Until(dl)
		if rem <= 0 {
			return deadlinePassed(ctx)
		}
		open.TimeoutMicros = uint64((rem + time.Microsecond - 1) / time.Microsecond)
	}
	if ctx.Err() != nil {
		return tether.AsError(context.Cause(ctx))
	}
	return nil
}

func (rs *resumeStream) wakeLocked() {
	close(rs.wake)
	rs.wake = make(chan struct{})
}

// cur returns the current attachment, or the call's final error.
func (rs *resumeStream) cur() (*mux.Stream, uint64, error) {
	if err := rs.ctx.Err(); err != nil {
		err := tether.AsError(context.Cause(rs.ctx))
		rs.mu.Lock()
		st := rs.st
		rs.mu.Unlock()
		st.Reset(err)
		return nil, 0, err
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.failed != nil {
		return nil, 0, rs.failed
	}
	return rs.st, rs.gen, nil
}

// lost reports whether st failed because its connection was lost (and the
// call goes on).
func (rs *resumeStream) lost(st *mux.Stream) bool {
	return st.ConnClosed() && rs.ctx.Err() == nil
}

func (rs *resumeStream) onAck(seq uint64) {
	rs.mu.Lock()
	if rs.withRequests {
		// A request leaves the buffer once a cursor covers it too.
		rs.acked = max(rs.acked, seq)
		seq = min(rs.acked, rs.covered)
	}
	rs.trimLocked(seq)
	rs.mu.Unlock()
}

func (rs *resumeStream) trimLocked(seq uint64) {
	seq = min(seq, rs.sent)
	n := 0
	for n < len(rs.out) && rs.out[n].seq <= seq {
		rs.outBytes -= len(rs.out[n].b)
		rs.out[n] = sentMsg{}
		n++
	}
	if n > 0 {
		rs.out = rs.out[n:]
		rs.wakeLocked()
	}
}

func (rs *resumeStream) Send(msg proto.Message) error {
	b, err := proto.Marshal(msg)
	if err != nil {
		return tether.Errorf(tether.CodeInternal, "tether: marshal %s: %v", msg.ProtoReflect().Descriptor().FullName(), err)
	}
	if len(b) > rs.limit {
		return tether.Errorf(tether.CodeResourceExhausted, "tether: message of %d bytes exceeds the replay buffer of %d bytes", len(b), rs.limit)
	}
	// Wait for room in the replay buffer.
	for {
		st, gen, err := rs.cur()
		if err != nil {
			return err
		}
		var take chan struct{} // to consume checkpoints meanwhile
		if rs.withRequests {
			rs.tryDrain(st)
			take = rs.recvTok
		}
		rs.mu.Lock()
		room := rs.outBytes+len(b) <= rs.limit
		wake := rs.wake
		if rs.hasPending || st.Ended() {
			take = nil // Receive must take it first; or st is over
		}
		rs.mu.Unlock()
		if room {
			break
		}
		select {
		case <-wake:
		case take <- struct{}{}:
			rs.drainWait(st, wake)
			<-take
		case <-st.Done():
			if rs.lost(st) {
				if err := rs.reattach(gen); err != nil {
					return err
				}
			} else if _, _, err := rs.cur(); err != nil {
				return err
			} else {
				return io.EOF // the server ended the call: Receive has its status
			}
		case <-rs.ctx.Done():
		}
	}
	rs.sendMu.Lock()
	rs.mu.Lock()
	rs.sent++
	if rs.cursors && !rs.withRequests && rs.sent == 1 {
		rs.req = b
	}
	rs.out = append(rs.out, sentMsg{seq: rs.sent, b: b})
	rs.outBytes += len(b)
	st, gen := rs.st, rs.gen
	rs.mu.Unlock()
	err = st.SendMsg(rs.ctx, b)
	rs.sendMu.Unlock()
	if err != nil && rs.lost(st) {
		return rs.reattach(gen)
	}
	return err
}

func (rs *resumeStream) Receive(msg proto.Message) error {
	if rs.withRequests {
		return rs.receiveWithRequests(msg)
	}
	for {
		st, gen, err := rs.cur()
		if err != nil {
			return err
		}
		b, err := st.RecvMsg()
		if err == nil {
			rs.c.markServed(rs.connOf(st))
			if rs.cursors {
				var cursor []byte
				if cursor, b, err = wire.SplitCursor(b); err != nil {
					err = tether.Errorf(tether.CodeInternal, "tether: response of %s: %v", rs.open.GetProcedure(), err)
					st.Reset(err)
					rs.fail(err)
					return err
				}
				rs.mu.Lock()
				rs.cursorSeq, rs.hasCursor = st.Seq(), cursor != nil
				rs.cursor = append(rs.cursor[:0], cursor...) // b is pooled
				rs.mu.Unlock()
			}
			return rs.unmarshal(b, msg)
		}
		if rs.lost(st) {
			if err := rs.reattach(gen); err != nil {
				return err
			}
			continue
		}
		rs.stop()
		return err
	}
}

// unmarshal decodes a response into msg; the call fails if it does not
// decode.
func (rs *resumeStream) unmarshal(b []byte, msg proto.Message) error {
	if err := proto.Unmarshal(b, msg); err != nil {
		err = tether.Errorf(tether.CodeInternal, "tether: unmarshal %s: %v", msg.ProtoReflect().Descriptor().FullName(), err)
		rs.mu.Lock()
		st := rs.st
		rs.mu.Unlock()
		st.Reset(err)
		return rs.fail(err)
	}
	return nil
}

func (rs *resumeStream) connOf(*mux.Stream) *mux.Conn {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.conn
}

func (rs *resumeStream) CloseSend() error {
	st, gen, err := rs.cur()
	if err != nil {
		return err
	}
	if rs.withRequests {
		rs.tryDrain(st)
	}
	rs.sendMu.Lock()
	rs.mu.Lock()
	rs.closedSend = true
	rs.mu.Unlock()
	err = st.CloseSend(rs.ctx)
	rs.sendMu.Unlock()
	if err != nil && rs.lost(st) {
		return rs.reattach(gen)
	}
	return err
}

func (rs *resumeStream) Header() (tether.Metadata, error) {
	if _, _, err := rs.cur(); err != nil {
		return nil, err
	}
	rs.mu.Lock()
	first := rs.first
	rs.mu.Unlock()
	hdr, err := first.Header(rs.ctx)
	if err != nil || len(hdr) > 0 {
		return hdr, err
	}
	// The first connection was lost before the headers came: the server
	// sends them again with its answer to a re-attachment.
	rs.mu.Lock()
	later, cur := rs.laterHdr, rs.st
	rs.mu.Unlock()
	if later != nil {
		return later, nil
	}
	if cur != first {
		// The handler sent them after the re-attachment.
		if h, err := cur.Header(rs.ctx); err == nil && len(h) > 0 {
			return h, nil
		}
	}
	return hdr, nil
}

func (rs *resumeStream) Trailer() tether.Metadata {
	rs.mu.Lock()
	st := rs.st
	rs.mu.Unlock()
	return st.Trailer()
}

func (rs *resumeStream) Close() error {
	err := tether.Errorf(tether.CodeCanceled, "tether: stream closed by the client")
	rs.mu.Lock()
	st := rs.st
	if rs.failed == nil {
		rs.failed = err
	}
	rs.wakeLocked()
	rs.mu.Unlock()
	st.Reset(err)
	rs.stop()
	return nil
}

// fail ends the call with err.
func (rs *resumeStream) fail(err error) error {
	rs.mu.Lock()
	if rs.failed == nil {
		rs.failed = err
	}
	err = rs.failed
	rs.wakeLocked()
	rs.mu.Unlock()
	rs.stop()
	return err
}
