package mux

import (
	"math/bits"
	"sync"
)

// A stream's queue of received frames. It has no lock of its own: it is
// part of the stream's state under Stream.mu. The reader goroutine pushes
// (handleMessage, stream_handle.go); the receiving goroutine pops (RecvMsg,
// stream_recv.go); terminate empties it (reset).

// chunk is one queued frame, as push takes it and pop returns it: its
// payload, whether more fragments of its message follow, and the slab (or
// pooled buffer of its own, bigbuf.go) b points into, if any.
type chunk struct {
	b    []byte
	more bool
	slab *slab // b points into it, or nil
}

// qslot is one slot of a recvQueue's ring: a frame (run == 0), or a run of
// small frames that pushSmall copied one after another into one slab, each
// behind a runHeader-byte header (its payload's length, and runMore when
// more fragments of its message follow). A stream of small messages thus
// takes a slot per slab (16 KiB) rather than one per frame: the reader
// writes the frame's length next to its bytes, in memory it writes anyway,
// instead of a 40-byte slot of pointers in a ring that the consumer empties
// on the other CPU and the garbage collector must scan (a 1 MiB window of
// 64-byte frames held a 16,384-slot ring, 640 KiB).
type qslot struct {
	b    []byte // the frame; nil for a run
	slab *slab  // the buffer b points into, or the run's slab
	off  int32  // a run: where in slab.buf the header of its next frame is
	run  int16  // frames left in the run (at most slabSize/runHeader); 0: the slot is a frame of its own
	more bool   // a frame of its own: more fragments of its message follow
}

const (
	// runHeader is the size of the header in front of each frame of a
	// run: a little-endian uint16 of the payload's length, with runMore.
	runHeader = 2
	runMore   = 1 << 15
	// maxSmall is the largest payload copied into a slab (pushSmall),
	// 4,094 bytes: four fit, with their headers. Larger ones are copied
	// on their own (copyInLocked). It must fit a run header's length.
	maxSmall = slabSize/4 - runHeader
)

var (
	_ [runMore - maxSmall - 1]struct{}     // maxSmall < runMore
	_ [1<<15 - slabSize/runHeader]struct{} // a run's frames fit qslot.run
)

// recvQueue is a stream's queue of received frames: a ring of slots whose
// count is a power of two, grown (doubled) only when it is full. Every
// queued frame holds at least FrameOverhead of the peer's credit, so the
// queue never holds more than window/FrameOverhead frames. Small frames
// share slots (qslot): a slot of its own goes only to a frame of at least
// 2 KiB (one that keeps half or more of its read buffer, of 4 KiB at
// least, or one over maxSmall) or to a stream's first message, and a run
// starts only after such a slot or when its slab is full (12,289 bytes
// used at least). So the slots in use never exceed 2*window/2064 +
// window/12289 + 3, whatever the peer sends and the consumer's pace
// against the sender's (TestRecvQueueSlotsAgainstAdversary), and the
// ring's size never exceeds that rounded up to a power of two. (A slice
// reset only when it ran empty grew by a slot per message under a
// consumer slightly slower than its sender.)
//
// Its first ring is the two slots in the queue itself (small), so that a
// stream that never holds more than two slots at once (a unary call's
// request or response, a ping-pong stream, a stream of small messages
// within two slabs) allocates no ring. A recvQueue is therefore never
// copied once it has been pushed to (buf may point into small); it is only
// emptied with reset.
//
// Larger rings come from ringPools and go back there when the queue drops
// them (it runs empty with more than maxIdleQueueSlots, it grows into a
// larger one, or the stream ends): a stream whose consumer keeps up with a
// fast sender runs its queue empty after nearly every batch the reader
// delivers, and regrew its ring by doubling from two slots after each
// (9% of the bytes a client allocated on a stream of 1 KiB messages).
type recvQueue struct {
	buf   []qslot
	ring  *[]qslot // the pooled ring buf is; nil while buf is small or nil
	head  int      // index of the oldest slot
	used  int      // slots in use
	n     int      // frames queued
	small [minQueueSlots]qslot
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
	// pooled (a window grown to 4 MiB needs 1<<13 at most); larger ones,
	// which only windows of tens of MiB need, are not kept.
	maxPooledRingShift = 16
)

// ringPools[k] holds empty rings (every slot zero) of 1<<k slots. Like
// every sync.Pool they are emptied by the garbage collector, so an idle
// process keeps none.
var ringPools [maxPooledRingShift + 1]sync.Pool

// getRing returns an empty ring of n slots, n a power of two.
func getRing(n int) *[]qslot {
	if k := bits.TrailingZeros(uint(n)); k <= maxPooledRingShift {
		if v := ringPools[k].Get(); v != nil {
			return v.(*[]qslot)
		}
	}
	r := make([]qslot, n)
	return &r
}

// putRing returns a ring whose slots are all zero to its pool.
func putRing(r *[]qslot) {
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
	q.n, q.used = 0, 0
	q.small = [minQueueSlots]qslot{}
}

// len is the number of frames queued.
func (q *recvQueue) len() int { return q.n }

// slots is the ring's size (what the queue holds in memory).
func (q *recvQueue) slots() int { return len(q.buf) }

// push queues a frame in a slot of its own.
func (q *recvQueue) push(c chunk) {
	q.pushSlot(qslot{b: c.b, slab: c.slab, more: c.more})
	q.n++
}

// pushSmall copies a small payload (at most maxSmall bytes) into sl, the
// stream's current slab, which has room for runHeader+len(p) more bytes
// (Stream.slabForLocked), and queues it: in the run at the queue's tail
// when that run is sl's, else in a new one. The frames of a slab's run lie
// one after another: only pushSmall appends to a slab, and a run stays the
// tail until a frame of another slab or one of its own is queued.
func (q *recvQueue) pushSmall(sl *slab, p []byte, more bool) {
	off := len(sl.buf)
	h := uint16(len(p))
	if more {
		h |= runMore
	}
	sl.buf = append(sl.buf, byte(h), byte(h>>8))
	sl.buf = append(sl.buf, p...)
	sl.refs++
	q.n++
	if q.used > 0 {
		if t := &q.buf[(q.head+q.used-1)&(len(q.buf)-1)]; t.run > 0 && t.slab == sl {
			t.run++
			return
		}
	}
	q.pushSlot(qslot{slab: sl, off: int32(off), run: 1})
}

func (q *recvQueue) pushSlot(t qslot) {
	if q.buf == nil {
		q.buf = q.small[:]
	}
	if q.used == len(q.buf) {
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
			q.small = [minQueueSlots]qslot{}
		}
		q.buf, q.ring, q.head = buf, ring, 0
	}
	q.buf[(q.head+q.used)&(len(q.buf)-1)] = t
	q.used++
}

// runFrame returns the frame of a run whose header is at off in sl, and
// the offset just past it.
func runFrame(sl *slab, off int) (chunk, int) {
	h := int(sl.buf[off]) | int(sl.buf[off+1])<<8
	start := off + runHeader
	end := start + h&^runMore
	return chunk{b: sl.buf[start:end:end], more: h&runMore != 0, slab: sl}, end
}

// pop takes the oldest frame; the queue is not empty.
func (q *recvQueue) pop() chunk {
	t := &q.buf[q.head]
	q.n--
	var c chunk
	if t.run > 0 {
		var next int
		c, next = runFrame(t.slab, int(t.off))
		if t.run--; t.run > 0 {
			t.off = int32(next)
			return c
		}
	} else {
		c = chunk{b: t.b, more: t.more, slab: t.slab}
	}
	*t = qslot{}
	q.head = (q.head + 1) & (len(q.buf) - 1)
	q.used--
	if q.used == 0 {
		q.head = 0
		if len(q.buf) > maxIdleQueueSlots {
			q.dropRing()
		}
	}
	return c
}

// each calls f with each queued frame, oldest first, until f returns false.
func (q *recvQueue) each(f func(chunk) bool) {
	for i := range q.used {
		t := &q.buf[(q.head+i)&(len(q.buf)-1)]
		if t.run == 0 {
			if !f(chunk{b: t.b, more: t.more, slab: t.slab}) {
				return
			}
			continue
		}
		off := int(t.off)
		for range t.run {
			var c chunk
			c, off = runFrame(t.slab, off)
			if !f(c) {
				return
			}
		}
	}
}

// messageRest returns the bytes of the queued fragments that continue the
// message being assembled, up to its last fragment, and whether that last
// fragment is queued (whole).
func (q *recvQueue) messageRest() (n int, whole bool) {
	q.each(func(c chunk) bool {
		n += len(c.b)
		whole = !c.more
		return c.more
	})
	return n, whole
}
