package mux

// The sending side.
//
// One sending goroutine at a time (a client's caller, a server's handler);
// sendMu serializes SendMsg, SendProto, CloseSend, SendHeaders and
// FinishWith, so that a message's fragments never interleave with another
// frame of the stream. Credit (sendCredit) is under mu: a sender takes it
// (takeFrameCredit, waitCredit) and gives back what it did not use; the reader
// goroutine adds to it (handleWindow) and wakes sendNotify, which the first
// sender to wait makes (senderWakeLocked), both under mu. Frames are
// queued with Conn.write, which may wait for space in the writer's queue.
//
// Locks: sendMu, then mu (released before writing), then wmu (Conn.write).

import (
	"context"
	"errors"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
	"github.com/tetherrpc/tether/internal/wire"
)

// SendMsg sends one message, in fragments of at most frame.MaxPayload bytes,
// waiting for flow-control credit. It fails with resource_exhausted for a
// message over MaxMessageSize; with the stream's error once the stream has
// ended (io.EOF after a clean END on a client); and with ctx's error.
//
// The fragments that the credit in hand covers are queued together (up to
// batchBytes of them at a time), so that a message a little over one frame
// leaves in one write rather than as a frame and then a sliver. A message
// that costs little next to the peer's window waits for credit for all of
// it (wholeWantLocked), so that it is not cut where the credit ran out.
func (s *Stream) SendMsg(ctx context.Context, msg []byte) error {
	if len(msg) > s.c.cfg.MaxMessageSize {
		return tether.Errorf(tether.CodeResourceExhausted, "tether: message of %d bytes exceeds the limit of %d", len(msg), s.c.cfg.MaxMessageSize)
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.sendMsgLocked(ctx, msg)
}

// sendMsgLocked is SendMsg; the caller holds sendMu.
func (s *Stream) sendMsgLocked(ctx context.Context, msg []byte) error {
	first := true
	started := false // a fragment with MORE has been queued
	for first || len(msg) > 0 {
		first = false
		credit, err := s.waitCredit(ctx, len(msg))
		if err != nil {
			return s.abandonMessage(started, err)
		}
		rest, left := msg, credit
		err = s.c.write(ctx, s, func(b []byte) []byte {
			for queued := 0; ; {
				n := min(len(rest), frame.MaxPayload, left-FrameOverhead)
				var flags uint8
				if n < len(rest) {
					flags = frame.FlagMore
				}
				b = frame.AppendHeader(b, frame.TypeMessage, flags, s.id, n)
				b = append(b, rest[:n]...)
				rest, left, queued = rest[n:], left-(n+FrameOverhead), queued+n
				if len(rest) == 0 || left-FrameOverhead < min(len(rest), minFragment) || queued >= batchBytes {
					return b
				}
			}
		})
		if err != nil {
			left = credit // nothing was queued
		}
		// Credit not used goes back.
		s.mu.Lock()
		s.sendCredit += left
		s.mu.Unlock()
		if err != nil {
			return s.abandonMessage(started, s.sendError(err))
		}
		started = true
		msg = rest
	}
	return nil
}

// minFragment is the smallest fragment SendMsg sends of a message that has
// more bytes left: it waits for credit for that much rather than sending
// slivers.
const minFragment = 16 << 10

// maxWholeWait bounds the cost of a message (or of what is left of one)
// for which a sender waits until its credit covers all of it
// (wholeWantLocked).
const maxWholeWait = maxWriteMessage

// messageCost is the credit n bytes of message cost when sent in frames of
// frame.MaxPayload bytes.
func messageCost(n int) int {
	return n + max(1, (n+frame.MaxPayload-1)/frame.MaxPayload)*FrameOverhead
}

// wholeWantLocked returns the credit a sender waits for before it sends the
// rest (n bytes) of a message. That is the whole rest when it costs at most
// maxWholeWait and at most half the most credit the stream has held at once
// (creditSureLocked):
// otherwise a message a little larger than the credit left in the window
// (a 64 KiB payload costs 65,572 bytes; 3.998 of them fit the server's
// default 256 KiB window) went out as a large fragment and a sliver that waited for
// the next WINDOW, in another WebSocket message after the next message's
// large fragment, so the receiver could complete each message only one
// message late. Half the peak is what a receiver can always give back: one
// that grants consumed credit once a quarter of its window is consumed, as
// tether's do (docs/PROTOCOL.md, section 7), never holds back more. Larger
// messages wait for min(n, minFragment) plus a frame's overhead, as before.
// s.mu is held.
func (s *Stream) wholeWantLocked(n int) int {
	if cost := messageCost(n); cost <= maxWholeWait && s.creditSureLocked(cost) {
		return cost
	}
	return min(n, minFragment) + FrameOverhead
}

// creditSureLocked reports whether a sender may wait for cost credit at
// once: at most half the most credit the stream has held (sendPeak, raised
// by every WINDOW: the largest window the peer has granted), which a
// receiver that grants consumed credit once a quarter of its window is
// consumed always gives back; a Go receiver that shrinks its window keeps
// that much (shrinkFloorLocked). s.mu is held.
func (s *Stream) creditSureLocked(cost int) bool { return 2*cost <= s.sendPeak }

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

// SendProto sends one protobuf message. A message that fits one frame, or
// that the credit in hand covers whole (wholeWantLocked), is marshalled
// straight into the writer's queue, saving an allocation and a copy; a
// larger one is marshalled into a pooled buffer and goes through SendMsg.
// A one-frame message whose cost the credit in hand does not cover, and
// that is more than half the most credit the stream has held, goes the
// way of large ones too (takeFrameCredit): in fragments as credit comes.
func (s *Stream) SendProto(ctx context.Context, m proto.Message) error {
	size := proto.Size(m)
	// One frame costs size+FrameOverhead of credit at once: a message
	// whose cost passes the smallest window a peer may have (InitialWindow)
	// goes the way of large ones, which fragments it as credit comes.
	if size > frame.MaxPayload || size > InitialWindow-FrameOverhead || size > s.c.cfg.MaxMessageSize {
		if size > s.c.cfg.MaxMessageSize {
			return tether.Errorf(tether.CodeResourceExhausted, "tether: message of %d bytes exceeds the limit of %d", size, s.c.cfg.MaxMessageSize)
		}
		return s.sendLargeProto(ctx, m, size)
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	cost := size + FrameOverhead
	if ok, err := s.takeFrameCredit(ctx, cost); err != nil {
		return err
	} else if !ok {
		return s.sendLargeProtoLocked(ctx, m, size)
	}
	// A message that answers one the peer sent (a bidi ping-pong, a
	// server stream's first message) is written by this goroutine when the
	// stream is alone on its connection and the queue is empty, as a lone
	// unary call's frames are (writeAlone): the peer is waiting for it, and
	// waking the writer goroutine would add a hand-off to every exchange.
	// Messages sent back to back (a stream's second and later) go to the
	// writer goroutine, which batches them.
	var alone *uint32
	if s.answering.Load() {
		s.answering.Store(false)
		alone = &s.id
	}
	var merr error
	err := s.c.queue(ctx, s, alone, func(b []byte) []byte {
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
	back := 0
	if err != nil || merr != nil {
		back = cost // not sent: the credit goes back
	}
	return s.marshalled(m, back, err, merr)
}

// marshalled ends a send whose frames were marshalled from m straight into
// the writer's queue: back, the credit not used, returns to the stream, and
// the error is the marshal's (internal) or the queue's (err).
func (s *Stream) marshalled(m proto.Message, back int, err, merr error) error {
	if back > 0 {
		s.mu.Lock()
		s.sendCredit += back
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

// sendLargeProto sends m, of size bytes: more than one frame, or one frame
// that the credit cannot surely cover whole (takeFrameCredit). When it
// costs little enough to wait for credit for all of it (wholeWantLocked),
// it is marshalled straight into the writer's queue (marshalFragments);
// otherwise into a pooled buffer (bigbuf.go), which SendMsg copies into the
// queue as credit comes.
func (s *Stream) sendLargeProto(ctx context.Context, m proto.Message, size int) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.sendLargeProtoLocked(ctx, m, size)
}

// sendLargeProtoLocked is sendLargeProto with sendMu held.
func (s *Stream) sendLargeProtoLocked(ctx context.Context, m proto.Message, size int) error {
	if cost := messageCost(size); cost <= maxWholeWait {
		credit, err := s.waitCredit(ctx, size)
		if err != nil {
			return err
		}
		if credit >= cost {
			var merr error
			err := s.c.write(ctx, s, func(b []byte) []byte {
				out, e := s.marshalFragments(b, m, size)
				merr = e
				return out
			})
			left := credit - cost
			if err != nil || merr != nil {
				left = credit // not sent: the credit goes back
			}
			return s.marshalled(m, left, err, merr)
		}
		// Too little credit to send it whole, and the window is too
		// small to wait for that much: fragments as credit comes.
		s.mu.Lock()
		s.sendCredit += credit
		s.mu.Unlock()
	}
	sl := getBig(size)
	var buf []byte
	if sl != nil {
		buf = sl.buf
	}
	b, err := marshalOpts.MarshalAppend(buf, m)
	if err == nil && len(b) != size {
		err = errors.New("message changed while it was being sent")
	}
	if err != nil {
		return tether.Errorf(tether.CodeInternal, "tether: marshal %s: %v", m.ProtoReflect().Descriptor().FullName(), err)
	}
	err = s.sendMsgLocked(ctx, b)
	if sl != nil && cap(b) == cap(sl.buf) {
		putBig(sl)
	}
	return err
}

// marshalFragments appends m, of size bytes, to b as the MESSAGE frames of
// one message: it is marshalled once, after the first frame's header, and
// the bytes of each later fragment move up to make room for its header,
// from the last fragment back (for a 64 KiB payload, its 4-byte tail). On
// error it returns b unchanged.
func (s *Stream) marshalFragments(b []byte, m proto.Message, size int) ([]byte, error) {
	start := len(b)
	nfrag := (size + frame.MaxPayload - 1) / frame.MaxPayload
	b = slices.Grow(b, size+nfrag*frame.HeaderSize)
	flags := uint8(0)
	if nfrag > 1 {
		flags = frame.FlagMore
	}
	b = frame.AppendHeader(b, frame.TypeMessage, flags, s.id, min(size, frame.MaxPayload))
	body := len(b)
	out, err := marshalOpts.MarshalAppend(b, m)
	if err == nil && len(out)-body != size {
		err = errors.New("message changed while it was being sent")
	}
	if err != nil {
		return b[:start], err
	}
	out = out[:body+size+(nfrag-1)*frame.HeaderSize]
	for k := nfrag - 1; k >= 1; k-- {
		lo, hi := k*frame.MaxPayload, min(size, (k+1)*frame.MaxPayload)
		at := body + lo + k*frame.HeaderSize
		copy(out[at:], out[body+lo:body+hi])
		flags := uint8(0)
		if k < nfrag-1 {
			flags = frame.FlagMore
		}
		frame.AppendHeader(out[:at-frame.HeaderSize], frame.TypeMessage, flags, s.id, hi-lo)
	}
	return out, nil
}

// takeFrameCredit takes n credit for a message sent as one frame
// (SendProto), waiting for it only while it is at most half the most credit
// the stream has held at once (sendPeak): what a receiver certainly gives
// back, as for a whole message (wholeWantLocked). Otherwise, with less
// credit in hand, it takes nothing and reports false: the message goes
// out in fragments as credit comes (sendLargeProtoLocked). A receiver
// grants consumed credit once a quarter of its window is consumed, so with
// a window under about 85 KiB a sender that waited for a whole 64 KiB frame
// could wait for good while the receiver waited for a message (found by
// the twentieth pass's review).
func (s *Stream) takeFrameCredit(ctx context.Context, n int) (bool, error) {
	for {
		s.mu.Lock()
		if s.sendErr != nil {
			err := s.sendErr
			s.mu.Unlock()
			return false, err
		}
		if s.halfClosed {
			s.mu.Unlock()
			return false, tether.Errorf(tether.CodeInternal, "tether: send after close")
		}
		if s.sendCredit >= n {
			s.sendCredit -= n
			s.mu.Unlock()
			return true, nil
		}
		if !s.creditSureLocked(n) {
			s.mu.Unlock()
			return false, nil
		}
		wake, done := s.senderWakeLocked(), s.doneLocked()
		s.mu.Unlock()
		select {
		case <-wake:
		case <-done:
		case <-ctx.Done():
			return false, tether.AsError(ctx.Err())
		}
	}
}

// waitCredit waits until the credit available covers what the rest of a
// message, n bytes, needs first (wholeWantLocked) and takes all of it; the
// caller returns what it does not use.
func (s *Stream) waitCredit(ctx context.Context, n int) (int, error) {
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
		if s.sendCredit >= s.wholeWantLocked(n) {
			n := s.sendCredit
			s.sendCredit = 0
			s.mu.Unlock()
			return n, nil
		}
		wake, done := s.senderWakeLocked(), s.doneLocked()
		s.mu.Unlock()
		select {
		case <-wake:
		case <-done:
		case <-ctx.Done():
			return 0, tether.AsError(ctx.Err())
		}
	}
}

// senderWakeLocked returns the channel a sender waiting for credit waits on,
// making it on first use: most streams never wait for credit (a unary call's
// messages fit the initial window). s.mu is held, as it is wherever
// sendNotify is read, except on resumable streams, whose channel is made
// with the stream (Conn.Open, handleOpen) and never changes.
func (s *Stream) senderWakeLocked() chan struct{} {
	if s.sendNotify == nil {
		s.sendNotify = make(chan struct{}, 1)
	}
	return s.sendNotify
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
	err := s.c.write(ctx, s, func(b []byte) []byte {
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
	return s.encodeHeadersWith(md, nil)
}

func (s *Stream) encodeHeadersWith(md tether.Metadata, ack *tetherv1.ResumeAck) ([]byte, error) {
	entries := wire.MetadataToProto(md)
	payload, err := proto.Marshal(&tetherv1.Headers{Metadata: entries, Resumed: ack})
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
	err := s.c.write(s.Context(), s, func(b []byte) []byte {
		return frame.Append(b, frame.Frame{Type: frame.TypeHeaders, StreamID: s.id, Payload: payload})
	})
	if err != nil {
		return s.sendError(err)
	}
	return nil
}
