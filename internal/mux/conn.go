package mux

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// Role says which end of the connection this is.
type Role uint8

// The two ends.
const (
	RoleClient Role = iota
	RoleServer
)

// Conn is one multiplexed tether connection over a WebSocket.
type Conn struct {
	ws   *websocket.Conn
	role Role
	cfg  Config

	ctx    context.Context // canceled when the connection closes
	cancel context.CancelCauseFunc

	mu          sync.Mutex
	streams     map[uint32]*Stream
	nextID      uint32 // client: id of the next stream
	maxPeerID   uint32 // server: highest stream id the peer opened
	running     int    // server: streams accepted and not finished
	localGoAway bool
	peerGoAway  bool
	draining    chan struct{} // closed on GOAWAY (sent or received)
	idle        chan struct{} // non-nil while someone waits for running == 0

	wmu         sync.Mutex
	wbuf        []byte
	spare       []byte
	wwaiters    int
	wspace      chan struct{} // closed when the queue drains below batchBytes
	wnotify     chan struct{}
	wclosing    bool // graceful close queued: the writer closes once drained
	wrunning    bool // a writer goroutine is running
	wdead       bool // the connection closed: no writer is started any more
	closeCode   int
	closeText   string
	flushedOpen atomic.Uint32 // client: highest stream id whose OPEN was written

	slots chan struct{} // client: one token per open stream, up to PeerMaxStreams

	closeOnce sync.Once
	closed    chan struct{}
	err       error
	wg        sync.WaitGroup
	pingTimer *time.Timer

	bytesIn, bytesOut atomic.Uint64
	partialBytes      atomic.Int64 // capacity of the buffers of messages being assembled (Stream.assembleLocked)

	inMessage   atomic.Bool  // reader is inside a WebSocket message
	lingerUntil atomic.Int64 // after a close frame was sent: read deadline (Unix ns) of the drain
	donated     bool         // reader: a stream kept a frame of the current buffer
	pingLimit   *rate.Limiter
	idleLimit   *rate.Limiter
}

// New starts the engine on an established WebSocket: one reader goroutine,
// one writer goroutine and a heartbeat timer.
func New(ws *websocket.Conn, role Role, cfg Config) *Conn {
	cfg.withDefaults()
	c := &Conn{
		ws:       ws,
		role:     role,
		cfg:      cfg,
		streams:  make(map[uint32]*Stream),
		nextID:   1,
		draining: make(chan struct{}),
		wspace:   make(chan struct{}),
		wnotify:  make(chan struct{}, 1),
		closed:   make(chan struct{}),
	}
	c.ctx, c.cancel = context.WithCancelCause(context.Background())
	if role == RoleClient && cfg.PeerMaxStreams > 0 {
		c.slots = make(chan struct{}, cfg.PeerMaxStreams)
	}
	c.pingLimit = rate.NewLimiter(rate.Limit(cfg.MaxPingRate), int(2*cfg.MaxPingRate)+1)
	c.idleLimit = rate.NewLimiter(rate.Limit(cfg.MaxIdleFrameRate), int(2*cfg.MaxIdleFrameRate)+1)
	ws.SetReadLimit(MaxWebSocketMessage)
	ws.SetPongHandler(func(string) error { c.touch(); return nil })
	// WebSocket pings (tether uses its own PING frames) are answered as
	// gorilla would, but count against the ping limit.
	ws.SetPingHandler(func(data string) error {
		if !c.pingLimit.Allow() {
			return &floodError{"WebSocket pings"}
		}
		c.touch()
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			return err
		}
		return nil
	})
	// The heartbeat timer is armed only once c.pingTimer is set: ping reads
	// the field (to re-arm it), and Reset orders this write before the
	// timer's first run.
	c.pingTimer = time.AfterFunc(math.MaxInt64, c.ping)
	c.pingTimer.Reset(cfg.PingInterval)
	go c.readLoop()
	return c
}

// Done is closed when the connection has closed.
func (c *Conn) Done() <-chan struct{} { return c.closed }

// Draining is closed once either side has sent GOAWAY: no new streams will
// be accepted on this connection.
func (c *Conn) Draining() <-chan struct{} { return c.draining }

// Err returns why the connection closed, or nil while it is open.
func (c *Conn) Err() error {
	select {
	case <-c.closed:
		return c.err
	default:
		return nil
	}
}

// Context is canceled when the connection closes.
func (c *Conn) Context() context.Context { return c.ctx }

// RemoteAddr is the peer's network address.
func (c *Conn) RemoteAddr() string { return c.ws.RemoteAddr().String() }

// ActiveStreams returns the number of open streams.
func (c *Conn) ActiveStreams() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams)
}

// BytesIn counts WebSocket payload bytes read.
func (c *Conn) BytesIn() uint64 { return c.bytesIn.Load() }

// BytesOut counts WebSocket payload bytes written.
func (c *Conn) BytesOut() uint64 { return c.bytesOut.Load() }

// QueuedBytes is the size of the writer's queue now.
func (c *Conn) QueuedBytes() int {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return len(c.wbuf)
}

// Close closes the connection at once with close code 1000; every open
// stream fails with unavailable. It is idempotent.
func (c *Conn) Close() {
	c.closeWith(tether.Errorf(tether.CodeUnavailable, "tether: connection closed"), websocket.CloseNormalClosure, "")
}

// ClosePolicy closes the connection at once with close code 1008 (policy
// violation) and the given reason; open streams fail with err.
func (c *Conn) ClosePolicy(err error, reason string) {
	c.closeWith(err, websocket.ClosePolicyViolation, reason)
}

// CloseGoingAway closes the connection at once with close code 1001 (the
// server is going away).
func (c *Conn) CloseGoingAway() {
	c.closeWith(tether.Errorf(tether.CodeUnavailable, "tether: server closed the connection"), websocket.CloseGoingAway, "server closing")
}

// Shutdown drains the connection: GOAWAY tells the peer that no new streams
// are accepted, in-flight streams run to completion, then the connection
// closes with code 1001 (going away). If ctx ends first, the connection is
// closed at once and ctx's error returned.
func (c *Conn) Shutdown(ctx context.Context) error {
	c.GoAway(tether.CodeUnavailable, "server shutting down")
	c.mu.Lock()
	for c.running > 0 {
		if c.idle == nil {
			c.idle = make(chan struct{})
		}
		idle := c.idle
		c.mu.Unlock()
		select {
		case <-idle:
		case <-c.closed:
			return nil
		case <-ctx.Done():
			c.closeWith(tether.Errorf(tether.CodeUnavailable, "tether: server shut down before the call finished"), websocket.CloseGoingAway, "shutdown")
			return ctx.Err()
		}
		c.mu.Lock()
	}
	c.mu.Unlock()
	c.closeAfterFlush(websocket.CloseGoingAway, "shutdown")
	select {
	case <-c.closed:
		return nil
	case <-ctx.Done():
		c.Close()
		return ctx.Err()
	}
}

// GoAway sends a GOAWAY frame: the peer must open no new streams, and
// streams it opens after the ones already received are refused. Idempotent.
func (c *Conn) GoAway(code tether.Code, msg string) {
	c.mu.Lock()
	if c.localGoAway {
		c.mu.Unlock()
		return
	}
	c.localGoAway = true
	last := c.maxPeerID
	if !c.peerGoAway {
		close(c.draining)
	}
	c.mu.Unlock()
	payload, _ := proto.Marshal(&tetherv1.GoAway{LastStreamId: last, Code: tetherv1.Code(code), Message: msg})
	c.writeUrgent(func(b []byte) []byte {
		return frame.Append(b, frame.Frame{Type: frame.TypeGoAway, Payload: payload})
	})
}

// closeWith closes the connection with err, sending a close frame with code
// when code is not 0. It is safe from any goroutine and idempotent.
func (c *Conn) closeWith(err error, code int, text string) {
	c.closeOnce.Do(func() {
		c.err = err
		close(c.closed)
		c.cancel(err)
		c.pingTimer.Stop()
		switch code {
		case 0:
			_ = c.ws.Close()
		case closeSent:
			c.linger()
		default:
			writeClose(c.ws, code, text, 250*time.Millisecond)
			c.linger()
		}
		c.mu.Lock()
		streams := c.streams
		c.streams = map[uint32]*Stream{}
		if c.idle != nil {
			close(c.idle)
			c.idle = nil
		}
		c.mu.Unlock()
		flushed := c.flushedOpen.Load()
		for _, s := range streams {
			serr := err
			if c.role == RoleClient && s.id > flushed {
				serr = unprocessed(err)
			}
			s.terminate(serr, false)
		}
		c.cfg.Logger.Debug("tether connection closed", "peer", c.ws.RemoteAddr().String(), "err", err)
	})
}

// closeSent, as closeWith's code, says that gorilla/websocket has already
// sent the close frame (1009 for a message over the read limit): the
// connection lingers without sending another.
const closeSent = -1

// closeLinger bounds how long a connection that sent a close frame keeps
// reading before it closes the socket.
const closeLinger = time.Second

// linger half-closes the socket after the close frame and leaves it to the
// reader to drain what the peer still sends, until the peer's own close
// frame, its FIN or closeLinger. Closing at once would make the kernel answer
// unread data (a flood the peer is still sending) with a reset, and the peer
// would lose the close frame and its code. The reader closes the socket.
func (c *Conn) linger() {
	until := time.Now().Add(closeLinger)
	c.lingerUntil.Store(until.UnixNano())
	_ = c.ws.SetReadDeadline(until)
	halfClose(c.ws)
}

// halfClose shuts the sending side of ws's socket (a FIN after what was
// written), where the socket supports it (TCP, TLS).
func halfClose(ws *websocket.Conn) {
	if hc, ok := ws.NetConn().(interface{ CloseWrite() error }); ok {
		_ = hc.CloseWrite()
	}
}

// setReadDeadline sets the read deadline, never past a lingering close's.
func (c *Conn) setReadDeadline(t time.Time) {
	_ = c.ws.SetReadDeadline(t)
	if l := c.lingerUntil.Load(); l != 0 && t.UnixNano() > l {
		_ = c.ws.SetReadDeadline(time.Unix(0, l))
	}
}

// drain discards what the peer still sends after the connection closed,
// until the peer's close frame, its FIN or the linger deadline, then closes
// the socket.
func (c *Conn) drain() {
	// A closeWith running in another goroutine may not have written its
	// close frame yet: wait for it (closeOnce.Do blocks until the first
	// call returns; if none ran, this one closes).
	c.closeWith(tether.Errorf(tether.CodeUnavailable, "tether: connection closed"), 0, "")
	if c.lingerUntil.Load() != 0 {
		discard(c.ws)
	}
	_ = c.ws.Close()
}

// discard reads and drops what arrives on ws until the peer's close frame,
// an error or ws's read deadline. Once gorilla's reader has failed (a
// flood, a message over the limit) the rest is discarded as raw bytes.
func discard(ws *websocket.Conn) {
	for {
		_, r, err := ws.NextReader()
		if err == nil {
			_, err = io.Copy(io.Discard, r)
		}
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			_, _ = io.Copy(io.Discard, ws.NetConn())
		}
		return
	}
}

// writeClose sends a close frame with code and text, cut to 120 bytes at a
// UTF-8 boundary, waiting at most wait for the socket.
func writeClose(ws *websocket.Conn, code int, text string, wait time.Duration) {
	if len(text) > 120 {
		text = strings.ToValidUTF8(text[:120], "")
	}
	_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(wait))
}

// Refuse closes a freshly upgraded ws with code and reason, as a lingering
// close: the close frame, a half-close, then what the peer sends is read
// and dropped until its close frame, its FIN or closeLinger, so that the
// close frame is not lost to a reset.
func Refuse(ws *websocket.Conn, code int, reason string) {
	writeClose(ws, code, reason, time.Second)
	_ = ws.SetReadDeadline(time.Now().Add(closeLinger))
	halfClose(ws)
	discard(ws)
	_ = ws.Close()
}

// closeAfterFlush asks the writer to close the connection once everything
// queued so far has been written.
func (c *Conn) closeAfterFlush(code int, text string) {
	c.wmu.Lock()
	c.wclosing, c.closeCode, c.closeText = true, code, text
	c.kickLocked()
	c.wmu.Unlock()
}

// touch renews the read deadline after traffic. Inside a message the
// message's own deadline stands: pongs between fragments do not extend it.
func (c *Conn) touch() {
	if c.inMessage.Load() {
		return
	}
	c.setReadDeadline(time.Now().Add(c.cfg.PingInterval + c.cfg.PingTimeout))
}

func (c *Conn) ping() {
	select {
	case <-c.closed:
		return
	default:
	}
	var p [frame.PingPayloadSize]byte
	binary.BigEndian.PutUint64(p[:], uint64(time.Now().UnixNano()))
	c.writeUrgent(func(b []byte) []byte {
		return frame.Append(b, frame.Frame{Type: frame.TypePing, Payload: p[:]})
	})
	c.pingTimer.Reset(c.cfg.PingInterval)
}

// isClosed reports whether the connection has closed.
func (c *Conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// connErr is the error a stream sees when the connection has closed.
func (c *Conn) connErr() error {
	<-c.closed
	return c.err
}

// --- writing ---

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

// readerExit runs when the reader returns, which it does only once the
// connection has closed: it stops writers from starting, waits for the
// running one, then calls OnClose. No goroutine waits per connection.
func (c *Conn) readerExit() {
	c.wmu.Lock()
	c.wdead = true
	c.wmu.Unlock()
	c.wg.Wait()
	if c.cfg.OnClose != nil {
		c.cfg.OnClose(c.err)
	}
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
		if c.wwaiters > 0 {
			close(c.wspace)
			c.wspace = make(chan struct{})
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

// --- reading ---

func (c *Conn) readLoop() {
	defer c.readerExit()
	defer c.drain()
	for {
		c.touch()
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
			c.closeWith(readError(err), readCloseCode(err), "")
			return
		}
		c.inMessage.Store(true)
		c.setReadDeadline(time.Now().Add(c.cfg.MaxMessageReadTime))
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

// Close codes of a server's handshake refusals, sent to browsers (which
// cannot see an HTTP refusal) right after the upgrade: 4000 plus the HTTP
// status a non-browser client gets.
const (
	CloseBadVersion       = 4400
	CloseUnauthenticated  = 4401
	ClosePermissionDenied = 4403
)

// refusalCode is the error code of a handshake refusal's close code, or
// false for any other close code.
func refusalCode(closeCode int) (tether.Code, bool) {
	switch closeCode {
	case CloseBadVersion:
		return tether.CodeFailedPrecondition, true
	case CloseUnauthenticated:
		return tether.CodeUnauthenticated, true
	case ClosePermissionDenied:
		return tether.CodePermissionDenied, true
	}
	return 0, false
}

// IsRefusal reports whether err, a connection's error, is a server's
// handshake refusal sent as a close code (CloseBadVersion and the others):
// retrying will not help until the client changes.
func IsRefusal(err error) bool {
	var r *refusalError
	return errors.As(err, &r)
}

type refusalError struct {
	closeCode int
	reason    string
}

func (e *refusalError) Error() string {
	return fmt.Sprintf("tether: server refused the connection (%d): %s", e.closeCode, e.reason)
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

// handle acts on one frame; bufCap is the capacity of the buffer holding
// the WebSocket message it came in.
func (c *Conn) handle(f frame.Frame, bufCap int) error {
	switch f.Type {
	case frame.TypePing:
		if f.Flags&frame.FlagAck != 0 {
			return c.idleFrame("PING answers")
		}
		if !c.pingLimit.Allow() {
			return &floodError{"PING"}
		}
		p := append([]byte(nil), f.Payload...)
		c.writeUrgent(func(b []byte) []byte {
			return frame.Append(b, frame.Frame{Type: frame.TypePing, Flags: frame.FlagAck, Payload: p})
		})
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
		f.Type == frame.TypeWindow && frame.WindowIncrement(f) < minUsefulWindow {
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

// lookup finds the stream a frame is for. Frames for streams that have ended
// are ignored; frames for streams never opened are protocol errors.
func (c *Conn) lookup(f frame.Frame) (*Stream, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.streams[f.StreamID]; s != nil {
		return s, nil
	}
	if c.role == RoleServer && f.StreamID > c.maxPeerID {
		return nil, protoErrf("%v for stream %d, which was never opened", f.Type, f.StreamID)
	}
	if c.role == RoleClient && f.StreamID >= c.nextID {
		return nil, protoErrf("%v for stream %d, which was never opened", f.Type, f.StreamID)
	}
	return nil, nil
}

func (c *Conn) handleGoAway(f frame.Frame) error {
	var g tetherv1.GoAway
	if err := proto.Unmarshal(f.Payload, &g); err != nil {
		return protoErrf("bad GOAWAY payload: %v", err)
	}
	c.mu.Lock()
	if c.peerGoAway {
		c.mu.Unlock()
		return nil
	}
	c.peerGoAway = true
	if !c.localGoAway {
		close(c.draining)
	}
	var refused []*Stream
	if c.role == RoleClient {
		for id, s := range c.streams {
			if id > g.GetLastStreamId() {
				refused = append(refused, s)
				delete(c.streams, id)
			}
		}
	}
	// With no stream left (the refused ones were taken out of the table
	// above), no removal will close the connection: close it now.
	idle := c.drainedLocked()
	c.mu.Unlock()
	msg := g.GetMessage()
	if msg == "" {
		msg = "server is going away"
	}
	for _, s := range refused {
		s.terminate(unprocessed(tether.Errorf(tether.CodeUnavailable, "tether: %s", msg)), false)
	}
	if idle {
		go c.Close()
	}
	return nil
}

func (c *Conn) handleOpen(f frame.Frame) error {
	c.mu.Lock()
	if f.StreamID <= c.maxPeerID {
		c.mu.Unlock()
		return protoErrf("OPEN for stream %d after stream %d", f.StreamID, c.maxPeerID)
	}
	c.maxPeerID = f.StreamID
	if f.StreamID%2 == 0 {
		c.mu.Unlock()
		return protoErrf("OPEN for even stream id %d", f.StreamID)
	}
	// Refusals a retry can cure are marked unprocessed; the others are not,
	// so that clients do not retry a request that can never be accepted.
	var refuse error
	retryable := true
	switch {
	case c.localGoAway:
		refuse = tether.Errorf(tether.CodeUnavailable, "tether: server is going away")
	case c.running >= c.cfg.MaxConcurrentStreams:
		refuse = tether.Errorf(tether.CodeResourceExhausted, "tether: more than %d concurrent streams on one connection", c.cfg.MaxConcurrentStreams)
	}
	cost, entries := headerCost(f.Payload, openMetadataField)
	switch {
	case refuse != nil:
	case cost > c.cfg.MaxHeaderBytes:
		refuse = tether.Errorf(tether.CodeResourceExhausted, "tether: request metadata of %d bytes exceeds the limit of %d", cost, c.cfg.MaxHeaderBytes)
		retryable = false
	case entries > c.cfg.MaxHeaderKeys:
		refuse = tether.Errorf(tether.CodeResourceExhausted, "tether: request metadata has more than %d keys", c.cfg.MaxHeaderKeys)
		retryable = false
	}
	if refuse != nil {
		c.mu.Unlock()
		c.sendReset(f.StreamID, refuse, retryable)
		if retryable {
			// Refused by a limit or a drain: a well-behaved client can
			// send these; the RESET costs a small write.
			return nil
		}
		return c.idleFrame("refused OPENs")
	}
	open := new(tetherv1.Open)
	if err := proto.Unmarshal(f.Payload, open); err != nil {
		c.mu.Unlock()
		c.sendReset(f.StreamID, tether.Errorf(tether.CodeInvalidArgument, "tether: malformed OPEN: %v", err), false)
		return c.idleFrame("malformed OPENs")
	}
	if c.isClosed() {
		// Closed while this message's frames were being handled: the
		// streams have been terminated already, and this one would never be.
		c.mu.Unlock()
		return nil
	}
	s := c.newStream(f.StreamID)
	s.ctx, s.cancelCtx = context.WithCancelCause(c.ctx)
	c.streams[f.StreamID] = s
	c.running++
	c.mu.Unlock()
	// Outside c.mu: Route takes the server's lock, which is held elsewhere
	// while connections' locks are taken. Only this goroutine reads
	// s.single, and it handles the stream's messages after this; Accept's
	// goroutine starts after s.route is set.
	if c.cfg.Route != nil {
		s.route, s.single = c.cfg.Route(open.GetProcedure())
	}
	// The window beyond InitialWindow is granted when the handler first
	// reads (RecvMsg), not here: a unary call that has already
	// half-closed never needs it, and the WINDOW frame would cost a write.
	s.recvWindow = InitialWindow
	s.deferredGrant = c.cfg.StreamWindow - InitialWindow
	go func() {
		// The stream counts against MaxConcurrentStreams until its handler
		// returns, not only until it is reset: a flood of open-then-cancel
		// cannot run more handlers than the limit.
		defer c.releaseRunning(s)
		c.cfg.Accept(s, open)
	}()
	return nil
}

func (c *Conn) sendReset(id uint32, err error, notProcessed bool) {
	payload, _ := proto.Marshal(resetPayload(err, notProcessed))
	c.writeUrgent(func(b []byte) []byte {
		return frame.Append(b, frame.Frame{Type: frame.TypeReset, StreamID: id, Payload: payload})
	})
}

func (c *Conn) newStream(id uint32) *Stream {
	return &Stream{
		c:          c,
		id:         id,
		sendCredit: InitialWindow,
		recvWindow: c.cfg.StreamWindow,
		recvNotify: make(chan struct{}, 1),
		sendNotify: make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
}

// remove takes a finished stream out of the table.
func (c *Conn) remove(s *Stream) {
	if s.slotHeld.CompareAndSwap(true, false) {
		<-c.slots // a token is there: this stream put it
	}
	c.mu.Lock()
	c.unlinkLocked(s)
	done := c.drainedLocked()
	c.mu.Unlock()
	if done {
		go c.Close()
	}
}

// unlink takes s out of the stream table; frames for it are then ignored.
func (c *Conn) unlink(s *Stream) {
	c.mu.Lock()
	c.unlinkLocked(s)
	c.mu.Unlock()
}

func (c *Conn) unlinkLocked(s *Stream) {
	if c.streams[s.id] == s {
		delete(c.streams, s.id)
	}
}

// drainedLocked reports whether this is a client connection that drains
// (GOAWAY either way, or its stream ids used up) with no stream left: the
// client has moved to a new connection, and this one is to be closed. It is
// checked wherever either condition starts to hold: when a stream is
// removed, and when the drain begins. c.mu is held.
func (c *Conn) drainedLocked() bool {
	return c.role == RoleClient && (c.localGoAway || c.peerGoAway) && len(c.streams) == 0
}

// releaseRunning takes a server stream out of the running count, once: when
// its END is queued (the handler has returned; the client may open another
// stream as soon as it reads END, and must find the place free) or, if no
// END is sent, when its handler goroutine ends.
func (c *Conn) releaseRunning(s *Stream) {
	if !s.runningReleased.CompareAndSwap(false, true) {
		return
	}
	c.mu.Lock()
	c.running--
	if c.running == 0 && c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
	c.mu.Unlock()
}

// Open starts a stream (clients only). The OPEN frame is queued in stream-id
// order; the returned stream is ready for SendMsg and RecvMsg.
//
// When first is not nil and fits the initial window, it is queued as the
// stream's first message together with the OPEN (and HALF_CLOSE when
// closeSend is set), so that a unary call leaves in one write; otherwise the
// caller sends it with SendMsg. sent reports which happened.
func (c *Conn) Open(ctx context.Context, open *tetherv1.Open, first []byte, closeSend bool) (s *Stream, sent bool, err error) {
	size := proto.Size(open)
	if cost, limit := size+metadataCost(open.GetMetadata()), c.sendHeaderLimit(); cost > limit {
		whose := "this client's"
		if c.cfg.PeerMaxHeaderBytes > 0 {
			whose = "the server's announced"
		}
		return nil, false, tether.Errorf(tether.CodeResourceExhausted, "tether: request metadata of %d bytes exceeds %s limit of %d", cost, whose, limit)
	}
	if c.slots != nil {
		// The server runs at most PeerMaxStreams calls at once: wait for
		// one of ours to end rather than be refused.
		select {
		case c.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, false, tether.AsError(ctx.Err())
		case <-c.draining: // GOAWAY: the call goes to the next connection
			return nil, false, unprocessed(tether.Errorf(tether.CodeUnavailable, "tether: connection is draining"))
		case <-c.closed:
			return nil, false, unprocessed(c.err)
		}
		defer func() {
			if s == nil {
				<-c.slots
			}
		}()
	}
	inline := first != nil && len(first) <= frame.MaxPayload && len(first)+FrameOverhead <= InitialWindow && len(first) <= c.cfg.MaxMessageSize
	var openErr error
	var idle bool // the ids ran out with no stream open: nothing else closes the connection
	err = c.write(ctx, nil, func(b []byte) []byte {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.isClosed() {
			// write checked this before taking c.mu, but closeWith may have
			// swapped the stream table since: a stream added now would never
			// be terminated. Under c.mu the check is final, since closeWith
			// closes c.closed before it takes the table (as handleOpen does
			// on the server).
			openErr = unprocessed(c.err)
			return b
		}
		if c.peerGoAway || c.localGoAway {
			openErr = unprocessed(tether.Errorf(tether.CodeUnavailable, "tether: connection is draining"))
			return b
		}
		if c.nextID > maxStreamID {
			// Stream ids used up: drain this connection; the client
			// opens a new one.
			c.localGoAway = true
			close(c.draining)
			idle = c.drainedLocked()
			openErr = unprocessed(tether.Errorf(tether.CodeUnavailable, "tether: stream ids exhausted on this connection"))
			return b
		}
		start := len(b)
		id := c.nextID
		b = frame.AppendHeader(b, frame.TypeOpen, 0, id, size)
		var merr error
		b, merr = marshalOpts.MarshalAppend(b, open)
		if merr != nil {
			openErr = tether.Errorf(tether.CodeInternal, "tether: encode OPEN: %v", merr)
			return b[:start]
		}
		s = c.newStream(id)
		s.slotHeld.Store(c.slots != nil)
		c.nextID += 2
		c.streams[s.id] = s
		if extra := c.cfg.StreamWindow - InitialWindow; extra > 0 {
			b = frame.AppendWindow(b, s.id, uint32(extra))
		}
		if inline {
			s.sendCredit -= len(first) + FrameOverhead
			b = frame.AppendHeader(b, frame.TypeMessage, 0, s.id, len(first))
			b = append(b, first...)
			if closeSend {
				s.halfClosed = true
				b = frame.AppendHeader(b, frame.TypeHalfClose, 0, s.id, 0)
			}
		}
		return b
	})
	if idle {
		go c.Close()
	}
	if err != nil {
		return nil, false, unprocessed(err)
	}
	if openErr != nil {
		return nil, false, openErr
	}
	return s, inline, nil
}

// sendHeaderLimit is the largest cost (headerCost) of an OPEN, HEADERS or
// END payload this side sends: what the peer announced it accepts, or else
// this side's own limit, and never more than a frame.
func (c *Conn) sendHeaderLimit() int {
	limit := min(c.cfg.MaxHeaderBytes, frame.MaxPayload)
	if p := c.cfg.PeerMaxHeaderBytes; p > 0 {
		limit = min(p, frame.MaxPayload)
	}
	return limit
}

// marshalOpts encodes envelopes straight into the writer's queue, reusing
// the size computed just before.
var marshalOpts = proto.MarshalOptions{UseCachedSize: true}

func resetPayload(err error, notProcessed bool) *tetherv1.Reset {
	e := tether.AsError(err)
	return &tetherv1.Reset{
		Status:      &tetherv1.Status{Code: tetherv1.Code(e.Code()), Message: strings.ToValidUTF8(e.Message(), "\uFFFD")},
		Unprocessed: notProcessed,
	}
}

// String names the connection by its peer's address, for logs.
func (c *Conn) String() string {
	return fmt.Sprintf("tether.Conn(%s)", c.ws.RemoteAddr())
}

// idleFrame counts a frame that carries no application data against
// MaxIdleFrameRate.
func (c *Conn) idleFrame(what string) error {
	if !c.idleLimit.Allow() {
		return &floodError{what}
	}
	return nil
}

// metadataItemCost is what each metadata entry and each value costs against
// MaxHeaderBytes on top of its encoded bytes. An empty value takes 2 bytes
// on the wire but a 16-byte string header both in the decoded message and
// in tether.Metadata, plus slice growth; counting 32 bytes per item (as
// HTTP/2 counts 32 bytes per header field, RFC 9113 section 6.5.2) bounds
// what a payload within the limit costs in memory once decoded, to a few
// times the limit (TestMetadataMemoryBounded).
const metadataItemCost = 32

// The field numbers of the repeated MetadataEntry in tether.v1.Open,
// tether.v1.Headers and tether.v1.End, and of the values in MetadataEntry.
const (
	openMetadataField    = 2
	headersMetadataField = 1
	endTrailersField     = 2
	entryValuesField     = 2
)

// headerCost is what an encoded OPEN, HEADERS or END payload costs against
// MaxHeaderBytes: its length plus metadataItemCost per metadata entry
// (field number field) and per value, counted on the encoded bytes without
// decoding them; entries is the number of entries. Malformed input is
// counted as far as it parses: the decoder rejects it afterwards.
func headerCost(b []byte, field protowire.Number) (cost, entries int) {
	size, items := len(b), 0
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			break
		}
		b = b[l:]
		l = protowire.ConsumeFieldValue(num, typ, b)
		if l < 0 {
			break
		}
		if num == field && typ == protowire.BytesType {
			entries++
			items++
			entry, _ := protowire.ConsumeBytes(b[:l])
			items += countField(entry, entryValuesField)
		}
		b = b[l:]
	}
	return size + items*metadataItemCost, entries
}

// countField counts the occurrences of field number field in an encoded
// message, as far as it parses.
func countField(b []byte, field protowire.Number) int {
	n := 0
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return n
		}
		b = b[l:]
		if l = protowire.ConsumeFieldValue(num, typ, b); l < 0 {
			return n
		}
		if num == field {
			n++
		}
		b = b[l:]
	}
	return n
}

// metadataCost is what md costs against MaxHeaderBytes beyond its encoded
// size (headerCost), for a sender.
func metadataCost(md []*tetherv1.MetadataEntry) int {
	items := len(md)
	for _, e := range md {
		items += len(e.GetValues())
	}
	return items * metadataItemCost
}
