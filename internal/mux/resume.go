package mux

// Resumable streams, as the engine sees them (docs/PROTOCOL.md,
// "Resumable streams").
//
// The engine knows only what happens on one connection: a resumable
// stream's receiver counts the messages it consumed (seq, from a base the
// layer above sets with SetSeq) and acknowledges them in WINDOW frames of
// 12 bytes (frame.AppendWindowAck), and its sender hears of the
// acknowledgements (OnAck). Replay buffers, tokens and re-attaching live in
// the server and client packages. Plain streams skip all of this: their
// WINDOW frames and costs are unchanged.
//
// Locks: mu, as in stream_recv.go. The OnAck callback runs on the reader
// goroutine with no lock held and must not block.

import (
	"errors"
	"time"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// Resumable reports whether the stream's OPEN carried Open.resume.
func (s *Stream) Resumable() bool { return s.resumable }

// SetSeq sets the sequence number of the last message consumed before this
// stream: the count RecvMsg continues from, and what it acknowledges. Call
// it before the first RecvMsg.
func (s *Stream) SetSeq(n uint64) {
	s.mu.Lock()
	s.seq, s.ackSent = n, n
	s.mu.Unlock()
}

// OnAck sets the function called with the sequence number of the last
// message the peer has consumed, each time it grows (and at once if an
// acknowledgement has arrived already). fn runs on the connection's reader
// goroutine and must not block.
func (s *Stream) OnAck(fn func(seq uint64)) {
	s.mu.Lock()
	s.ackFn = fn
	seq := s.peerAck
	s.mu.Unlock()
	if seq > 0 {
		fn(seq)
	}
}

// ResumeAck returns the server's answer to a re-attaching OPEN
// (Headers.resumed), once Header has returned; nil when there was none.
func (s *Stream) ResumeAck() *tetherv1.ResumeAck {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resumeAck
}

// SendResumeHeaders sends a HEADERS frame answering a re-attaching OPEN
// (servers): the application's response headers md, if any, and ack.
func (s *Stream) SendResumeHeaders(md tether.Metadata, ack *tetherv1.ResumeAck) error {
	payload, err := s.encodeHeadersWith(md, ack)
	if err != nil {
		return err
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.writeHeaders(payload)
}

// PeerResumeGrace is Config.PeerResumeGrace: 0 when the server did not
// announce resumable streams.
func (c *Conn) PeerResumeGrace() time.Duration { return c.cfg.PeerResumeGrace }

// PeerResumeCursors is Config.PeerResumeCursors: 0, 1 or 2.
func (c *Conn) PeerResumeCursors() int { return c.cfg.PeerResumeCursors }

// NeverSent reports whether the stream has ended because its connection
// closed before its OPEN was written to the socket: the peer cannot have
// seen it.
func (s *Stream) NeverSent() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.finished && errors.Is(s.sendErr, ErrUnprocessed) && s.id > s.c.flushedOpen.Load()
}

// Done is closed when the stream has finished.
func (s *Stream) Done() <-chan struct{} { return s.doneChan() }

// ConnClosed reports whether the stream's connection has closed: a stream
// that failed because of that is lost, not ended by its peer.
func (s *Stream) ConnClosed() bool { return s.c.isClosed() }

// ackLocked returns the sequence number to acknowledge with a grant of n
// bytes, or 0 for a plain WINDOW frame. s.mu is held.
func (s *Stream) ackLocked(n int) uint64 {
	if !s.resumable || n == 0 || s.seq == 0 {
		return 0
	}
	s.ackSent = s.seq
	return s.seq
}

// ackIdleLocked returns the credit and sequence number to acknowledge when
// the receiver is about to wait for more: everything consumed and not yet
// acknowledged, so that a sender whose replay buffer is full of it can go
// on. s.mu is held.
func (s *Stream) ackIdleLocked() (int, uint64) {
	if !s.resumable || s.seq <= s.ackSent || s.recvEnd != nil || s.finished {
		return 0, 0
	}
	n := s.unacked
	s.unacked = 0
	s.recvWindow += n
	s.ackSent = s.seq
	return n, s.seq
}

// handleWindowAck is handleWindow for a WINDOW frame that acknowledges
// messages up to seq. It is a protocol error on a stream that is not
// resumable; one that neither acknowledges anything new nor grants useful
// credit counts as an idle frame.
func (s *Stream) handleWindowAck(n uint32, seq uint64) error {
	if !s.resumable {
		return protoErrf("stream %d: acknowledgement on a stream that is not resumable", s.id)
	}
	s.mu.Lock()
	advanced := seq > s.peerAck
	if advanced {
		s.peerAck = seq
	}
	fn := s.ackFn
	s.sendCredit += int(n)
	s.sendPeak = max(s.sendPeak, s.sendCredit)
	over := s.sendCredit > 1<<31-1
	s.mu.Unlock()
	if over {
		return protoErrf("stream %d: flow-control window over 2^31-1", s.id)
	}
	if !advanced && n < minUsefulWindow {
		if err := s.c.idleFrame("empty frames"); err != nil {
			return err
		}
	}
	if advanced && fn != nil {
		fn(seq)
	}
	notify(s.sendNotify)
	return nil
}

// TryRecvMsg is RecvMsg when a whole message is queued: it returns it
// and true; otherwise it returns at once with false (the end of the stream
// is left for RecvMsg), after acknowledging what was consumed, as RecvMsg
// does before it waits. Only the receiving goroutine calls it, as RecvMsg.
func (s *Stream) TryRecvMsg() ([]byte, bool, error) {
	s.mu.Lock()
	if _, whole := s.recvQ.messageRest(); !whole {
		n, seq := s.ackIdleLocked()
		s.mu.Unlock()
		s.grant(n, seq)
		return nil, false, nil
	}
	s.mu.Unlock()
	msg, err := s.RecvMsg() // returns without waiting: a whole message is queued
	return msg, true, err
}

// RecvReady returns a channel that is ready when a frame or the end may
// have arrived since RecvMsg or TryRecvMsg last looked. Only the receiving
// goroutine waits on it, and only when it is not in RecvMsg.
func (s *Stream) RecvReady() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recvNotify == nil {
		// Made now: what arrived since TryRecvMsg looked notified no
		// one. Ready at once, the caller looks again (a wake-up too many
		// at most).
		notify(s.recvWakeLocked())
	}
	return s.recvNotify
}

// Seq returns the sequence number of the last message RecvMsg returned (the
// base SetSeq gave plus the messages consumed since). Once the stream has
// finished it no longer changes.
func (s *Stream) Seq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq
}
