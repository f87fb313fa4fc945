package mux

// The writer and its queue.
//
// Any goroutine queues frames by appending them to wbuf under wmu: write
// waits while the queue holds batchBytes (stream data), writeUrgent never
// waits (control frames) and closes the connection once the queue passes
// MaxQueueBytes. The function that builds the frames runs under wmu; it
// may take mu (Open, FinishWith) but never a stream's mu.
//
// Exactly one goroutine at a time writes data messages to the WebSocket
// (wswrite.go; close frames and WebSocket pongs wait for its lock beside
// it, up to their deadline): the holder of the write
// token, wbusy (under wmu). The holder swaps wbuf with spare under wmu,
// writes the batch with no lock held, and gives the token back under wmu;
// spare is the holder's own. Two kinds of goroutine take the token:
//
//   - the writer goroutine: at most one runs (wrunning, under wmu);
//     kickLocked starts one when frames are queued, and it exits after
//     writerLinger to twice that without work, so an idle connection has
//     only its reader goroutine;
//   - an application goroutine in writeAlone (a unary caller's Open, a
//     handler's FinishWith) or in SendProto with a message that answers
//     one the peer sent (a bidi ping-pong; Stream.answering) whose frames
//     found the queue empty, the token free and no other stream on the
//     connection: it writes its own frames
//     inline (writeInline) instead of waking the writer goroutine, saving
//     a goroutine hand-off per call on each side. The heartbeat timer does
//     the same with its PING when the queue is empty, and so does the
//     reader goroutine with a PING's answer while the connection has no
//     stream (writeHeartbeat, heartbeat.go). With other streams
//     active, frames go to the writer goroutine, which batches them.
//     It gives the token back with kickLocked when more frames were
//     queued meanwhile. The reader goroutine writes only that PING
//     answer: with a stream open, writeUrgent always hands off, so the
//     reader never blocks a call on the socket.
//
// The holder publishes flushedOpen (atomic) before each write, and closes
// the connection (closeWith, no lock held) when a write fails; the writer
// goroutine also closes it when a graceful close has drained the queue.
// readerExit (lifecycle.go) waits for every holder through wg.

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"runtime"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/frame"
)

// QueuedBytes is the size of the writer's queue now.
func (c *Conn) QueuedBytes() int {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return len(c.wbuf)
}

// kickLocked makes sure a writer will take the queue: it wakes the running
// writer or starts one. The writer goroutine exits after writerLinger (to
// twice that) without work, so an idle connection has only its reader goroutine. While
// an inline writer holds the token it does nothing: the holder kicks when it
// gives the token back. The caller holds wmu.
func (c *Conn) kickLocked() {
	if c.wbusy && c.winline {
		return
	}
	if c.wrunning {
		select {
		case c.wnotify <- struct{}{}:
		default:
		}
		return
	}
	if c.wdead {
		return
	}
	c.wrunning = true
	c.wg.Add(1)
	go c.writeLoop()
}

// writerLinger is how long a writer waits for more work before it exits
// (at most twice that: writeLoop).
const writerLinger = 100 * time.Millisecond

// write appends frames built by fn to the writer's queue, waiting while the
// queue is full until it drains, ctx ends, st (when not nil) ends or the
// connection closes.
func (c *Conn) write(ctx context.Context, st *Stream, fn func([]byte) []byte) error {
	return c.queue(ctx, st, nil, fn)
}

// writeAlone is write for the frames that complete a call's side (a unary
// request with its OPEN and HALF_CLOSE, a server's END): when stream id is
// the connection's only stream (or none is left) and the queue is empty, the
// caller writes them itself (writeInline) instead of waking the writer
// goroutine. With other streams active the writer goroutine takes them, so
// that concurrent calls' frames share writes. *id is read after fn has run
// (Open's fn gives the stream its id there).
func (c *Conn) writeAlone(ctx context.Context, st *Stream, id *uint32, fn func([]byte) []byte) error {
	return c.queue(ctx, st, id, fn)
}

// queue is write and writeAlone: st, when not nil, is the stream the frames
// are for, whose end also ends the wait for room.
func (c *Conn) queue(ctx context.Context, st *Stream, alone *uint32, fn func([]byte) []byte) error {
	c.wmu.Lock()
	for len(c.wbuf) >= batchBytes {
		c.wwaiters++
		if c.wspace == nil {
			// Its elements take no memory: the capacity costs nothing
			// and no wake-up ever blocks the writer (takeLocked).
			c.wspace = make(chan struct{}, math.MaxInt32)
		}
		space := c.wspace
		c.wmu.Unlock()
		var cancel <-chan struct{} // nil: only ctx and the connection end the wait
		if st != nil {
			cancel = st.doneChan()
		}
		select {
		case <-space:
		case <-ctx.Done():
			c.wmu.Lock()
			c.wwaiters--
			c.wmu.Unlock()
			return ctx.Err()
		case <-cancel:
			c.wmu.Lock()
			c.wwaiters--
			c.wmu.Unlock()
			return errStreamDone
		case <-c.closed:
			c.wmu.Lock()
			c.wwaiters--
			c.wmu.Unlock()
			return c.connErr()
		}
		c.wmu.Lock()
		c.wwaiters--
		c.wtokens--
	}
	select {
	case <-c.closed:
		c.wmu.Unlock()
		return c.connErr()
	default:
	}
	start := len(c.wbuf)
	c.wbuf = c.buildLocked(fn)
	if alone != nil && *alone != 0 && start == 0 && len(c.wbuf) > 0 && len(c.wbuf) <= inlineMaxBytes && !c.wbusy && !c.wdead && !c.wclosing && !c.wslow && c.onlyStream(*alone) {
		c.writeInline()
		return nil
	}
	c.kickLocked()
	c.wmu.Unlock()
	return nil
}

// buildLocked runs fn on the queue and returns what it built. fn may
// marshal an application's message, which panics if the application
// changes it meanwhile: the panic goes on to the caller (a handler's is
// recovered as an internal error) with the queue as it was and wmu
// released, instead of leaving the connection's writers locked out for
// good. wmu is held (and still is on a normal return).
func (c *Conn) buildLocked(fn func([]byte) []byte) []byte {
	start, built := len(c.wbuf), false
	defer func() {
		if !built {
			c.wbuf = c.wbuf[:start]
			c.wmu.Unlock()
		}
	}()
	b := fn(c.wbuf)
	built = true
	return b
}

// onlyStream reports whether stream id is the only one in the table, or the
// table is empty. wmu is held; it takes mu.
func (c *Conn) onlyStream(id uint32) bool {
	c.mu.Lock()
	n := len(c.streams)
	alone := n == 0 || n == 1 && c.streams[id] != nil
	c.mu.Unlock()
	return alone
}

// inlineMaxBytes bounds a batch written inline by the goroutine that queued
// it (writeInline); larger ones go to the writer goroutine.
const inlineMaxBytes = 16 << 10

// slowWrite is how long a socket write may take before writes stop being
// made inline (wslow): a write that takes longer means the socket's buffer
// is full, and an inline writer would hold its caller, whose context cannot
// interrupt a socket write, until the peer reads or WriteTimeout passes. The
// writer goroutine takes every batch until a write is fast again.
const slowWrite = time.Millisecond

// writeInline writes the queue, which holds only the frames the caller has
// just queued, on the caller's goroutine: the queue was empty and no one
// holds the write token. The caller holds wmu; writeInline releases it.
// A failed write closes the connection, as in the writer goroutine; the
// caller's frames then fail with their streams.
func (c *Conn) writeInline() {
	buf := c.takeLocked()
	c.winline = true
	c.inlines.Add(1)
	c.wg.Add(1) // readerExit waits for holders; wdead is false
	c.wmu.Unlock()
	err := c.writeBatch(buf)
	c.wmu.Lock()
	c.putLocked(buf, err)
	c.winline = false
	if len(c.wbuf) > 0 || c.wclosing {
		c.kickLocked()
	}
	c.wmu.Unlock()
	c.wg.Done()
	if err != nil {
		c.writeFailed(err)
	}
}

// writeFailed closes the connection after a failed write. A write refused
// because a close frame went out first (wsWriter) closes nothing: whoever
// sent that frame closes the connection, with its own cause (closeWith
// itself, or the reader after the close handler answered the peer's close
// frame, with the peer's code).
func (c *Conn) writeFailed(err error) {
	if errors.Is(err, websocket.ErrCloseSent) {
		return
	}
	c.closeWith(tether.Errorf(tether.CodeUnavailable, "tether: write: %v", err), 0, "")
}

// takeLocked takes the write token and the queue, leaving the spare buffer
// in its place. wmu is held and the token is free.
func (c *Conn) takeLocked() []byte {
	buf := c.wbuf
	c.wbusy = true
	c.wbuf = c.spare[:0]
	c.spare = nil
	// One wake-up for each waiting sender (queue), sent on a channel kept
	// for the connection's life instead of one made and closed each time
	// (an allocation for every batch of large messages). A waiter that
	// gave up may leave its wake-up to the next one, which then looks at
	// the queue once more than it needed to.
	for c.wtokens < c.wwaiters {
		c.wspace <- struct{}{}
		c.wtokens++
	}
	return buf
}

// putLocked gives the write token back after buf was written (err is the
// write's error), keeping buf as the spare. wmu is held.
func (c *Conn) putLocked(buf []byte, err error) {
	c.wbusy = false
	if err == nil && cap(buf) <= 2*batchBytes {
		c.spare = buf[:0]
	} else {
		c.spare = nil // let a burst's big buffer go
	}
}

var errStreamDone = errors.New("stream done")

// writeUrgent queues small control frames without waiting. If the queue has
// grown past MaxQueueBytes the peer is not reading: the connection is closed.
func (c *Conn) writeUrgent(fn func([]byte) []byte) {
	c.wmu.Lock()
	if len(c.wbuf) > c.cfg.MaxQueueBytes {
		c.wmu.Unlock()
		c.closeWith(tether.Errorf(tether.CodeResourceExhausted, "tether: peer is not reading; send queue over %d bytes", c.cfg.MaxQueueBytes), websocket.ClosePolicyViolation, "send queue overflow")
		return
	}
	c.wbuf = fn(c.wbuf)
	c.kickLocked()
	c.wmu.Unlock()
}

func (c *Conn) writeLoop() {
	defer c.wg.Done()
	var linger *time.Timer
	wrote := false // a batch was written since linger was armed
	for {
		// Let the goroutines that are ready to queue frames do so before
		// taking the batch: under load more frames share a write (as
		// grpc-go's loopy writer does); with nothing else runnable this
		// returns at once. It costs a quarter of the server's CPU samples
		// at unary c=64 (the run queue's lock and waking the idle P), and
		// about two yields in three do not grow the batch; but every
		// narrower rule tried (no yield, a yield only after a wake-up,
		// only for a small queue, only after a write that emptied it,
		// skipping yields after one that did not pay, only with more
		// than one stream) gave more system calls per call or no clear
		// CPU saving: docs/benchmarks/HISTORY.md, "The writer's yield".
		runtime.Gosched()
		c.wmu.Lock()
		if len(c.wbuf) == 0 || c.wbusy {
			// Nothing to write, or an inline writer holds the token (it
			// kicks when it gives it back).
			closing := c.wclosing && !c.wbusy
			c.wmu.Unlock()
			if closing {
				c.closeWith(tether.Errorf(tether.CodeUnavailable, "tether: connection closed after drain"), c.closeCode, c.closeText)
				c.stopWriter()
				return
			}
			// The linger timer is armed once and re-armed only after it
			// fired with batches written meanwhile: the writer exits
			// between writerLinger and twice that after its last batch.
			// Moving it after every batch would make the runtime scan
			// its whole timer heap every writerLinger (see
			// workers.loop).
			if linger == nil {
				linger, wrote = time.NewTimer(writerLinger), false
			}
			select {
			case <-c.wnotify:
				continue
			case <-c.closed:
				c.stopWriter()
				return
			case <-linger.C:
				if !wrote {
					c.wmu.Lock()
					if c.wbusy || len(c.wbuf) == 0 && !c.wclosing {
						// Idle (or an inline writer, which kicks
						// when it is done, holds the token): exit;
						// the next frame starts a writer again. An
						// idle connection releases its buffers.
						c.wrunning = false
						if !c.wbusy {
							c.spare, c.wbuf = nil, nil
						}
						c.wmu.Unlock()
						return
					}
					c.wmu.Unlock()
				}
				// Work since the timer was armed, or frames queued
				// meanwhile: the timer has fired and is re-armed, or
				// the writer would never exit again.
				wrote = false
				linger.Reset(writerLinger)
				continue
			}
		}
		buf := c.takeLocked()
		c.wmu.Unlock()
		err := c.writeBatch(buf)
		wrote = true
		c.wmu.Lock()
		c.putLocked(buf, err)
		c.wmu.Unlock()
		if err != nil {
			c.writeFailed(err)
			c.stopWriter()
			return
		}
	}
}

// stopWriter marks the writer stopped after the connection closed.
func (c *Conn) stopWriter() {
	c.wmu.Lock()
	c.wrunning = false
	c.wmu.Unlock()
}

// writeBatch writes queued frames as few WebSocket messages as the message
// size limit, maxWriteMessage and maxSmallWriteMessage allow, cutting only
// at frame boundaries.
func (c *Conn) writeBatch(buf []byte) error {
	for len(buf) > 0 {
		n := c.cutMessage(buf)
		begin := time.Now()
		err := c.wsw.writeData(buf[:n], begin.Add(c.cfg.WriteTimeout))
		// Only the token's holder writes wslow; write reads it under wmu
		// too, after the holder has given the token back or before it
		// took it.
		c.wslow = time.Since(begin) > slowWrite
		if err != nil {
			return err
		}
		c.bytesOut.Add(uint64(n))
		c.lastSent.Store(nanotime(begin))
		buf = buf[n:]
	}
	return nil
}

// cutMessage returns the length of the first WebSocket message writeBatch
// makes of buf, whole frames, and publishes flushedOpen for the OPENs in it
// (before the write: if the write fails, those streams may have reached
// the peer and are not unprocessed).
func (c *Conn) cutMessage(buf []byte) int {
	n := 0
	big := false // a large frame is in this WebSocket message
	for n < len(buf) {
		typ := frame.Type(buf[n])
		id := binary.BigEndian.Uint32(buf[n+2 : n+6])
		size := frame.HeaderSize + int(binary.BigEndian.Uint32(buf[n+6:n+10]))
		if n > 0 && (n+size > MaxWebSocketMessage || size >= minBig && n+size > maxWriteMessage || !big && size < minBig && n+size > maxSmallWriteMessage) {
			break
		}
		big = big || size >= minBig
		if typ == frame.TypeOpen && id > c.flushedOpen.Load() {
			c.flushedOpen.Store(id)
		}
		n += size
	}
	return n
}

// marshalOpts encodes envelopes straight into the writer's queue, reusing
// the size computed just before.
var marshalOpts = proto.MarshalOptions{UseCachedSize: true}

// maxWriteMessage: a large frame (minBig and more) does not join a
// WebSocket message that would then pass this size; it starts the next
// one (small frames still share messages up to MaxWebSocketMessage). A
// receiver reads a whole WebSocket message before it handles any of its
// frames, so a backlog of large frames written as one message as large as
// the stream's window made the two ends take turns, the receiver reading
// while the sender waited for credit, instead of overlapping. It is 1 KiB
// over 128 KiB so that two messages of a 64 KiB payload (each a full frame
// and a tail of a few bytes, 131,120 bytes together) share a write: at
// 128 KiB each went alone, one write, one read and four allocations in
// gorilla/websocket per message at the time (5.4 instead of 7.3 allocations
// per message, both ends, on the 64 KiB stream).
const maxWriteMessage = 129 << 10

// maxSmallWriteMessage: a WebSocket message of small frames only ends
// before it would pass this size (a small frame may still follow a large
// one up to maxWriteMessage, as the tail of a message a little over one
// frame does). For the same reason as maxWriteMessage: a backlog of small
// frames (a server stream of 1 KiB messages that has just received credit)
// left as one WebSocket message of up to the stream's window, which the
// receiver read whole before its consumer got the first frame. Cut at
// 64 KiB, CPU per 1 KiB message (both ends) fell in 10 of 11 paired runs,
// by 7% on average (docs/benchmarks/HISTORY.md, "Streams: WebSocket
// messages of small frames cut at 64 KiB"), for 0.08 instead of 0.05 read and write system calls per
// message on both ends together.
const maxSmallWriteMessage = 64 << 10
