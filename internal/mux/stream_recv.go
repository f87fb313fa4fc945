package mux

// The receiving side, as the application sees it.
//
// One receiving goroutine at a time (a client's caller, a server's
// handler) calls RecvMsg; Header and Trailer are safe from any goroutine.
// RecvMsg takes frames from the queue the reader goroutine fills
// (recvqueue.go), assembles fragments here rather than on the reader,
// charging the buffer to the connection's partialBytes (atomic), and
// grants credit back with WINDOW frames (grant: writeUrgent). It waits on
// recvNotify (made when it must wait: recvWakeLocked) with no lock held.
//
// Locks: mu; wmu (grant) only after mu is released.

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/frame"
)

// RecvMsg returns the next whole message. The message is valid until the
// next call of RecvMsg or ReleaseMsg (small messages share pooled memory,
// slab.go), except a stream's first message, which the caller may keep
// (unless Config.LendFirstMessage). At the end of the peer's messages
// it returns io.EOF (a half-close, or an END with status OK) or the call's
// error. Fragments are assembled here, in the receiving goroutine, and their
// credit is granted back as they are taken, so messages larger than the
// window flow. While it waits with the stream the connection's only one and
// no goroutine reading the connection, the receiver reads it itself
// (callerread_linux.go); a Reset from another goroutine or the connection's
// close ends that wait as they end any other.
func (s *Stream) RecvMsg() ([]byte, error) { return s.recv(nil, s.mayRead()) }

// mayRead reports whether s's receiver may read the connection itself while
// it waits (callerread_linux.go): on a stream that does not resume (a
// resumable stream's attachments change connections).
func (s *Stream) mayRead() bool { return !s.resumable }

// ReleaseMsg says that the caller is done with the message RecvMsg
// returned last: its memory may be reused at once, rather than at the next
// RecvMsg (which a unary call's handler never makes). RecvMsg's caller
// only.
func (s *Stream) ReleaseMsg() {
	s.mu.Lock()
	if s.held != nil {
		s.releaseLocked(s.held)
		s.held = nil
	}
	s.mu.Unlock()
}

// ErrWaitCanceled is RecvMsgCtx's error when its context ended while it
// waited for a message; the stream is as it was.
var ErrWaitCanceled = errors.New("tether: wait for a message canceled")

// RecvMsgCtx is RecvMsg that stops waiting when ctx ends, returning
// ErrWaitCanceled: for a caller that waits in it anyway, which can then
// reset the stream itself instead of watching ctx with a context.AfterFunc
// (three allocations per call). A message already queued is returned even
// if ctx has ended. Like RecvMsg, it may read the connection itself while
// it waits.
func (s *Stream) RecvMsgCtx(ctx context.Context) ([]byte, error) { return s.recv(ctx, s.mayRead()) }

// RecvReply is RecvMsgCtx for a client's unary call, whose caller waits for
// nothing but its reply and the stream's end: while the reply has not come,
// the stream is the connection's only one and no goroutine reads the
// connection, the caller reads it itself (callerread_linux.go) instead of
// being woken by a reader goroutine. RecvMsg does the same (on either side,
// on a stream that does not resume); its wait ends too when another
// goroutine resets the stream (Reset cuts it).
func (s *Stream) RecvReply(ctx context.Context) ([]byte, error) { return s.recv(ctx, true) }

// recv is RecvMsg, which also stops waiting when ctx ends (never if nil),
// and, with read, may read the connection itself (RecvReply).
func (s *Stream) recv(ctx context.Context, read bool) ([]byte, error) {
	var done <-chan struct{}
	if ctx != nil {
		done = ctx.Done()
	}
	if s.deferredGrant > 0 && !s.single {
		s.mu.Lock()
		n := s.takeDeferredLocked()
		seq := s.ackLocked(n)
		s.mu.Unlock()
		s.grant(n, seq)
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
			s.drained += len(ch.b) + FrameOverhead
			if s.resumable && !ch.more {
				s.seq++
			}
			grant := s.takeGrantLocked()
			seq := s.ackLocked(grant)
			if ch.more || s.assembly != nil {
				kept, err := s.assembleLocked(ch)
				if !kept {
					s.releaseLocked(ch.slab)
				}
				if err != nil {
					s.mu.Unlock()
					s.Reset(err)
					return nil, err
				}
			}
			if ch.more {
				s.mu.Unlock()
				s.grant(grant, seq)
				s.mu.Lock()
				continue
			}
			msg := ch.b
			if s.assembly != nil {
				msg = s.assembly
				s.assembly = nil
				s.uncharge()
				if sl := s.asmSlab; sl != nil {
					s.asmSlab = nil
					if s.gaveFirst { // else the first message, the caller's to keep (no LendFirstMessage)
						sl.refs = 1
						s.held = sl
					}
				}
			} else {
				s.held = ch.slab
			}
			s.gaveFirst = true
			s.mu.Unlock()
			s.grant(grant, seq)
			return msg, nil
		}
		if s.recvEnd != nil {
			err := s.recvEnd
			s.releaseGrowthLocked() // the queue is drained (finish kept the growth while it was not)
			s.mu.Unlock()
			return nil, err
		}
		if s.deferredGrant > 0 {
			// A procedure that takes one request (s.single) grants the
			// rest of its window only when it must wait for the request:
			// one that has arrived whole (a unary call's, nearly always)
			// needs no more credit, and a WINDOW would cost a write.
			n := s.takeDeferredLocked()
			seq := s.ackLocked(n)
			s.mu.Unlock()
			s.grant(n, seq)
			continue
		}
		// A resumable stream acknowledges what it consumed before it waits
		// for more: the sender's replay buffer may be full of it.
		n, seq := s.ackIdleLocked()
		n += s.growLocked()
		if read && s.c.parkState.Load() == 1 {
			read = false // once per receive: else it waits below
			s.mu.Unlock()
			s.grant(n, seq)
			s.c.readFor(s, ctx)
			continue
		}
		wake := s.recvWakeLocked()
		s.mu.Unlock()
		s.grant(n, seq)
		if done == nil { // RecvMsg: a plain receive, cheaper than a select
			<-wake
			continue
		}
		select {
		case <-wake:
		case <-done:
			return nil, ErrWaitCanceled
		}
	}
}

// recvWakeLocked returns recvNotify, making it on first use: a stream
// whose messages are queued before it reads them (a unary handler's
// request, nearly always) never needs one. Whoever queues a frame or ends
// the stream reads it under mu afterwards, so a receiver that made it
// after finding the queue empty hears of what comes next. s.mu is held.
func (s *Stream) recvWakeLocked() chan struct{} {
	if s.recvNotify == nil {
		s.recvNotify = make(chan struct{}, 1)
	}
	return s.recvNotify
}

// takeDeferredLocked takes the window a server stream defers until its
// handler reads (handleOpen): nothing once the stream has ended. s.mu is
// held.
func (s *Stream) takeDeferredLocked() int {
	n := s.deferredGrant
	s.deferredGrant = 0
	if s.recvEnd != nil || s.finished {
		n = 0
	}
	s.recvWindow += n
	return n
}

// assembleLocked appends a fragment to the message being assembled
// (ch.more: it is not the message's last), or keeps it (kept) as the
// buffer the message is assembled in. The buffer's growth is charged to the
// connection's budget for partial messages (Config.MaxPartialBytes); over
// it, the fragment is not taken, the partial message is dropped and
// resource_exhausted returned: the caller resets the stream.
//
// The buffer is sized once when it can be: for the last fragment, or when
// the rest of the message is already queued, it is made exactly as large as
// the message (one allocation, one copy of each fragment); otherwise it
// takes what is queued of the message and grows by doubling, never past
// MaxMessageSize (the reader has reset a stream whose message passes it).
// A message's first fragment in a pooled buffer of its own with room for
// the rest, all queued, is kept as the buffer (copyInLocked leaves
// adoptRoom after a first fragment): no copy of the first fragment, which
// is most of a message a little over one frame. s.mu is held.
func (s *Stream) assembleLocked(ch chunk) (kept bool, err error) {
	p := ch.b
	if s.assembly == nil && ch.more && ch.slab != nil && ch.slab.refs == 1 && cap(ch.slab.buf) > slabSize && len(p) > 0 && &p[0] == &ch.slab.buf[:1][0] {
		// Only when the buffer is within a page of the message, as
		// any other assembly buffer, and the budget holds it: else
		// the message is assembled below, in a buffer of its size.
		if rest, whole := s.recvQ.messageRest(); whole && len(p)+rest <= cap(p) && cap(p) <= pageUp(len(p)+rest) && s.tryChargeLocked(cap(p)) {
			s.assembly, s.assemblyCap, s.asmSlab = p, cap(p), ch.slab
			return true, nil
		}
	}
	need := len(s.assembly) + len(p)
	if need > cap(s.assembly) {
		size := need
		if ch.more {
			rest, whole := s.recvQ.messageRest()
			size += rest
			if !whole {
				size = max(size, min(2*cap(s.assembly), s.c.cfg.MaxMessageSize))
			}
			size = max(min(size, s.c.cfg.MaxMessageSize), need)
		}
		var sl *slab
		if size >= minBig {
			// Within a page of the message: the budget is charged
			// the buffer's capacity, and a pooled buffer's slack
			// (up to twice the message from getBig) would count
			// against other streams' messages.
			sl = getBigWithin(size, pageUp(size))
		}
		if sl != nil && s.tryChargeLocked(cap(sl.buf)) {
			size = cap(sl.buf)
		} else {
			// A message the budget holds is not refused for the
			// slack of its buffer's last page (MaxPartialBytes may
			// be MaxMessageSize): it gets a buffer of its own size.
			if sl != nil {
				putBig(sl)
				sl = nil
			}
			if err := s.chargeLocked(size); err != nil {
				return false, err
			}
		}
		var buf []byte
		if sl != nil {
			buf = append(sl.buf, s.assembly...)
		} else {
			buf = make([]byte, len(s.assembly), size)
			copy(buf, s.assembly)
		}
		if s.asmSlab != nil {
			putBig(s.asmSlab) // no one else has seen it
		}
		s.assembly, s.assemblyCap, s.asmSlab = buf, size, sl
	}
	s.assembly = append(s.assembly, p...)
	return false, nil
}

// chargeLocked charges the assembly buffer's new capacity, size, to the
// connection's budget for partial messages. Over the budget, it drops the
// message being assembled and returns resource_exhausted. s.mu is held.
func (s *Stream) chargeLocked(size int) error {
	if !s.tryChargeLocked(size) {
		s.dropAssemblyLocked()
		return tether.Errorf(tether.CodeResourceExhausted, "tether: messages being received on this connection would take more than %d bytes", s.c.cfg.MaxPartialBytes)
	}
	return nil
}

// tryChargeLocked is chargeLocked that leaves the message being assembled
// as it is when size does not fit, and reports whether it did. s.mu is
// held.
func (s *Stream) tryChargeLocked(size int) bool {
	// A compare-and-swap loop: a charge that does not fit never raises
	// the total, even for a moment, so it cannot get another stream's
	// charge refused.
	d := int64(size - s.assemblyCap)
	for {
		cur := s.c.partialBytes.Load()
		if d > 0 && cur+d > int64(s.c.cfg.MaxPartialBytes) {
			return false
		}
		if s.c.partialBytes.CompareAndSwap(cur, cur+d) {
			return true
		}
	}
}

// adoptRoom is the room copyInLocked leaves after a message's first
// fragment when it is large: enough for the rest of a message a little over
// one frame (a 64 KiB payload and its protobuf tag and length), so that the
// fragment's buffer becomes the message's (assembleLocked).
const adoptRoom = 8 << 10

// dropAssemblyLocked drops the message being assembled and takes its buffer
// off the connection's budget. s.mu is held.
func (s *Stream) dropAssemblyLocked() {
	if s.asmSlab != nil {
		putBig(s.asmSlab)
	}
	s.assembly, s.asmSlab = nil, nil
	s.uncharge()
}

// uncharge takes the stream's assembly buffer off the connection's budget
// for partial messages: the message is complete (the application owns
// it), dropped, or the stream has ended (no more fragments will come, so
// what is left is bounded by what was queued within credit). s.mu is held.
func (s *Stream) uncharge() {
	s.c.partialBytes.Add(-int64(s.assemblyCap))
	s.assemblyCap = 0
}

// growLocked grows the stream's receive window, and returns the credit to
// grant for it, when its consumer waits on an empty queue after consuming
// at least a whole window since the window last grew, and the sender had
// used at least half the window at once meanwhile (filled): the consumer
// keeps up with a sender that runs into its credit, so the window, not the
// consumer nor the sender's pace, is what holds the stream back, and each
// WINDOW's round trip left the two ends taking turns. The window doubles,
// up to Config.MaxStreamWindow, while the growth of all the connection's
// streams stays within Config.MaxWindowGrowth; a stream gives its growth
// back when it ends and nothing of it is queued any more (terminate; finish
// with an empty queue, else RecvMsg once the queue is drained). A consumer
// that falls behind never finds its queue empty, so its window does not
// grow; one that stops reading after its window grew holds at most the
// grown window, which the connection's budget bounds. A procedure that takes one request
// does not grow its window. A stream whose messages trickle in (a chat, a
// subscription, a ping-pong) never grows, however much it consumes over its
// life (it did before the nineteenth pass, and a review found that with the
// learned growth below one such stream could hold the connection's whole
// budget).
//
// A stream's first growth goes straight to the most any stream of the
// connection has grown (learnedGrowth), if that is more than doubling,
// taking as much of it as the budget has left: a connection whose uploads
// have shown that the window, not the consumer, holds them back does not
// make each new upload find that out again, doubling a whole window at a
// time (from 256 KiB to 4 MiB took 3.75 MiB of consumed messages, 30% of a
// benchmark upload of 200 messages of 64 KiB, which ran 14% faster with the
// learned growth: docs/benchmarks/HISTORY.md, nineteenth pass). The growth is
// still earned, as any: a stream that idles, or whose messages trickle,
// takes none of the budget.
//
// Streams that earn growth share the budget: each may hold its fair share
// (Conn.fairShare: the budget over the streams whose windows have grown, one
// more while a stream without growth asks for some), and one that holds
// more gives the rest back as its consumer reads on, withholding that much
// of the credit it would grant (takeGrantLocked), so that a second upload
// on the connection is not held to StreamWindow because the first took the
// whole budget (twentieth pass). A lone stream's share is the whole budget.
// A stream without growth asks each time its consumer waits on an empty
// queue having earned growth; an ask counts for askFresh, so a stream that
// asked and then went idle does not hold the others to less for long. A
// stream that grew and then stops reading keeps its growth, as before.
// s.mu is held.
func (s *Stream) growLocked() int {
	w := s.c.cfg.StreamWindow + s.grown
	if s.drained < w || !s.filled || w >= s.c.cfg.MaxStreamWindow || s.single || s.recvEnd != nil || s.finished {
		return 0
	}
	step := min(w, s.c.cfg.MaxStreamWindow-w) // doubling
	want := step
	var asked int64
	if s.grown == 0 {
		if l := int(s.c.learnedGrowth.Load()); l > want {
			want = min(l, s.c.cfg.MaxStreamWindow-w)
		}
		asked = nanotime(time.Now())
		s.c.growthAsked.Store(asked) // counted in fairShare, here too
	}
	least := step // at least doubling, or up to the share: not a WINDOW for crumbs
	if room := s.c.fairShare() - s.grown; room < want {
		if room < s.c.cfg.StreamWindow/4 {
			return 0
		}
		want, least = room, min(least, room)
	}
	budget := int64(s.c.cfg.MaxWindowGrowth)
	var n int
	for {
		used := s.c.windowGrowth.Load()
		n = int(min(int64(want), budget-used))
		if n < least {
			return 0 // the budget is taken (others give back what is beyond their share as they read)
		}
		if s.c.windowGrowth.CompareAndSwap(used, used+int64(n)) {
			break
		}
	}
	if s.grown == 0 {
		s.c.growthHolders.Add(1)
		s.c.growthAsked.CompareAndSwap(asked, 0) // answered, unless another asked since
	}
	s.grown += n
	s.grownMax = max(s.grownMax, int32(s.grown))
	s.drained, s.filled = 0, false
	s.recvWindow += n
	raiseTo(&s.c.learnedGrowth, int64(s.grown))
	return n
}

// askFresh is how long a stream's ask for window growth counts in
// fairShare: a stream that earned growth asks at each wait of its consumer
// (a few milliseconds apart for an upload held to its base window), so one
// whose ask is older has gone idle or slow.
const askFresh = 100 * time.Millisecond

// testAskFresh, when not 0, replaces askFresh (nanoseconds; tests).
var testAskFresh atomic.Int64

// fairShare is the window growth each stream whose window has grown may
// keep: the connection's budget over their number, one more while a
// stream without growth asks for some (growLocked).
func (c *Conn) fairShare() int {
	n := int(c.growthHolders.Load())
	if at := c.growthAsked.Load(); at != 0 {
		fresh := int64(askFresh)
		if f := testAskFresh.Load(); f != 0 {
			fresh = f
		}
		if nanotime(time.Now())-at < fresh {
			n++
		} else {
			c.growthAsked.CompareAndSwap(at, 0)
		}
	}
	return c.cfg.MaxWindowGrowth / max(1, n)
}

// releaseGrowthLocked gives the stream's window growth back to the
// connection (growLocked); the stream has ended. s.mu is held.
func (s *Stream) releaseGrowthLocked() {
	if s.grown > 0 {
		s.c.growthHolders.Add(-1)
		s.c.windowGrowth.Add(-int64(s.grown))
		s.grown = 0
	}
}

// shrinkFloorLocked is the least growth a stream may give back down to
// (takeGrantLocked): a Go sender waits for credit for a whole message, or a
// whole frame, costing up to maxWholeWait and up to half the most credit it
// has held (wholeWantLocked, takeFrameCredit), and this receiver keeps back
// less than StreamWindow/4, so the window must stay at least that much
// above it, or both ends would wait on each other for good. At the default
// windows (StreamWindow 256 KiB and more) the floor is 0. s.mu is held.
func (s *Stream) shrinkFloorLocked() int {
	w := s.c.cfg.StreamWindow
	return min(maxWholeWait, (w+int(s.grownMax))/2) - 3*w/4
}

// takeGrantLocked returns the credit to grant back now, if enough has been
// consumed to be worth a WINDOW frame. A stream whose window grew beyond
// its fair share, as other streams earned growth since, gives what it
// consumed back to the connection's budget instead of granting it, until it
// is down to its share, or to what a sender may be waiting for
// (shrinkFloorLocked).
func (s *Stream) takeGrantLocked() int {
	if s.grown > 0 && s.unacked > 0 {
		if over := s.grown - max(s.c.fairShare(), s.shrinkFloorLocked()); over > 0 {
			k := min(over, s.unacked)
			s.grown -= k
			s.unacked -= k
			s.c.windowGrowth.Add(-int64(k))
			if s.grown == 0 { // a share of nothing: a budget smaller than the streams
				s.c.growthHolders.Add(-1)
			}
		}
	}
	if s.unacked < s.c.cfg.StreamWindow/4 || s.recvEnd != nil || s.finished {
		return 0
	}
	n := s.unacked
	s.unacked = 0
	s.recvWindow += n
	return n
}

// grant sends a WINDOW frame with n bytes of credit; on a resumable stream
// with seq > 0 it also acknowledges messages up to seq (ackLocked).
func (s *Stream) grant(n int, seq uint64) {
	if seq > 0 {
		s.c.writeUrgent(func(b []byte) []byte { return frame.AppendWindowAck(b, s.id, uint32(n), seq) })
		return
	}
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

// closeHeadersLocked wakes Header; the caller holds mu and has just set
// headersSet.
func (s *Stream) closeHeadersLocked() {
	if s.headersCh != nil {
		close(s.headersCh)
	}
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
