package mux

// The reader goroutine.
//
// readLoop, started by New, is the connection's only reader of the
// WebSocket (gorilla/websocket allows one), and everything in this file
// runs on it: reading a message into a pooled buffer, parsing its frames
// and dispatching each (handle), which calls the stream's handlers
// (stream_handle.go), handleOpen (open.go) and handleGoAway
// (lifecycle.go). gorilla's ping and pong handlers, set in New, run on it
// too, inside its reads. It owns inMessage (also read by touch), donated
// and the read buffers.
//
// It never blocks on a stream's consumer: handlers append to bounded
// per-stream queues and wake the consumer. Control frames it sends (PING
// answers, RESETs) go through writeUrgent, which never waits for space.
//
// Locks: mu (lookup, handleOpen, handleGoAway) and a stream's mu, each
// alone and briefly; wmu only through writeUrgent.
//
// When readLoop returns (the connection closed, or a read failed), drain
// and readerExit (lifecycle.go) finish the connection on this goroutine:
// it is the last of the engine's goroutines to end. A server connection's
// reader may instead park when the connection is idle (park.go): it ends,
// and a waiter goroutine on a small stack runs readLoop again once bytes
// arrive.

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/frame"
)

func (c *Conn) readLoop() {
	parked := false
	defer func() {
		if !parked { // a parked reader's waiter runs the loop again (park.go)
			c.drain()
			c.readerExit()
		}
	}()
	for {
		if c.woke {
			c.woke = false
		} else {
			c.touch()
			if c.shouldPark() {
				parked = true
				c.park()
				return
			}
		}
		mt, r, err := c.ws.NextReader()
		if c.isClosed() {
			return
		}
		if err != nil {
			var fe *floodError
			if errors.As(err, &fe) {
				c.closeWith(tether.NewError(tether.CodeResourceExhausted, err), websocket.ClosePolicyViolation, err.Error())
				return
			}
			c.logPeerProtocolError(err)
			c.closeWith(readError(err), readCloseCode(err), "")
			return
		}
		c.inMessage.Store(true)
		now := time.Now()
		c.noteMessage(now)
		c.setReadDeadline(now.Add(c.cfg.MaxMessageReadTime))
		bp := readBuffers.Get().(*[]byte)
		buf, err := readAll((*bp)[:0], r)
		msg := buf
		c.inMessage.Store(false)
		if c.isClosed() { // closed meanwhile: the rest is drained, not handled
			readBuffers.Put(bp)
			return
		}
		if err != nil {
			var fe *floodError
			if errors.As(err, &fe) { // a ping flood between fragments
				c.closeWith(tether.NewError(tether.CodeResourceExhausted, err), websocket.ClosePolicyViolation, err.Error())
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.closeWith(tether.Errorf(tether.CodeResourceExhausted, "tether: WebSocket message not complete after %v", c.cfg.MaxMessageReadTime), websocket.ClosePolicyViolation, "message read too slowly")
				return
			}
			c.logPeerProtocolError(err)
			c.closeWith(readError(err), readCloseCode(err), "")
			return
		}
		if mt != websocket.BinaryMessage {
			c.closeWith(protoErrf("text WebSocket message"), websocket.CloseUnsupportedData, "tether uses binary messages only")
			return
		}
		c.bytesIn.Add(uint64(len(msg)))
		msgLen := len(msg)
		if msgLen == 0 {
			if err := c.idleFrame("empty messages"); err != nil {
				c.closeWith(tether.NewError(tether.CodeResourceExhausted, err), websocket.ClosePolicyViolation, err.Error())
				return
			}
		}
		for len(msg) > 0 {
			f, rest, err := frame.Parse(msg)
			if err == nil {
				err = c.handle(f, cap(buf))
			}
			if err != nil {
				code := websocket.CloseProtocolError
				var fe *floodError
				if errors.As(err, &fe) {
					code = websocket.ClosePolicyViolation
				}
				c.closeWith(tether.NewError(tether.CodeInternal, err), code, err.Error())
				return
			}
			msg = rest
		}
		// The buffer goes back to the pool unless a stream kept a frame
		// of it (handleMessage aliases large frames instead of copying).
		if c.donated {
			c.donated = false
		} else if cap(buf) <= 2*MaxWebSocketMessage {
			*bp = buf[:0]
			readBuffers.Put(bp)
		}
	}
}

// readBuffers holds the reader's message buffers between messages, so that
// an idle connection holds none and a busy one does not allocate per
// message.
var readBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// readAll reads r to its end into buf, growing it as needed.
func readAll(buf []byte, r io.Reader) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// readCloseCode is closeWith's code after the read error err: closeSent
// when gorilla/websocket sent a close frame itself (a message over the read
// limit, answered with 1009), else 0 (the connection is gone).
func readCloseCode(err error) int {
	if errors.Is(err, websocket.ErrReadLimit) {
		return closeSent
	}
	return 0
}

// logPeerProtocolError logs, as a warning, a close by the peer for a
// protocol error it found in what this side sent (1002, or 4002 from a
// browser, which cannot send 1002): a bug on one side or the other that
// operators should see, not a routine disconnect.
func (c *Conn) logPeerProtocolError(err error) {
	var ce *websocket.CloseError
	if errors.As(err, &ce) && (ce.Code == websocket.CloseProtocolError || ce.Code == CloseClientProtocolError) {
		c.cfg.Logger.Warn("tether: peer closed the connection for a protocol error", "peer", c.ws.RemoteAddr().String(), "code", ce.Code, "reason", ce.Text)
	}
}

func readError(err error) error {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		if code, ok := refusalCode(ce.Code); ok {
			return tether.NewError(code, &refusalError{ce.Code, ce.Text})
		}
		return tether.Errorf(tether.CodeUnavailable, "tether: connection closed by peer (%d %s)", ce.Code, ce.Text)
	}
	if errors.Is(err, websocket.ErrReadLimit) {
		return tether.Errorf(tether.CodeResourceExhausted, "tether: WebSocket message over %d bytes", MaxWebSocketMessage)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return tether.Errorf(tether.CodeUnavailable, "tether: connection lost: %v", err)
	}
	return tether.Errorf(tether.CodeUnavailable, "tether: connection lost: %v", err)
}

// pingAloneGap is how long after the last PING the reader answered a PING
// must come for the reader to answer it inline (handle).
const pingAloneGap = 10 * time.Millisecond

// handle acts on one frame; bufCap is the capacity of the buffer holding
// the WebSocket message it came in.
func (c *Conn) handle(f frame.Frame, bufCap int) error {
	switch f.Type {
	case frame.TypePing:
		if f.Flags&frame.FlagAck != 0 {
			c.pongReceived(f.Payload)
			return c.idleFrame("PING answers")
		}
		if !c.pingAllowed() {
			return &floodError{"PING"}
		}
		p := append([]byte(nil), f.Payload...)
		answer := func(b []byte) []byte {
			return frame.Append(b, frame.Frame{Type: frame.TypePing, Flags: frame.FlagAck, Payload: p})
		}
		// A heartbeat's PING, alone, is answered inline; PINGs that come
		// close together (a burst, a flood under raised limits) are
		// answered through the writer goroutine: inline, each answer
		// would be a write of its own, and once the peer stopped reading
		// one would block this reader until WriteTimeout instead of the
		// queue's bound (MaxQueueBytes) closing the connection at once.
		now := nanotime(time.Now())
		alone := now-c.lastPingIn >= int64(pingAloneGap)
		c.lastPingIn = now
		if alone {
			c.writeHeartbeat(true, answer)
		} else {
			c.writeUrgent(answer)
		}
		return nil
	case frame.TypeGoAway:
		return c.handleGoAway(f)
	case frame.TypeOpen:
		if c.role != RoleServer {
			return protoErrf("OPEN sent to a client")
		}
		return c.handleOpen(f)
	}
	if !f.Type.Known() {
		return c.idleFrame("frames of unknown type") // reserved for later versions
	}
	s, err := c.lookup(f)
	if err != nil {
		return err
	}
	if s == nil {
		// Frames for a stream that just ended are normal (a RESET or
		// WINDOW crossing the END) and cost only a lookup.
		return nil
	}
	if f.Type == frame.TypeMessage && len(f.Payload) == 0 && f.Flags&frame.FlagMore != 0 ||
		f.Type == frame.TypeWindow && len(f.Payload) == frame.WindowPayloadSize && frame.WindowIncrement(f) < minUsefulWindow {
		if err := c.idleFrame("empty frames"); err != nil {
			return err
		}
	}
	switch f.Type {
	case frame.TypeMessage:
		return s.handleMessage(f, bufCap)
	case frame.TypeHalfClose:
		if c.role == RoleServer {
			return s.handleHalfClose()
		}
	case frame.TypeWindow:
		if seq, ok := frame.WindowAck(f); ok {
			return s.handleWindowAck(frame.WindowIncrement(f), seq)
		}
		return s.handleWindow(frame.WindowIncrement(f))
	case frame.TypeHeaders:
		if c.role != RoleClient {
			return protoErrf("HEADERS sent to a server")
		}
		return s.handleHeaders(f.Payload)
	case frame.TypeEnd:
		if c.role != RoleClient {
			return protoErrf("END sent to a server")
		}
		return s.handleEnd(f.Payload)
	case frame.TypeReset:
		return s.handleReset(f.Payload)
	}
	return nil
}
