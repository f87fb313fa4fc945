package mux

import (
	"math/bits"
	"sync"
)

// A stream's queue of received frames. It has no lock of its own: it is
// part of the stream's state under Stream.mu. The reader goroutine pushes
// (handleMessage, stream_handle.go); the receiving goroutine pops (RecvMsg,
// stream_recv.go); terminate empties it (reset).

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
// small); it is only emptied with reset.
//
// Larger rings come from ringPools and go back there when the queue drops
// them (it runs empty with more than maxIdleQueueSlots, it grows into a
// larger one, or the stream ends): a stream whose consumer keeps up with a
// fast sender runs its queue empty after nearly every batch the reader
// delivers, and regrew its ring by doubling from two slots after each
// (9% of the bytes a client allocated on a stream of 1 KiB messages).
type recvQueue struct {
	buf   []chunk
	ring  *[]chunk // the pooled ring buf is; nil while buf is small or nil
	head  int      // index of the oldest frame
	n     int      // frames queued
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
	// maxPooledRingShift: rings of up to 1<<maxPooledRingShift slots are
	// pooled (a 256 KiB window of 16-byte frames needs 1<<14); larger
	// ones, which only windows of several MiB need, are not kept.
	maxPooledRingShift = 16
)

// ringPools[k] holds empty rings (every slot zero) of 1<<k slots. Like
// every sync.Pool they are emptied by the garbage collector, so an idle
// process keeps none.
var ringPools [maxPooledRingShift + 1]sync.Pool

// getRing returns an empty ring of n slots, n a power of two.
func getRing(n int) *[]chunk {
	if k := bits.TrailingZeros(uint(n)); k <= maxPooledRingShift {
		if v := ringPools[k].Get(); v != nil {
			return v.(*[]chunk)
		}
	}
	r := make([]chunk, n)
	return &r
}

// putRing returns a ring whose slots are all zero to its pool.
func putRing(r *[]chunk) {
	if k := bits.TrailingZeros(uint(len(*r))); k <= maxPooledRingShift {
		ringPools[k].Put(r)
	}
}

// dropRing gives the queue's pooled ring back, if it has one; the queue is
// empty (its slots are zero).
func (q *recvQueue) dropRing() {
	if q.ring != nil {
		putRing(q.ring)
	}
	q.buf, q.ring, q.head = nil, nil, 0
}

// reset empties the queue, dropping what it holds (the stream ended), and
// gives its ring back.
func (q *recvQueue) reset() {
	if q.ring != nil {
		clear(*q.ring)
	}
	q.dropRing()
	q.n = 0
	q.small = [minQueueSlots]chunk{}
}

func (q *recvQueue) len() int { return q.n }

// slots is the ring's size (what the queue holds in memory).
func (q *recvQueue) slots() int { return len(q.buf) }

func (q *recvQueue) push(c chunk) {
	if q.buf == nil {
		q.buf = q.small[:]
	}
	if q.n == len(q.buf) {
		ring := getRing(2 * len(q.buf))
		buf := *ring
		k := copy(buf, q.buf[q.head:])
		copy(buf[k:], q.buf[:q.head])
		// The frames moved out: the old ring must not keep them (and the
		// buffers they point into) alive.
		if q.ring != nil {
			clear(*q.ring)
			putRing(q.ring)
		} else {
			q.small = [minQueueSlots]chunk{}
		}
		q.buf, q.ring, q.head = buf, ring, 0
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
			q.dropRing()
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
