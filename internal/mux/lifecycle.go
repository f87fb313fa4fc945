package mux

// Closing, lingering and draining (GOAWAY).
//
// Any goroutine may call Close, ClosePolicy, CloseGoingAway, GoAway and
// Shutdown. closeWith is the one way a connection closes: once
// (closeOnce), on whichever goroutine gets there first (the application's,
// the reader on a read or protocol error, the writer on a write error or
// at the end of a graceful close, a writeUrgent caller on queue overflow),
// with neither of the connection's locks nor a stream's mu held. It
// closes closed, cancels the contexts (cancelContexts, under mu), stops
// the heartbeat, sends the close frame (wsWriter), empties the stream
// table under mu and then terminates each stream (its mu, then mu again
// through remove). Other callers of closeWith block until the first has
// returned.
//
// After a close frame the socket lingers (linger; a server half-closes
// it, a client leaves the TCP close to the server): the reader goroutine
// discards what still arrives (drain, discard) until the peer's close
// frame, its FIN or closeLinger, then closes the socket; readerExit, on the
// reader goroutine too, stops new writers, waits for the running one (wg)
// and calls Config.OnClose.
//
// handleGoAway runs on the reader goroutine. The drain state (localGoAway,
// peerGoAway, draining, running, idle) is guarded by mu; closeAfterFlush
// and readerExit take wmu. Each lock is taken alone.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// Close closes the connection at once with close code 1000; every open
// stream fails with unavailable. It is idempotent.
func (c *Conn) Close() {
	c.closeWith(tether.NewError(tether.CodeUnavailable, errConnClosed), websocket.CloseNormalClosure, "")
}

// errConnClosed is the message of a connection closed by this side: the
// *tether.Error around it is each connection's own (a caller may add
// details to it), the message needs no formatting.
var errConnClosed = errors.New("tether: connection closed")

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
	if !c.peerGoAway && c.draining != nil {
		close(c.draining)
	}
	c.mu.Unlock()
	payload, _ := proto.Marshal(&tetherv1.GoAway{LastStreamId: last, Code: tetherv1.Code(code), Message: msg})
	c.writeUrgent(func(b []byte) []byte {
		return frame.Append(b, frame.Frame{Type: frame.TypeGoAway, Payload: payload})
	})
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
	if !c.localGoAway && c.draining != nil {
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
		s.drop() // the table's hold, taken out of it above
	}
	if idle {
		go c.Close()
	}
	return nil
}

// closeWith closes the connection with err, sending a close frame with code
// when code is not 0. It is safe from any goroutine and idempotent.
func (c *Conn) closeWith(err error, code int, text string) {
	c.closeOnce.Do(func() {
		if code == closeSent || code == 0 {
			// Before anything else: no data after a close frame gorilla
			// wrote (over the read limit, or a protocol error, which
			// comes here with code 0), nor on a socket closed at once.
			c.wsw.closeSent.Store(true)
		}
		c.err = err
		close(c.closed)
		c.cancelContexts(err)
		c.pingTimer.Stop()
		switch code {
		case 0:
			_ = c.ws.Close()
		case closeSent:
			c.linger()
		default:
			_ = c.wsw.writeControl(websocket.CloseMessage, closeMessage(code, text), time.Now().Add(250*time.Millisecond))
			c.linger()
		}
		// A reader parked in the shared poller would not see the socket
		// close (it leaves the poller's set when closed): start it, to
		// drain and close as a blocked reader would.
		c.unpark(true)
		// So would a unary caller reading its own reply (readFor), which
		// waits for the socket, not for its stream's end.
		c.cutCaller()
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
			s.drop() // the table's hold: the table was replaced above
		}
		// Checked first: the arguments alone (the peer's address as a
		// string, two values boxed) cost every connection's close three
		// allocations with debug logging off.
		if c.cfg.Logger.Enabled(context.Background(), slog.LevelDebug) {
			c.cfg.Logger.Debug("tether connection closed", "peer", c.ws.RemoteAddr().String(), "err", err)
		}
	})
}

// cancelContexts cancels the connection's context, if it was made, and the
// context of every stream in the table, with err as their cause, at once
// (the streams are terminated after the close frame). A server stream's
// context is not a child of the connection's: a child would leave the
// connection's context a map of children, kept for the connection's life
// after the first call. handleOpen adds a stream only while c.closed is
// open, under mu, so none escapes.
func (c *Conn) cancelContexts(err error) {
	c.mu.Lock()
	if c.cancel != nil {
		c.cancel(err)
	}
	streams := make([]*Stream, 0, len(c.streams))
	for _, s := range c.streams {
		s.hold()
		streams = append(streams, s)
	}
	c.mu.Unlock()
	// A stream's context is made lazily under its own mu (Stream.Context),
	// which is taken before mu elsewhere (remove): each alone. A context
	// made after this is canceled by terminate, which closeWith calls next.
	for _, s := range streams {
		s.mu.Lock()
		cancel := s.cancelCtx
		onEnd := s.endedLocked(err)
		s.mu.Unlock()
		if cancel != nil {
			cancel(err)
		}
		if onEnd != nil {
			onEnd.StreamEnded(err)
		}
		s.drop()
	}
}

// closeSent, as closeWith's code, says that gorilla/websocket has already
// sent the close frame (1009 for a message over the read limit): the
// connection lingers without sending another.
const closeSent = -1

// closeLinger bounds how long a connection that sent a close frame keeps
// reading before it closes the socket.
const closeLinger = time.Second

// linger leaves it to the reader, after the close frame, to drain what the
// peer still sends, until the peer's own close frame, its FIN or
// closeLinger. Closing at once would make the kernel answer unread data (a
// flood the peer is still sending) with a reset, and the peer would lose
// the close frame and its code. The reader closes the socket.
//
// A server also half-closes the socket (FIN) at once. A client does not:
// the server answers the close frame and closes the TCP connection first
// (RFC 6455 section 7.1.1), so that the TIME_WAIT is the server's and not
// on the client's ephemeral port; a client whose server does neither
// closes after closeLinger.
func (c *Conn) linger() {
	until := time.Now().Add(closeLinger)
	c.lingerUntil.Store(until.UnixNano())
	_ = c.ws.SetReadDeadline(until)
	if c.role == RoleServer {
		halfClose(c.ws)
	}
}

// halfClose shuts the sending side of ws's socket (a FIN after what was
// written), where the socket supports it (TCP, TLS).
func halfClose(ws *websocket.Conn) {
	if hc, ok := ws.NetConn().(interface{ CloseWrite() error }); ok {
		_ = hc.CloseWrite()
	}
}

// drain discards what the peer still sends after the connection closed,
// until the peer's close frame, its FIN or the linger deadline, then closes
// the socket.
func (c *Conn) drain() {
	// A closeWith running in another goroutine may not have written its
	// close frame yet: wait for it (closeOnce.Do blocks until the first
	// call returns; if none ran, this one closes).
	var err error
	if !c.isClosed() {
		// Only the first closeWith keeps its error; an error built for
		// a connection already closed (the usual case here) would be
		// garbage at once.
		err = tether.NewError(tether.CodeUnavailable, errConnClosed)
	}
	c.closeWith(err, 0, "")
	if c.lingerUntil.Load() != 0 {
		// No read limit while draining: over it, gorilla/websocket would
		// write a close frame (1009) of its own after this side's.
		c.ws.SetReadLimit(0)
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
		if closeErrorOf(err) == nil {
			_, _ = io.Copy(io.Discard, ws.NetConn())
		}
		return
	}
}

// closeMessage is a close frame's payload: code and text, cut to 120
// bytes at a UTF-8 boundary.
func closeMessage(code int, text string) []byte {
	if len(text) > 120 {
		text = strings.ToValidUTF8(text[:120], "")
	}
	return websocket.FormatCloseMessage(code, text)
}

// Refuse closes a freshly upgraded ws with code and reason, as a lingering
// close: the close frame, a half-close, then what the peer sends is read
// and dropped until its close frame, its FIN or closeLinger, so that the
// close frame is not lost to a reset.
func Refuse(ws *websocket.Conn, code int, reason string) {
	_ = ws.WriteControl(websocket.CloseMessage, closeMessage(code, reason), time.Now().Add(time.Second))
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

// CloseClientProtocolError is the close code a client that cannot send
// 1002 (a browser: its WebSocket API sends only 1000 and 3000–4999) uses
// when it detects a protocol error; the Go peer treats it like 1002 from
// the peer and logs it as a warning, like 1002 (docs/PROTOCOL.md, section 13).
const CloseClientProtocolError = 4002

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
