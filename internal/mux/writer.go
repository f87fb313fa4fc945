package mux

// The writer goroutine and its queue.
//
// Any goroutine queues frames by appending them to wbuf under wmu: write
// waits while the queue holds batchBytes (stream data), writeUrgent never
// waits (control frames) and closes the connection once the queue passes
// MaxQueueBytes. The function that builds the frames runs under wmu; it
// may take mu (Open, FinishWith) but never a stream's mu.
//
// At most one writer goroutine runs (wrunning, under wmu): kickLocked
// starts one when frames are queued, and it exits after writerLinger
// without work, so an idle connection has only its reader goroutine. It
// is the only goroutine that writes data messages to the WebSocket
// (gorilla/websocket allows one writer; WriteControl, used for close frames
// and WebSocket pongs, may run beside it). It swaps wbuf with spare under
// wmu and writes the batch with no lock held; spare is its own. It
// publishes flushedOpen (atomic) before each write, and closes the
// connection (closeWith, no lock held) when a write fails or a graceful
// close has drained the queue. readerExit (lifecycle.go) waits for it
// through wg.

import (
	"context"
	"encoding/binary"
	"errors"
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
// writer or starts one. The writer goroutine exits after writerLinger
// without work, so an idle connection has only its reader goroutine. The
// caller holds wmu.
func (c *Conn) kickLocked() {
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

// writerLinger is how long a writer waits for more work before it exits.
const writerLinger = 100 * time.Millisecond

// write appends frames built by fn to the writer's queue, waiting while the
// queue is full until it drains, ctx ends or the connection closes.
func (c *Conn) write(ctx context.Context, cancel <-chan struct{}, fn func([]byte) []byte) error {
	c.wmu.Lock()
	for len(c.wbuf) >= batchBytes {
		c.wwaiters++
		if c.wspace == nil {
			c.wspace = make(chan struct{})
		}
		space := c.wspace
		c.wmu.Unlock()
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
	}
	select {
	case <-c.closed:
		c.wmu.Unlock()
		return c.connErr()
	default:
	}
	c.wbuf = fn(c.wbuf)
	c.kickLocked()
	c.wmu.Unlock()
	return nil
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
	for {
		// Let the goroutines that are ready to queue frames do so before
		// taking the batch: under load more frames share a write (as
		// grpc-go's loopy writer does); with nothing else runnable this
		// returns at once.
		runtime.Gosched()
		c.wmu.Lock()
		buf := c.wbuf
		if len(buf) == 0 {
			closing := c.wclosing
			c.wmu.Unlock()
			if closing {
				c.closeWith(tether.Errorf(tether.CodeUnavailable, "tether: connection closed after drain"), c.closeCode, c.closeText)
				c.stopWriter()
				return
			}
			if linger == nil {
				linger = time.NewTimer(writerLinger)
			} else {
				linger.Reset(writerLinger)
			}
			select {
			case <-c.wnotify:
				continue
			case <-c.closed:
				c.stopWriter()
				return
			case <-linger.C:
				c.wmu.Lock()
				if len(c.wbuf) == 0 && !c.wclosing {
					// Idle: release the buffers and exit; the next
					// frame starts a writer again.
					c.wrunning = false
					c.spare, c.wbuf = nil, nil
					c.wmu.Unlock()
					return
				}
				c.wmu.Unlock()
				continue
			}
		}
		c.wbuf = c.spare[:0]
		c.spare = nil
		if c.wwaiters > 0 && c.wspace != nil { // nil: every waiter's channel is closed already
			close(c.wspace) // made by the waiters (write)
			c.wspace = nil
		}
		c.wmu.Unlock()
		if err := c.writeBatch(buf); err != nil {
			c.closeWith(tether.Errorf(tether.CodeUnavailable, "tether: write: %v", err), 0, "")
			c.stopWriter()
			return
		}
		if cap(buf) <= 2*batchBytes {
			c.spare = buf[:0]
		} else {
			c.spare = nil // let a burst's big buffer go
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
// size limit allows, cutting only at frame boundaries.
func (c *Conn) writeBatch(buf []byte) error {
	for len(buf) > 0 {
		n := 0
		for n < len(buf) {
			typ := frame.Type(buf[n])
			id := binary.BigEndian.Uint32(buf[n+2 : n+6])
			size := frame.HeaderSize + int(binary.BigEndian.Uint32(buf[n+6:n+10]))
			if n > 0 && n+size > MaxWebSocketMessage {
				break
			}
			if typ == frame.TypeOpen && id > c.flushedOpen.Load() {
				// Published before the write: if the write fails, the
				// stream may have reached the peer and is not unprocessed.
				c.flushedOpen.Store(id)
			}
			n += size
		}
		_ = c.ws.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
		if err := c.ws.WriteMessage(websocket.BinaryMessage, buf[:n]); err != nil {
			return err
		}
		c.bytesOut.Add(uint64(n))
		buf = buf[n:]
	}
	return nil
}

// marshalOpts encodes envelopes straight into the writer's queue, reusing
// the size computed just before.
var marshalOpts = proto.MarshalOptions{UseCachedSize: true}
