package mux

// A stream's queue of received frames. It has no lock of its own: it is
// part of the stream's state under Stream.mu. The reader goroutine pushes
// (handleMessage, stream_handle.go); the receiving goroutine pops (RecvMsg,
// stream_recv.go); terminate drops it.

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
//
// Its first ring is the two slots in the queue itself (small), so that a
// stream that never holds more than two frames at once (a unary call's
// request or response, a ping-pong stream) allocates no ring. A recvQueue
// is therefore never copied once it has been pushed to (buf may point into
// small); it is only reset to its zero value.
type recvQueue struct {
	buf   []chunk
	head  int // index of the oldest frame
	n     int // frames queued
	small [minQueueSlots]chunk
}

const (
	// minQueueSlots is the size of a queue's first ring, held in the
	// queue itself.
	minQueueSlots = 2
	// maxIdleQueueSlots: a ring larger than this is dropped when it runs
	// empty, so that a stream holds a burst's slots only while the burst is
	// queued.
	maxIdleQueueSlots = 64
)

func (q *recvQueue) len() int { return q.n }

// slots is the ring's size (what the queue holds in memory).
func (q *recvQueue) slots() int { return len(q.buf) }

func (q *recvQueue) push(c chunk) {
	if q.buf == nil {
		q.buf = q.small[:]
	}
	if q.n == len(q.buf) {
		buf := make([]chunk, 2*len(q.buf))
		k := copy(buf, q.buf[q.head:])
		copy(buf[k:], q.buf[:q.head])
		if &q.buf[0] == &q.small[0] {
			// The frames moved out: small must not keep them (and
			// the buffers they point into) alive.
			q.small = [minQueueSlots]chunk{}
		}
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

// messageRest returns the bytes of the queued fragments that continue the
// message being assembled, up to its last fragment, and whether that last
// fragment is queued (whole).
func (q *recvQueue) messageRest() (n int, whole bool) {
	for i := range q.n {
		c := &q.buf[(q.head+i)&(len(q.buf)-1)]
		n += len(c.b)
		if !c.more {
			return n, true
		}
	}
	return n, false
}
