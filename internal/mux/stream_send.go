package mux

// The sending side.
//
// One sending goroutine at a time (a client's caller, a server's handler);
// sendMu serializes SendMsg, SendProto, CloseSend, SendHeaders and
// FinishWith, so that a message's fragments never interleave with another
// frame of the stream. Credit (sendCredit) is under mu: a sender takes it
// (takeCredit, waitCredit) and gives back what it did not use; the reader
// goroutine adds to it (handleWindow) and wakes sendNotify, which the first
// sender to wait makes (senderWakeLocked), both under mu. Frames are
// queued with Conn.write, which may wait for space in the writer's queue.
//
// Locks: sendMu, then mu (released before writing), then wmu (Conn.write).

import (
	"context"
	"errors"

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
// leaves in one write rather than as a frame and then a sliver.
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
		credit, err := s.waitCredit(ctx, min(len(msg), minFragment)+FrameOverhead)
		if err != nil {
			return s.abandonMessage(started, err)
		}
		rest, left := msg, credit
		err = s.c.write(ctx, s.done, func(b []byte) []byte {
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
		if size > s.c.cfg.MaxMessageSize {
			return tether.Errorf(tether.CodeResourceExhausted, "tether: message of %d bytes exceeds the limit of %d", size, s.c.cfg.MaxMessageSize)
		}
		// Marshalled into a pooled buffer (bigbuf.go): SendMsg copies
		// it into the writer's queue.
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
		err = s.SendMsg(ctx, b)
		if sl != nil && cap(b) == cap(sl.buf) {
			putBig(sl)
		}
		return err
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	cost := size + FrameOverhead
	if err := s.takeCredit(ctx, cost); err != nil {
		return err
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
	err := s.c.queue(ctx, s.done, alone, func(b []byte) []byte {
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
		wake := s.senderWakeLocked()
		s.mu.Unlock()
		select {
		case <-wake:
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
		wake := s.senderWakeLocked()
		s.mu.Unlock()
		select {
		case <-wake:
		case <-s.done:
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
	err := s.c.write(s.Context(), s.done, func(b []byte) []byte {
		return frame.Append(b, frame.Frame{Type: frame.TypeHeaders, StreamID: s.id, Payload: payload})
	})
	if err != nil {
		return s.sendError(err)
	}
	return nil
}
