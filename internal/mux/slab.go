package mux

import "sync"

// A slab holds the small frames a stream has queued, copied out of the
// reader's message buffer one after another, each behind its length (a
// run: recvqueue.go, pushSmall), so that receiving a stream of small
// messages neither allocates nor takes a queue slot per message. Frames
// are consumed in order, so a slab is free again once its last frame has
// been taken and the application has called RecvMsg again: it then goes
// back to slabPool. A stream whose application waits on an empty queue
// holds no slab.
//
// The receiver's RecvMsg returns a frame that points into a slab; the slab
// counts it as a reference until the next RecvMsg, which is why RecvMsg's
// result is valid only until then (callers unmarshal it at once;
// proto.Unmarshal copies what it keeps).
type slab struct {
	buf  []byte
	refs int // queued chunks pointing into buf, plus the message RecvMsg returned last
}

// slabSize is the capacity of a pooled slab. A small frame (maxSmall bytes
// at most) that does not fit in a slab's free space starts a new slab;
// larger frames are copied on their own (copyInLocked).
const slabSize = 16 << 10

var slabPool = sync.Pool{New: func() any { return &slab{buf: make([]byte, 0, slabSize)} }}

// copyInLocked copies a payload that is not small (pushSmall copies
// those into the stream's slab) out of the reader's buffer, and returns the
// copy, and the pooled buffer it lives in (nil when it was allocated on its
// own). s.mu is held.
//
// Without Config.LendFirstMessage a stream's first payload is copied on
// its own, exactly, and its caller may keep the message past the next
// RecvMsg. With it (tether's client and server both set it) the first is
// treated as every later one: copiedFirst and gaveFirst are set when the
// stream is made (newStream). A large payload (minBig and more) after it
// is copied into a pooled buffer of its own (bigbuf.go) with room for at
// least room bytes more: the first fragment of a message a little over one
// frame then becomes the buffer the message is assembled in
// (assembleLocked).
func (s *Stream) copyInLocked(p []byte, room int) ([]byte, *slab) {
	if s.copiedFirst && len(p) >= minBig {
		// Within twice p, room or not (room is at most a quarter
		// of p, and a new buffer is rounded up by less than a page).
		if sl := getBigWithin(len(p)+min(room, len(p)/4), 2*len(p)); sl != nil {
			sl.buf = append(sl.buf, p...)
			sl.refs = 1
			return sl.buf, sl
		}
	}
	s.copiedFirst = true
	return append([]byte(nil), p...), nil
}

// smallLocked reports whether a payload of n bytes is copied into the
// stream's slab (pushSmall) rather than on its own (copyInLocked). s.mu is
// held.
func (s *Stream) smallLocked(n int) bool { return s.copiedFirst && n <= maxSmall }

// slabForLocked returns the stream's current slab, or a new one when it
// has no room for n more bytes; the full one it replaces lives on in the
// frames queued in it. s.mu is held.
func (s *Stream) slabForLocked(n int) *slab {
	sl := s.slab
	if sl == nil || cap(sl.buf)-len(sl.buf) < n {
		sl = slabPool.Get().(*slab)
		sl.buf, sl.refs = sl.buf[:0], 0
		s.slab = sl
	}
	return sl
}

// releaseLocked drops one reference to sl, taken by a chunk the receiver has
// finished with; the last one returns the slab to the pool. s.mu is held.
func (s *Stream) releaseLocked(sl *slab) {
	if sl == nil {
		return
	}
	sl.refs--
	if sl.refs > 0 {
		return
	}
	if s.slab == sl {
		s.slab = nil
	}
	if cap(sl.buf) > slabSize {
		putBig(sl) // a large frame's or message's own buffer (bigbuf.go)
		return
	}
	slabPool.Put(sl)
}
