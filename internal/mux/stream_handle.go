package mux

// A stream's frames, as the reader goroutine delivers them: Conn.handle
// (reader.go) calls the handle methods, and nothing else does.
//
// They never block. They take the stream's mu briefly, queue what arrived
// (recvqueue.go; small payloads are copied into slabs, slab.go) and wake
// the receiver or the sender (notify). A peer's violation of the protocol
// is returned as an error (the reader then closes the connection); a
// stream's own limit resets only that stream (Reset, which queues a RESET
// with writeUrgent and never waits).
//
// Locks: mu, alone; ending the stream (finish, terminate) takes the
// connection's mu after releasing it.

import (
	"bytes"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
	"github.com/tetherrpc/tether/internal/wire"
)

// handleMessage queues a MESSAGE frame's payload. own, when not nil, is the
// pooled buffer the reader read a large payload into (readMessage): it is
// kept as the payload's copy, and c.adopted set; else the reader puts it back.
func (s *Stream) handleMessage(f frame.Frame, bufCap int, own *slab) error {
	cost := len(f.Payload) + FrameOverhead
	more := f.Flags&frame.FlagMore != 0
	s.mu.Lock()
	s.recvWindow -= cost
	if over := -s.recvWindow; over > 0 {
		// over is read under s.mu: the receiving goroutine grants credit
		// back (recvWindow) under it too.
		s.mu.Unlock()
		return protoErrf("stream %d: peer sent %d bytes beyond its flow-control window", s.id, over)
	}
	if 2*s.recvWindow <= s.c.cfg.StreamWindow+s.grown-s.deferredGrant {
		s.filled = true // the window, not the sender, may be what limits it (growLocked)
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
		if !s.resumable && s.recvQ.len() == 0 && (s.recvNotify != nil || s.c.readingFor.Load() == s) {
			// A whole message for a receiver that took every one
			// before and has waited for one (or reads for it): the
			// reader may step aside for the next (stepAside). A
			// resumable stream's receiver never reads for itself
			// (mayRead). Told by the reader alone: a flag the receiver
			// set on every wait cost bidi c=64 about a tenth of its
			// round trips (docs/benchmarks/HISTORY.md, eighteenth pass).
			s.fed = true
		}
		if !s.answering.Load() {
			s.answering.Store(true)
		}
	}
	payload := f.Payload
	var sl *slab
	queued := false // by pushSmall
	if own != nil {
		// Read into a buffer of its own: what copyInLocked makes of a
		// large payload, without the copy. A stream's first payload
		// (without Config.LendFirstMessage) is the application's to
		// keep (copyInLocked): its buffer never goes back to the pool.
		s.c.adopted = true
		if s.copiedFirst {
			own.refs = 1
			sl = own
		}
		s.copiedFirst = true
	} else if 2*len(payload) < bufCap || len(payload) >= minBig {
		// A small frame must not pin the large buffer it came in (flow
		// control counts only its own bytes), and the buffer is reused
		// for the next message. A large frame is copied into a pooled
		// buffer (bigbuf.go) too, so that the read buffer is reused:
		// a donated one is replaced by a new one, grown again by
		// doubling as the next message is read.
		switch {
		case s.smallLocked(len(payload)):
			s.recvQ.pushSmall(s.slabForLocked(runHeader+len(payload)), payload, more)
			queued = true
		case len(payload) == 0:
			payload = nil
			if !more {
				// A first message, empty: nothing of it to keep. (An
				// empty first fragment is not: the message's next
				// fragments are the caller's to keep.)
				s.copiedFirst = true
			}
		default:
			room := 0
			if more && s.partial == len(payload) {
				room = adoptRoom // a message's first fragment
			}
			payload, sl = s.copyInLocked(payload, room)
		}
	} else {
		s.c.donated = true // the frame keeps the buffer
	}
	if !queued {
		s.recvQ.push(chunk{b: payload, more: more, slab: sl})
	}
	if !s.headersSet { // a message before HEADERS: the headers are empty
		s.headersSet = true
		s.closeHeadersLocked()
	}
	recv := s.recvNotify
	s.mu.Unlock()
	notify(recv)
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
	recv := s.recvNotify
	s.mu.Unlock()
	notify(recv)
	return nil
}

func (s *Stream) handleWindow(n uint32) error {
	s.mu.Lock()
	s.sendCredit += int(n)
	s.sendPeak = max(s.sendPeak, s.sendCredit)
	over := s.sendCredit > 1<<31-1
	wake := s.sendNotify // nil until a sender waits (senderWakeLocked)
	s.mu.Unlock()
	if over {
		return protoErrf("stream %d: flow-control window over 2^31-1", s.id)
	}
	notify(wake)
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
		s.resumeAck = h.GetResumed()
	} else if s.resumeAck != nil && len(s.headers) == 0 {
		// A resumed stream's answer came first; the application's headers
		// follow when the handler sends them (PROTOCOL.md section 15).
		s.headers = wire.MetadataFromProto(h.GetMetadata())
	}
	s.mu.Unlock()
	s.markHeaders()
	return nil
}

func (s *Stream) markHeaders() {
	s.mu.Lock()
	if !s.headersSet {
		s.headersSet = true
		s.closeHeadersLocked()
	}
	s.mu.Unlock()
}

func (s *Stream) handleEnd(payload []byte) error {
	if s.midMessage {
		// As HALF_CLOSE: the call would end with its last message lost.
		return protoErrf("stream %d: END in the middle of a message", s.id)
	}
	var err error
	if bytes.Equal(payload, okEnd) || len(payload) == 0 {
		// Success, no trailers: nothing to decode or allocate.
	} else if cost, _ := headerCost(payload, endTrailersField); cost > s.c.cfg.MaxHeaderBytes {
		err = tether.Errorf(tether.CodeResourceExhausted, "tether: response trailers of %d bytes exceed the limit of %d", cost, s.c.cfg.MaxHeaderBytes)
	} else {
		end := new(tetherv1.End)
		if uerr := proto.Unmarshal(payload, end); uerr != nil {
			return protoErrf("stream %d: bad END: %v", s.id, uerr)
		}
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
