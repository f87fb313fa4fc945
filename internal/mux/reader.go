package mux

// The reader goroutine.
//
// readLoop, started by New, is the connection's reader of the WebSocket
// (gorilla/websocket allows one), and everything in this file runs on it:
// reading a message into a pooled buffer, parsing its frames and
// dispatching each (readOne, handle), which calls the stream's handlers
// (stream_handle.go), handleOpen (open.go) and handleGoAway
// (lifecycle.go). gorilla's ping and pong handlers, set in New, run on it
// too, inside its reads. It owns inMessage (also read by touch), donated
// and the read buffers. A receiver waiting for a message (a unary caller, a
// stream's RecvMsg, a server's handler) may be the reader instead
// (callerread_linux.go's readFor), one at a time: it takes the reading from
// the shared poller and runs readOne and readerEnd itself.
//
// It never blocks on a stream's consumer: handlers append to bounded
// per-stream queues and wake the consumer. Control frames it sends (PING
// answers, RESETs) go through writeUrgent, which never waits for space.
//
// Locks: mu (lookup, handleOpen, handleGoAway) and a stream's mu, each
// alone and briefly; wmu only through writeUrgent.
//
// When readLoop returns (the connection closed, or a read failed), drain and
// readerExit (lifecycle.go: readerEnd) finish the connection on this
// goroutine: it is the last of the engine's goroutines to end. A reader may
// instead park when the connection is idle (park.go): it ends, and a waiter
// goroutine on a small stack runs readLoop again once bytes arrive. A
// reader may step aside for a receiver, who then reads (readOne) on its
// own goroutine until its message has come (callerread_linux.go). Or it
// hands off (handOff): it runs the Accept of the connection's only running
// stream itself, after parking the connection if it would park now, else
// lending the socket to the shared poller while Accept runs (reading on itself
// afterwards, if nothing arrived meanwhile), else starting another goroutine
// that runs readLoop on from the next message.

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/frame"
)

func (c *Conn) readLoop() {
	parked := false // the reader parked or handed off: this goroutine is not the reader (until a reclaim)
	read := false   // this goroutine has read a message: it may step aside
	defer func() {
		if !parked { // a parked reader's waiter runs the loop again (park.go)
			c.readerEnd()
		}
	}()
	for {
		if c.woke {
			// Started at the deadline or the close: read at once. A
			// touched left by lendToPoller is stale once this read is
			// done.
			c.woke, c.touched = false, false
		} else if c.touched {
			c.touched = false // by handOff, which did not park here
		} else {
			c.touch()
			if c.shouldPark() {
				parked = true
				c.park()
				return
			}
			if read && c.stepAside() {
				parked = true
				return
			}
		}
		if !c.readOne(&c.rs) {
			return
		}
		read = true
		if c.lone.c == nil {
			c.lastLone = false
		} else {
			// The lone Accept runs on this goroutine, which is not the
			// reader meanwhile: should it never return (a Goexit), the
			// defer must not drain the connection as its reader.
			parked = true
			if !c.handOff() {
				return
			}
			parked = false // reclaimed: the reader again
		}
	}
}

// readState is what a reader keeps from one message to the next: the
// connection's (Conn.rs), so that a receiver reading for itself, or the next
// reader goroutine, does not start it anew (a new slice of large payloads
// for each message a receiver read: an allocation a message in uploads).
type readState struct {
	direct    []directPayload // large payloads of the current message (readMessage)
	lookAhead bool            // the last message had a large MESSAGE frame
}

// readOne reads the next message and handles its frames, and reports false
// if the connection closed or failed meanwhile (the reader then ends it:
// readerEnd). Whoever is the reader: the reader goroutine, or a receiver
// reading for itself (callerread_linux.go).
func (c *Conn) readOne(rs *readState) bool {
	mt, r, err := c.ws.NextReader()
	if c.isClosed() {
		return false
	}
	if err != nil {
		var fe *floodError
		if errors.As(err, &fe) {
			c.closeWith(tether.NewError(tether.CodeResourceExhausted, err), websocket.ClosePolicyViolation, err.Error())
			return false
		}
		c.logPeerProtocolError(err)
		c.closeWith(readError(err), readCloseCode(err), "")
		return false
	}
	c.inMessage.Store(true)
	now := time.Now()
	c.noteMessage(now)
	c.startMessageDeadline(now.Add(c.cfg.MaxMessageReadTime))
	bp := readBuffers.Get().(*[]byte)
	var buf []byte
	buf, rs.direct, rs.lookAhead, err = readMessage((*bp)[:0], r, rs.direct[:0], rs.lookAhead)
	c.msgPending = false
	c.inMessage.Store(false)
	if c.isClosed() { // closed meanwhile: the rest is drained, not handled
		readBuffers.Put(bp)
		return false
	}
	if err != nil {
		var fe *floodError
		if errors.As(err, &fe) { // a ping flood between fragments
			c.closeWith(tether.NewError(tether.CodeResourceExhausted, err), websocket.ClosePolicyViolation, err.Error())
			return false
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.closeWith(tether.Errorf(tether.CodeResourceExhausted, "tether: WebSocket message not complete after %v", c.cfg.MaxMessageReadTime), websocket.ClosePolicyViolation, "message read too slowly")
			return false
		}
		c.logPeerProtocolError(err)
		c.closeWith(readError(err), readCloseCode(err), "")
		return false
	}
	if mt != websocket.BinaryMessage {
		c.closeWith(protoErrf("text WebSocket message"), websocket.CloseUnsupportedData, "tether uses binary messages only")
		return false
	}
	msgLen := len(buf)
	for _, d := range rs.direct {
		msgLen += len(d.sl.buf)
	}
	c.bytesIn.Add(uint64(msgLen))
	c.lastMsgLen = msgLen
	if msgLen == 0 {
		if err := c.idleFrame("empty messages"); err != nil {
			c.closeWith(tether.NewError(tether.CodeResourceExhausted, err), websocket.ClosePolicyViolation, err.Error())
			return false
		}
	}
	pos, next := 0, 0 // pos: the next frame's header in buf; next: its entry in direct, if any
	for pos < len(buf) {
		var f frame.Frame
		var own *slab
		var err error
		if next < len(rs.direct) && rs.direct[next].off == pos {
			// Checked by readMessage: a MESSAGE frame with a
			// stream id and no unknown flag.
			h := buf[pos : pos+frame.HeaderSize]
			own = rs.direct[next].sl
			f = frame.Frame{Type: frame.TypeMessage, Flags: h[1], StreamID: binary.BigEndian.Uint32(h[2:6]), Payload: own.buf}
			next++
			pos += frame.HeaderSize
		} else {
			var rest []byte
			f, rest, err = frame.Parse(buf[pos:])
			pos = len(buf) - len(rest)
		}
		if err == nil {
			c.adopted = false
			err = c.handle(f, cap(buf), own)
			if own != nil && !c.adopted {
				putBig(own)
			}
		}
		if err != nil {
			code := websocket.CloseProtocolError
			var fe *floodError
			if errors.As(err, &fe) {
				code = websocket.ClosePolicyViolation
			}
			c.closeWith(tether.NewError(tether.CodeInternal, err), code, err.Error())
			return false
		}
	}
	// Every payload read on its own has been adopted or put back:
	// the slice must not keep them reachable while the reader waits
	// for the next message.
	clear(rs.direct)
	// The buffer goes back to the pool unless a stream kept a frame
	// of it (handleMessage aliases large frames instead of copying).
	if c.donated {
		c.donated = false
	} else if cap(buf) <= 2*MaxWebSocketMessage {
		*bp = buf[:0]
		readBuffers.Put(bp)
	}
	return true
}

// readerEnd ends the connection on the goroutine of its last reader, whose
// read failed or met the close: a lone stream's Accept that its message did
// not reach is started, what the peer still sends is drained, and
// readerExit runs.
func (c *Conn) readerEnd() {
	if j := c.lone; j.c != nil { // the message was not handled to its end
		c.lone = acceptJob{}
		startHandler(j)
	}
	c.drain()
	c.readerExit()
}

// handOff runs the Accept of the connection's only running stream (lone, set
// by handleOpen) on the reader goroutine, once the message that opened it has
// been handled, and reports whether this goroutine is the reader again
// afterwards. The reading goes on without it:
//
//   - If the connection would park now (park.go: a call after a quiet spell,
//     as a push fleet's connections make), it parks here, and no goroutine
//     reads until bytes arrive.
//   - Else, if the connection's last message ended here too, the stream is
//     still the only one running, no other connection of its role lent its
//     socket in the last lendApart, GOMAXPROCS is above 1, and the connection can park in
//     the shared poller, its socket waits there while Accept runs
//     (lendToPoller): bytes that arrive meanwhile start a reader as for a
//     parked connection; if none did, this goroutine takes the reading back
//     when Accept returns (reclaimFromPoller) and reads on. Unary calls one at a time then wake
//     no goroutine at all: waking one made the runtime wake a thread for it
//     too, about 2 of the server's 3.8 context switches per call
//     (docs/benchmarks/HISTORY.md, sixteenth pass). The conditions keep it to
//     that traffic: with many calls in flight, a lone call is a moment when
//     the pipeline has drained, and the next calls' bytes would wait for
//     Accept or for the poller instead of a reader already waiting for
//     them (unary calls at 64 in flight lost 10 to 20% without the first
//     two); with many connections making calls, the Ps are busy and a
//     goroutine's wake-up costs no thread's, so the lend's two epoll_ctl
//     calls would cost more than they save.
//   - Else another reader goroutine reads on from the next message
//     (readerJob.cont).
//
// In every case the call does not wait for a handler goroutine to wake: a
// lone unary call's handler runs and writes its response at once. A stream
// whose OPEN finds another stream running (handleOpen decides when it
// handles the OPEN) goes to a handler goroutine instead (startHandler), and
// the reader reads on itself; a message that ends in an error starts the
// pending Accept on a handler goroutine too (readLoop's defer). A lone
// stream's handler shows readLoop and handOff at the bottom of its stack.
//
// From the park, the lending, or the start of the next reader, the reader's
// fields are no longer this goroutine's (until reclaimFromPoller gives them
// back): it is no longer the reader, and the handler on it may block.
func (c *Conn) handOff() (reads bool) {
	j := c.lone
	c.lone = acceptJob{}
	c.touch()
	lend := c.lastLone
	c.lastLone = true
	if c.shouldPark() {
		c.park()
		j.run()
		return false
	}
	if lend {
		if gen, ok := c.lendToPoller(); ok {
			j.run()
			return c.reclaimFromPoller(gen)
		}
	}
	c.touched = true
	readers.start(readerJob{c: c, cont: true})
	j.run()
	return false
}

// readBuffers holds the reader's message buffers between messages, so that
// an idle connection holds none and a busy one does not allocate per
// message.
var readBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// A directPayload is the payload of a large MESSAGE frame that readMessage
// read into a pooled buffer of its own (bigbuf.go) instead of the message
// buffer, whose frame header is at off in the message buffer.
type directPayload struct {
	off int
	sl  *slab // no reference yet; its buf is the payload
}

// readAheadSize is how far readMessage reads past the end of the next
// frame's header when it looks ahead: small frames are read several at a
// time, and at most this much of a large frame's payload is read into the
// message buffer, to be copied out of it.
const readAheadSize = 4096

// maxDirectPending bounds, per process, the buffers of payloads being read
// on their own (readMessage) whose bytes have not all arrived: such a
// buffer is taken when the frame's header has arrived, so without a bound
// a peer that sends the header of a large frame and then trickles would
// make each of its connections hold up to twice the payload for the
// 24 bytes it sent. Beyond the bound, payloads are read into the message
// buffer, which grows with what arrives. A payload that has arrived is
// bounded by flow control like any other.
const maxDirectPending = 16 << 20

// directPending is what readers hold in buffers of payloads still being
// read on their own, counted at twice the payload (the most a buffer from
// getBigWithin can be).
var directPending atomic.Int64

// reserveDirect takes n bytes of maxDirectPending, or reports that they
// are not there.
func reserveDirect(n int) bool {
	if directPending.Add(int64(n)) > maxDirectPending {
		directPending.Add(-int64(n))
		return false
	}
	return true
}

// readFull reads len(p) bytes from r, the reader of one WebSocket message.
// Unlike io.ReadFull it keeps io.EOF (the message ended) apart from every
// other error, io.ErrUnexpectedEOF included: crypto/tls returns that when
// the TCP connection ends inside a record, which is a lost connection, not
// a message that ends inside a frame.
func readFull(r io.Reader, p []byte) (int, error) {
	got := 0
	for got < len(p) {
		n, err := r.Read(p[got:])
		got += n
		if err != nil {
			return got, err
		}
	}
	return got, nil
}

// readMessage reads the WebSocket message r to its end into buf, growing it
// as needed, except for the payloads of large MESSAGE frames (minBig bytes
// and more): what is left of each once its header is read is read straight
// into a pooled buffer of its own, which saves copying it out of buf
// (stream_handle.go adopts the buffer). Such a frame's header stays in buf
// and its payload is appended to direct. A frame readMessage cannot make
// sense of stops this: the rest is read into buf, where frame.Parse finds
// the error as for any message. So does a payload that would take the
// process past maxDirectPending.
//
// With lookAhead, each read stops readAheadSize bytes past the next frame's
// header, so that little of a large payload lands in buf; without it, reads
// take what buf has room for, as many bytes as the connection has (fewer
// system calls for a message of small frames). large reports whether the
// message had a large MESSAGE frame: the reader looks ahead in the next
// message if it did.
func readMessage(buf []byte, r io.Reader, direct []directPayload, lookAhead bool) (_ []byte, _ []directPayload, large bool, _ error) {
	next := 0 // offset of the first frame header not looked at; -1 once the look-ahead stopped
	for {
		need := 0 // bytes to read to reach the end of the next header
		for next >= 0 {
			if len(buf)-next < frame.HeaderSize {
				need = next + frame.HeaderSize - len(buf)
				break
			}
			h := buf[next : next+frame.HeaderSize]
			n := int(binary.BigEndian.Uint32(h[6:10]))
			if n > frame.MaxPayload {
				next = -1
				break
			}
			start, end := next+frame.HeaderSize, next+frame.HeaderSize+n
			isLarge := frame.Type(h[0]) == frame.TypeMessage && n >= minBig
			large = large || isLarge
			if end <= len(buf) { // already read
				next = end
				continue
			}
			if !isLarge || h[1]&^frame.FlagMore != 0 || binary.BigEndian.Uint32(h[2:6]) == 0 {
				need = end + frame.HeaderSize - len(buf)
				break
			}
			if !reserveDirect(2 * n) {
				// Too many payloads are being read on their own in
				// this process: the rest of this message goes
				// through buf, as any other.
				next = -1
				break
			}
			room := 0
			if h[1]&frame.FlagMore != 0 {
				room = adoptRoom // perhaps a message's first fragment (copyInLocked)
			}
			sl := getBigWithin(n+min(room, n/4), 2*n)
			sl.buf = append(sl.buf[:0], buf[start:]...)
			got, err := readFull(r, sl.buf[len(sl.buf):n])
			directPending.Add(-int64(2 * n))
			if err == io.EOF {
				// The message ends inside the frame: frame.Parse
				// reports it.
				buf = append(buf, sl.buf[len(sl.buf):len(sl.buf)+got]...)
				putBig(sl)
				return buf, direct, large, nil
			}
			if err != nil {
				putBig(sl)
				return buf, direct, large, err
			}
			sl.buf = sl.buf[:n]
			buf = buf[:start]
			direct = append(direct, directPayload{off: next, sl: sl})
			next = start
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		limit := cap(buf)
		if lookAhead && next >= 0 {
			limit = min(limit, len(buf)+need+readAheadSize)
		}
		n, err := r.Read(buf[len(buf):limit])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, direct, large, nil
		}
		if err != nil {
			return buf, direct, large, err
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
	if ce := closeErrorOf(err); ce != nil && (ce.Code == websocket.CloseProtocolError || ce.Code == CloseClientProtocolError) {
		c.cfg.Logger.Warn("tether: peer closed the connection for a protocol error", "peer", c.ws.RemoteAddr().String(), "code", ce.Code, "reason", ce.Text)
	}
}

// closeErrorOf returns the peer's close frame that err reports, or nil.
// gorilla/websocket returns it unwrapped: the type assertion first, so
// that a connection's routine end does not allocate errors.As's target.
func closeErrorOf(err error) *websocket.CloseError {
	if ce, ok := err.(*websocket.CloseError); ok {
		return ce
	}
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce
	}
	return nil
}

func readError(err error) error {
	if ce := closeErrorOf(err); ce != nil {
		if code, ok := refusalCode(ce.Code); ok {
			return tether.NewError(code, &refusalError{ce.Code, ce.Text})
		}
		// "tether: connection closed by peer (%d %s)", built without fmt:
		// every connection that ends normally comes here.
		return tether.NewError(tether.CodeUnavailable, errors.New("tether: connection closed by peer ("+strconv.Itoa(ce.Code)+" "+ce.Text+")"))
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
// the WebSocket message it came in. own, when not nil, is the pooled buffer
// that readMessage read a large MESSAGE frame's payload into: a stream that
// keeps it sets c.adopted.
func (c *Conn) handle(f frame.Frame, bufCap int, own *slab) error {
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
	err = c.handleStream(s, f, bufCap, own)
	s.drop() // lookup's hold
	return err
}

// handleStream handles f, a frame of stream s (held by lookup).
func (c *Conn) handleStream(s *Stream, f frame.Frame, bufCap int, own *slab) error {
	if f.Type == frame.TypeMessage && len(f.Payload) == 0 && f.Flags&frame.FlagMore != 0 ||
		f.Type == frame.TypeWindow && len(f.Payload) == frame.WindowPayloadSize && frame.WindowIncrement(f) < minUsefulWindow {
		if err := c.idleFrame("empty frames"); err != nil {
			return err
		}
	}
	switch f.Type {
	case frame.TypeMessage:
		return s.handleMessage(f, bufCap, own)
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
