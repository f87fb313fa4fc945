package mux

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
	"github.com/tetherrpc/tether/internal/wire"
)

// Stream is one call on a connection. One goroutine may send and one may
// receive at a time; Reset and the accessors are safe from any goroutine.
type Stream struct {
	c  *Conn
	id uint32

	ctx       context.Context // server: canceled when the stream ends
	cancelCtx context.CancelCauseFunc

	sendMu sync.Mutex // serializes senders so fragments never interleave

	mu            sync.Mutex
	recvQ         recvQueue
	recvEnd       error // io.EOF or the call's error once nothing more arrives
	recvWindow    int   // credit the peer still has
	unacked       int   // credit consumed by the application, not yet granted back
	deferredGrant int   // server: window beyond InitialWindow, granted on the first RecvMsg
	partial       int   // reader goroutine: bytes of the message being received
	midMessage    bool  // reader goroutine: a fragment with MORE came, the message's last has not
	assembly      []byte
	assemblyCap   int   // capacity of assembly charged to the connection's partialBytes
	slab          *slab // where small queued frames are copied (slab.go)
	held          *slab // the slab of the message RecvMsg returned last
	copiedFirst   bool  // a payload has been copied out (slab.go)
	sendCredit    int
	sendErr       error // set when the stream can carry no more sends
	halfClosed    bool  // we sent HALF_CLOSE or END
	headers       tether.Metadata
	headersSet    bool
	trailers      tether.Metadata
	finished      bool // removed from the connection
	gotMessage    bool // reader goroutine: a whole message has arrived

	// Set by the reader goroutine before the stream's frames are handled
	// and before Accept runs (server).
	route  any  // Config.Route's value for the procedure
	single bool // the procedure takes one request message

	slotHeld        atomic.Bool // client: holds one of the connection's slots (Conn.Open)
	runningReleased atomic.Bool // server: out of the connection's running count (releaseRunning)

	recvNotify chan struct{}
	sendNotify chan struct{}
	headersCh  chan struct{} // made by Header when it must wait; closed when headers, a message or the end arrive
	done       chan struct{} // closed when the stream is finished
}

type chunk struct {
	b    []byte
	more bool
	slab *slab // b points into it, or nil
}

// recvQueue is a stream's queue of received frames: a ring whose slot
// count is a power of two, grown (doubled) only when it is full. Every
// queued frame holds at least FrameOverhead of the peer's credit, so the
// queue never holds more than StreamWindow/FrameOverhead frames, and its
// slots never exceed that rounded up to a power of two, whatever the
// consumer's pace against the sender's. (A slice reset only when it ran
// empty grew by a slot per message under a consumer slightly slower than
// its sender.)
type recvQueue struct {
	buf  []chunk
	head int // index of the oldest frame
	n    int // frames queued
}

const (
	// minQueueSlots is the size of a queue's first ring.
	minQueueSlots = 4
	// maxIdleQueueSlots: a ring larger than this is dropped when it runs
	// empty, so that a stream holds a burst's slots only while the burst is
	// queued.
	maxIdleQueueSlots = 64
)

func (q *recvQueue) len() int { return q.n }

// slots is the ring's size (what the queue holds in memory).
func (q *recvQueue) slots() int { return len(q.buf) }

func (q *recvQueue) push(c chunk) {
	if q.n == len(q.buf) {
		buf := make([]chunk, max(minQueueSlots, 2*len(q.buf)))
		k := copy(buf, q.buf[q.head:])
		copy(buf[k:], q.buf[:q.head])
		q.buf, q.head = buf, 0
	}
	q.buf[(q.head+q.n)&(len(q.buf)-1)] = c
	q.n++
}

// pop takes the oldest frame; the queue is not empty.
func (q *recvQueue) pop() chunk {
	c := q.buf[q.head]
	q.buf[q.head] = chunk{}
	q.head = (q.head + 1) & (len(q.buf) - 1)
	q.n--
	if q.n == 0 {
		q.head = 0
		if len(q.buf) > maxIdleQueueSlots {
			q.buf = nil
		}
	}
	return c
}

// ID returns the stream id.
func (s *Stream) ID() uint32 { return s.id }

// Route is what Config.Route returned for the stream's procedure (server
// streams), or nil.
func (s *Stream) Route() any { return s.route }

// Context is canceled when the stream ends for any reason (server streams).
func (s *Stream) Context() context.Context { return s.ctx }

// Ended reports whether the stream has finished: ended by the peer, reset,
// or closed with its connection.
func (s *Stream) Ended() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// --- receiving (reader goroutine) ---

func (s *Stream) handleMessage(f frame.Frame, bufCap int) error {
	cost := len(f.Payload) + FrameOverhead
	more := f.Flags&frame.FlagMore != 0
	s.mu.Lock()
	s.recvWindow -= cost
	if s.recvWindow < 0 {
		s.mu.Unlock()
		return protoErrf("stream %d: peer sent %d bytes beyond its flow-control window", s.id, -s.recvWindow)
	}
	if s.recvEnd != nil || s.finished {
		afterHalfClose := s.c.role == RoleServer && !s.finished
		s.mu.Unlock()
		if afterHalfClose {
			return protoErrf("stream %d: MESSAGE after HALF_CLOSE", s.id)
		}
		return nil
	}
	if s.single && s.gotMessage && s.partial == 0 {
		s.mu.Unlock()
		s.Reset(tether.Errorf(tether.CodeUnimplemented, "tether: more than one request message for a procedure that takes one"))
		return nil
	}
	s.partial += len(f.Payload)
	if s.partial > s.c.cfg.MaxMessageSize {
		size := s.partial
		s.partial = 0
		s.mu.Unlock()
		err := tether.Errorf(tether.CodeResourceExhausted, "tether: received message of at least %d bytes exceeds the limit of %d", size, s.c.cfg.MaxMessageSize)
		s.Reset(err)
		return nil
	}
	s.midMessage = more
	if !more {
		s.partial = 0
		s.gotMessage = true
	}
	payload := f.Payload
	var sl *slab
	if 2*len(payload) < bufCap {
		// A small frame must not pin the large buffer it came in (flow
		// control counts only its own bytes), and the buffer is reused
		// for the next message.
		if len(payload) > 0 {
			payload, sl = s.copyInLocked(payload)
		} else {
			payload = nil
		}
	} else {
		s.c.donated = true // the frame keeps the buffer
	}
	s.recvQ.push(chunk{b: payload, more: more, slab: sl})
	if !s.headersSet { // a message before HEADERS: the headers are empty
		s.headersSet = true
		s.closeHeadersLocked()
	}
	s.mu.Unlock()
	notify(s.recvNotify)
	return nil
}

// handleHalfClose: the client sends no more messages. Between the fragments
// of a message it is a protocol error: the message would be lost without a
// trace, and the handler would see a clean end of stream.
func (s *Stream) handleHalfClose() error {
	if s.midMessage {
		return protoErrf("stream %d: HALF_CLOSE in the middle of a message", s.id)
	}
	s.mu.Lock()
	if s.recvEnd == nil {
		s.recvEnd = io.EOF
	}
	s.mu.Unlock()
	notify(s.recvNotify)
	return nil
}

func (s *Stream) handleWindow(n uint32) error {
	s.mu.Lock()
	s.sendCredit += int(n)
	over := s.sendCredit > 1<<31-1
	s.mu.Unlock()
	if over {
		return protoErrf("stream %d: flow-control window over 2^31-1", s.id)
	}
	notify(s.sendNotify)
	return nil
}

func (s *Stream) handleHeaders(payload []byte) error {
	if cost, _ := headerCost(payload, headersMetadataField); cost > s.c.cfg.MaxHeaderBytes {
		s.Reset(tether.Errorf(tether.CodeResourceExhausted, "tether: response headers of %d bytes exceed the limit of %d", cost, s.c.cfg.MaxHeaderBytes))
		return nil
	}
	var h tetherv1.Headers
	if err := proto.Unmarshal(payload, &h); err != nil {
		return protoErrf("stream %d: bad HEADERS: %v", s.id, err)
	}
	s.mu.Lock()
	if !s.headersSet {
		s.headers = wire.MetadataFromProto(h.GetMetadata())
	}
	s.mu.Unlock()
	s.markHeaders()
	return nil
}

// closeHeadersLocked wakes Header; the caller holds mu and has just set
// headersSet.
func (s *Stream) closeHeadersLocked() {
	if s.headersCh != nil {
		close(s.headersCh)
	}
}

func (s *Stream) markHeaders() {
	s.mu.Lock()
	if !s.headersSet {
		s.headersSet = true
		s.closeHeadersLocked()
	}
	s.mu.Unlock()
}

// okEnd is the END payload of a successful call without trailers
// (tether.v1.End{status: {}}): sent and recognised without marshalling.
var okEnd = []byte{0x0a, 0x00}

func (s *Stream) handleEnd(payload []byte) error {
	if s.midMessage {
		// As HALF_CLOSE: the call would end with its last message lost.
		return protoErrf("stream %d: END in the middle of a message", s.id)
	}
	var end tetherv1.End
	var err error
	if bytes.Equal(payload, okEnd) || len(payload) == 0 {
		// Success, no trailers.
	} else if cost, _ := headerCost(payload, endTrailersField); cost > s.c.cfg.MaxHeaderBytes {
		err = tether.Errorf(tether.CodeResourceExhausted, "tether: response trailers of %d bytes exceed the limit of %d", cost, s.c.cfg.MaxHeaderBytes)
	} else if uerr := proto.Unmarshal(payload, &end); uerr != nil {
		return protoErrf("stream %d: bad END: %v", s.id, uerr)
	} else {
		trailers := wire.MetadataFromProto(end.GetTrailers())
		err = wire.ErrorFromStatus(end.GetStatus(), trailers)
		s.mu.Lock()
		s.trailers = trailers
		s.mu.Unlock()
	}
	if err == nil {
		err = io.EOF
	}
	s.mu.Lock()
	if s.recvEnd == nil {
		s.recvEnd = err
	}
	if s.sendErr == nil {
		s.sendErr = io.EOF
	}
	s.mu.Unlock()
	s.finish()
	return nil
}

func (s *Stream) handleReset(payload []byte) error {
	var r tetherv1.Reset
	if err := proto.Unmarshal(payload, &r); err != nil {
		return protoErrf("stream %d: bad RESET: %v", s.id, err)
	}
	err := wire.ErrorFromStatus(r.GetStatus(), nil)
	if err == nil {
		err = tether.Errorf(tether.CodeCanceled, "tether: stream reset by peer")
	}
	if r.GetUnprocessed() && s.c.role == RoleClient {
		err = unprocessed(err)
	}
	s.terminate(err, false)
	return nil
}

// --- receiving (application) ---

// RecvMsg returns the next whole message. The message is valid until the
// next call of RecvMsg (small messages share pooled memory, slab.go), except
// a stream's first message, which the caller may keep. At the end of the peer's messages
// it returns io.EOF (a half-close, or an END with status OK) or the call's
// error. Fragments are assembled here, in the receiving goroutine, and their
// credit is granted back as they are taken, so messages larger than the
// window flow.
func (s *Stream) RecvMsg() ([]byte, error) {
	if s.deferredGrant > 0 {
		s.mu.Lock()
		n := s.deferredGrant
		s.deferredGrant = 0
		if s.recvEnd != nil || s.finished {
			n = 0
		}
		s.recvWindow += n
		s.mu.Unlock()
		s.grant(n)
	}
	for {
		s.mu.Lock()
		if s.held != nil {
			// The caller is done with the last message (see above): its
			// slab reference goes now, so a stream waiting on an empty
			// queue holds no slab.
			s.releaseLocked(s.held)
			s.held = nil
		}
		for s.recvQ.len() > 0 {
			ch := s.recvQ.pop()
			s.unacked += len(ch.b) + FrameOverhead
			grant := s.takeGrantLocked()
			if ch.more || s.assembly != nil {
				err := s.assembleLocked(ch.b)
				s.releaseLocked(ch.slab)
				if err != nil {
					s.mu.Unlock()
					s.Reset(err)
					return nil, err
				}
			}
			if ch.more {
				s.mu.Unlock()
				s.grant(grant)
				s.mu.Lock()
				continue
			}
			msg := ch.b
			if s.assembly != nil {
				msg = s.assembly
				s.assembly = nil
				s.uncharge()
			} else {
				s.held = ch.slab
			}
			s.mu.Unlock()
			s.grant(grant)
			return msg, nil
		}
		if s.recvEnd != nil {
			err := s.recvEnd
			s.mu.Unlock()
			return nil, err
		}
		s.mu.Unlock()
		<-s.recvNotify
	}
}

// assembleLocked appends a fragment to the message being assembled. The
// buffer's growth is charged to the connection's budget for partial
// messages (Config.MaxPartialBytes); over it, the fragment is not taken,
// the partial message is dropped and resource_exhausted returned: the
// caller resets the stream. The buffer grows by doubling, never past
// MaxMessageSize (the reader has reset a stream whose message passes it).
// s.mu is held.
func (s *Stream) assembleLocked(p []byte) error {
	need := len(s.assembly) + len(p)
	if need > cap(s.assembly) {
		size := max(min(2*cap(s.assembly), s.c.cfg.MaxMessageSize), need)
		limit := int64(s.c.cfg.MaxPartialBytes)
		if s.c.partialBytes.Add(int64(size-s.assemblyCap)) > limit {
			s.c.partialBytes.Add(-int64(size - s.assemblyCap))
			s.assembly = nil
			s.uncharge()
			return tether.Errorf(tether.CodeResourceExhausted, "tether: messages being received on this connection would take more than %d bytes", limit)
		}
		buf := make([]byte, len(s.assembly), size)
		copy(buf, s.assembly)
		s.assembly, s.assemblyCap = buf, size
	}
	s.assembly = append(s.assembly, p...)
	return nil
}

// uncharge takes the stream's assembly buffer off the connection's budget
// for partial messages: the message is complete (the application owns
// it), dropped, or the stream has ended (no more fragments will come, so
// what is left is bounded by what was queued within credit). s.mu is held.
func (s *Stream) uncharge() {
	s.c.partialBytes.Add(-int64(s.assemblyCap))
	s.assemblyCap = 0
}

// takeGrantLocked returns the credit to grant back now, if enough has been
// consumed to be worth a WINDOW frame.
func (s *Stream) takeGrantLocked() int {
	if s.unacked < s.c.cfg.StreamWindow/4 || s.recvEnd != nil || s.finished {
		return 0
	}
	n := s.unacked
	s.unacked = 0
	s.recvWindow += n
	return n
}

func (s *Stream) grant(n int) {
	if n == 0 {
		return
	}
	s.c.writeUrgent(func(b []byte) []byte { return frame.AppendWindow(b, s.id, uint32(n)) })
}

// Header waits for the response headers (clients): they arrive in a HEADERS
// frame, or are empty when the first message or the end comes first.
func (s *Stream) Header(ctx context.Context) (tether.Metadata, error) {
	s.mu.Lock()
	if !s.headersSet {
		if s.headersCh == nil {
			s.headersCh = make(chan struct{})
		}
		ch := s.headersCh
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, tether.AsError(ctx.Err())
		}
		s.mu.Lock()
	}
	defer s.mu.Unlock()
	if s.headers == nil {
		s.headers = tether.Metadata{}
	}
	return s.headers, nil
}

// Trailer returns the trailers from END; empty until the stream ended.
func (s *Stream) Trailer() tether.Metadata {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.trailers == nil {
		return tether.Metadata{}
	}
	return s.trailers
}

// --- sending ---

// SendMsg sends one message, in fragments of at most frame.MaxPayload bytes,
// waiting for flow-control credit. It fails with resource_exhausted for a
// message over MaxMessageSize; with the stream's error once the stream has
// ended (io.EOF after a clean END on a client); and with ctx's error.
func (s *Stream) SendMsg(ctx context.Context, msg []byte) error {
	if len(msg) > s.c.cfg.MaxMessageSize {
		return tether.Errorf(tether.CodeResourceExhausted, "tether: message of %d bytes exceeds the limit of %d", len(msg), s.c.cfg.MaxMessageSize)
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	first := true
	started := false // a fragment with MORE has been queued
	for first || len(msg) > 0 {
		first = false
		want := min(len(msg), 16<<10) + FrameOverhead
		credit, err := s.waitCredit(ctx, want)
		if err != nil {
			return s.abandonMessage(started, err)
		}
		n := min(len(msg), frame.MaxPayload, credit-FrameOverhead)
		part := msg[:n]
		var flags uint8
		if n < len(msg) {
			flags = frame.FlagMore
		}
		err = s.c.write(ctx, s.done, func(b []byte) []byte {
			b = frame.AppendHeader(b, frame.TypeMessage, flags, s.id, len(part))
			return append(b, part...)
		})
		// Credit not used goes back.
		s.mu.Lock()
		s.sendCredit += credit - (n + FrameOverhead)
		if err != nil {
			s.sendCredit += n + FrameOverhead
		}
		s.mu.Unlock()
		if err != nil {
			return s.abandonMessage(started, s.sendError(err))
		}
		started = true
		msg = msg[n:]
	}
	return nil
}

// abandonMessage returns err, the error of a SendMsg that stops before the
// message is complete. Once a fragment has been queued (started), the
// stream is reset with err: the peer would otherwise wait for the rest,
// and anything sent later (another message, HALF_CLOSE) would land in the
// middle of this one, which is a protocol error that closes the connection.
func (s *Stream) abandonMessage(started bool, err error) error {
	if started {
		s.Reset(err)
	}
	return err
}

// SendProto sends one protobuf message. A message that fits one frame is
// marshalled straight into the writer's queue, saving an allocation and a
// copy; a larger one goes through SendMsg.
func (s *Stream) SendProto(ctx context.Context, m proto.Message) error {
	size := proto.Size(m)
	if size > frame.MaxPayload || size > s.c.cfg.MaxMessageSize {
		b, err := proto.Marshal(m)
		if err != nil {
			return tether.Errorf(tether.CodeInternal, "tether: marshal %s: %v", m.ProtoReflect().Descriptor().FullName(), err)
		}
		return s.SendMsg(ctx, b)
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	cost := size + FrameOverhead
	if err := s.takeCredit(ctx, cost); err != nil {
		return err
	}
	var merr error
	err := s.c.write(ctx, s.done, func(b []byte) []byte {
		start := len(b)
		b = frame.AppendHeader(b, frame.TypeMessage, 0, s.id, size)
		out, e := marshalOpts.MarshalAppend(b, m)
		if e != nil || len(out)-len(b) != size {
			merr = e
			if merr == nil {
				merr = errors.New("message changed while it was being sent")
			}
			return b[:start]
		}
		return out
	})
	if err != nil || merr != nil {
		s.mu.Lock()
		s.sendCredit += cost // not sent: the credit goes back
		s.mu.Unlock()
	}
	if merr != nil {
		return tether.Errorf(tether.CodeInternal, "tether: marshal %s: %v", m.ProtoReflect().Descriptor().FullName(), merr)
	}
	if err != nil {
		return s.sendError(err)
	}
	return nil
}

// takeCredit waits until n credit is available and takes exactly n.
func (s *Stream) takeCredit(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		if s.sendErr != nil {
			err := s.sendErr
			s.mu.Unlock()
			return err
		}
		if s.halfClosed {
			s.mu.Unlock()
			return tether.Errorf(tether.CodeInternal, "tether: send after close")
		}
		if s.sendCredit >= n {
			s.sendCredit -= n
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		select {
		case <-s.sendNotify:
		case <-s.done:
		case <-ctx.Done():
			return tether.AsError(ctx.Err())
		}
	}
}

// waitCredit waits until at least want credit is available and takes all of
// it; the caller returns what it does not use.
func (s *Stream) waitCredit(ctx context.Context, want int) (int, error) {
	for {
		s.mu.Lock()
		if s.sendErr != nil {
			err := s.sendErr
			s.mu.Unlock()
			return 0, err
		}
		if s.halfClosed {
			s.mu.Unlock()
			return 0, tether.Errorf(tether.CodeInternal, "tether: send after close")
		}
		if s.sendCredit >= want {
			n := s.sendCredit
			s.sendCredit = 0
			s.mu.Unlock()
			return n, nil
		}
		s.mu.Unlock()
		select {
		case <-s.sendNotify:
		case <-s.done:
		case <-ctx.Done():
			return 0, tether.AsError(ctx.Err())
		}
	}
}

func (s *Stream) sendError(err error) error {
	if err == errStreamDone {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.sendErr != nil {
			return s.sendErr
		}
		return tether.Errorf(tether.CodeCanceled, "tether: stream ended")
	}
	return tether.AsError(err)
}

// CloseSend sends HALF_CLOSE: no more messages from this side (clients).
func (s *Stream) CloseSend(ctx context.Context) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	s.mu.Lock()
	if s.halfClosed || s.sendErr != nil {
		s.mu.Unlock()
		return nil
	}
	s.halfClosed = true
	s.mu.Unlock()
	err := s.c.write(ctx, s.done, func(b []byte) []byte {
		return frame.AppendHeader(b, frame.TypeHalfClose, 0, s.id, 0)
	})
	if err == errStreamDone {
		return nil
	}
	return err
}

// SendHeaders sends the response headers (servers), before any message.
func (s *Stream) SendHeaders(md tether.Metadata) error {
	payload, err := s.encodeHeaders(md)
	if err != nil {
		return err
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.writeHeaders(payload)
}

func (s *Stream) encodeHeaders(md tether.Metadata) ([]byte, error) {
	entries := wire.MetadataToProto(md)
	payload, err := proto.Marshal(&tetherv1.Headers{Metadata: entries})
	if err != nil {
		return nil, tether.Errorf(tether.CodeInternal, "tether: encode headers: %v", err)
	}
	if cost, limit := len(payload)+metadataCost(entries), s.c.sendHeaderLimit(); cost > limit {
		return nil, tether.Errorf(tether.CodeResourceExhausted, "tether: response headers of %d bytes exceed the limit of %d", cost, limit)
	}
	return payload, nil
}

// writeHeaders queues a HEADERS frame; the caller holds sendMu.
func (s *Stream) writeHeaders(payload []byte) error {
	err := s.c.write(s.ctx, s.done, func(b []byte) []byte {
		return frame.Append(b, frame.Frame{Type: frame.TypeHeaders, StreamID: s.id, Payload: payload})
	})
	if err != nil {
		return s.sendError(err)
	}
	return nil
}

// Finish ends the stream with a status (servers): nil for OK, or the error,
// with trailers. It is a no-op on a stream that has already ended.
func (s *Stream) Finish(callErr error, trailers tether.Metadata) error {
	return s.FinishWith(nil, nil, callErr, trailers)
}

var errCallFinished = tether.Errorf(tether.CodeCanceled, "tether: call finished")

// FinishWith ends the stream like Finish, first sending headers (when not
// empty) and a last message (when not nil). When they fit the stream's
// credit, headers, message and END leave in one write: a unary response
// costs one syscall.
func (s *Stream) FinishWith(headers tether.Metadata, last []byte, callErr error, trailers tether.Metadata) error {
	var hdr []byte
	if len(headers) > 0 {
		var err error
		if hdr, err = s.encodeHeaders(headers); err != nil {
			// The call must still end: without the headers, and with
			// the reason if it was going to succeed.
			hdr, last = nil, nil
			if callErr == nil {
				callErr = err
			}
		}
	}
	var end *tetherv1.End
	size := len(okEnd)
	if callErr != nil || len(trailers) > 0 {
		end = &tetherv1.End{Status: wire.StatusFromError(callErr), Trailers: wire.MetadataToProto(trailers)}
		size = proto.Size(end)
	}
	if limit := s.c.sendHeaderLimit(); end != nil && size+metadataCost(end.GetTrailers()) > limit {
		// Keep the code; drop what does not fit, and say so where the
		// operator will see it.
		s.c.cfg.Logger.Warn("tether: status and trailers over the peer's header limit; message, details and trailers dropped",
			"peer", s.c.RemoteAddr(), "stream", s.id, "code", tether.Code(end.GetStatus().GetCode()).String(), "bytes", size+metadataCost(end.GetTrailers()), "limit", limit)
		end = &tetherv1.End{Status: &tetherv1.Status{Code: end.GetStatus().GetCode(), Message: "tether: status and trailers too large; details dropped"}}
		if size = proto.Size(end); size > limit {
			end.Status.Message = "" // the code alone: a few bytes
			size = proto.Size(end)
		}
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	s.mu.Lock()
	if s.finished || s.sendErr != nil {
		s.mu.Unlock()
		return nil
	}
	inline := last == nil || len(last) <= frame.MaxPayload && len(last)+FrameOverhead <= s.sendCredit
	if last != nil && inline {
		s.sendCredit -= len(last) + FrameOverhead
	}
	s.mu.Unlock()
	if last != nil && len(last) > s.c.cfg.MaxMessageSize {
		return tether.Errorf(tether.CodeResourceExhausted, "tether: message of %d bytes exceeds the limit of %d", len(last), s.c.cfg.MaxMessageSize)
	}
	if !inline {
		// Too big for one write: headers and message first, with flow
		// control, then END.
		if hdr != nil {
			if err := s.writeHeaders(hdr); err != nil {
				return err
			}
			hdr = nil
		}
		s.sendMu.Unlock()
		err := s.SendMsg(s.ctx, last)
		s.sendMu.Lock()
		if err != nil {
			return err
		}
		last = nil
	}
	s.mu.Lock()
	s.halfClosed = true
	s.mu.Unlock()
	// The stream's context may be canceled already (deadline); END must
	// still go out, so only the stream ending or the connection stop it.
	err := s.c.write(context.Background(), s.done, func(b []byte) []byte {
		if hdr != nil {
			b = frame.Append(b, frame.Frame{Type: frame.TypeHeaders, StreamID: s.id, Payload: hdr})
		}
		if last != nil {
			b = frame.AppendHeader(b, frame.TypeMessage, 0, s.id, len(last))
			b = append(b, last...)
		}
		if s.c.role == RoleServer {
			// Before END can be read: the client may open its next
			// stream at once.
			s.c.releaseRunning(s)
			// Out of the table before END can be read too: once the
			// client has read END, what it sends for the stream is for
			// an ended stream, ignored without flow-control accounting
			// (PROTOCOL.md section 4). terminate, below, would come too
			// late if this goroutine ran late.
			s.c.unlink(s)
		}
		start := len(b)
		b = frame.AppendHeader(b, frame.TypeEnd, 0, s.id, size)
		if end == nil {
			return append(b, okEnd...)
		}
		var merr error
		if b, merr = marshalOpts.MarshalAppend(b, end); merr != nil {
			// Trailers that cannot be encoded (invalid UTF-8): the call
			// must still end, so send the status alone and say why.
			code := end.GetStatus().GetCode()
			if code == tetherv1.Code_CODE_OK {
				code = tetherv1.Code_CODE_INTERNAL
			}
			fallback := &tetherv1.End{Status: &tetherv1.Status{Code: code, Message: "tether: response trailers could not be encoded: " + merr.Error()}}
			b = frame.AppendHeader(b[:start], frame.TypeEnd, 0, s.id, proto.Size(fallback))
			b, _ = marshalOpts.MarshalAppend(b, fallback)
		}
		return b
	})
	if tether.CodeOf(callErr) == tether.CodeOK {
		s.terminate(errCallFinished, false)
	} else {
		s.terminate(callErr, false)
	}
	if err == errStreamDone {
		return nil
	}
	return err
}

// Reset aborts the stream: the peer gets a RESET with err's code and
// message, local senders and receivers get err. No-op once finished.
func (s *Stream) Reset(err error) {
	if s.terminate(err, true) {
		s.c.sendReset(s.id, err, false)
	}
}

// terminate ends the stream locally with err. It reports whether this call
// ended it (so that the caller may tell the peer).
func (s *Stream) terminate(err error, local bool) bool {
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return false
	}
	s.finished = true
	if s.recvEnd == nil || s.recvEnd == io.EOF && s.c.role == RoleServer {
		s.recvEnd = err
		s.recvQ, s.assembly = recvQueue{}, nil
	}
	s.uncharge()
	if s.sendErr == nil {
		s.sendErr = err
	}
	if !s.headersSet {
		s.headersSet = true
		s.closeHeadersLocked()
	}
	s.mu.Unlock()
	close(s.done)
	if s.cancelCtx != nil {
		s.cancelCtx(err)
	}
	s.c.remove(s)
	notify(s.recvNotify)
	notify(s.sendNotify)
	return true
}

// finish ends a stream whose END arrived: queued messages stay readable.
func (s *Stream) finish() {
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	s.finished = true
	s.uncharge()
	if !s.headersSet {
		s.headersSet = true
		s.closeHeadersLocked()
	}
	s.mu.Unlock()
	close(s.done)
	s.c.remove(s)
	notify(s.recvNotify)
	notify(s.sendNotify)
}
