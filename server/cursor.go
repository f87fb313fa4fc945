package server

// Application cursors of resumable streams (docs/PROTOCOL.md, "Resumable
// streams"): the handler attaches a cursor to messages it sends
// (SendWithCursor, and Checkpoint on client-streaming and bidi streams),
// the client keeps the cursor of the last message it consumed, and a
// re-attachment that reaches a server that does not hold the stream
// (another replica, or this one after a restart) runs the handler again
// with that cursor (ResumeCursor). Server streams do so always;
// client-streaming and bidi streams when their method is marked
// (tether.v1.resume_from_cursor, Spec.ResumeFromCursor): their cursors also
// carry the number of requests the handler had received, and a restarted
// run reads the requests after those.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"strconv"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/wire"
)

// MaxResumeCursor is the largest cursor SendWithCursor accepts, and a
// re-attaching client may send back: 1024 bytes, including the 16 bytes of
// the seal when cursors are sealed (WithResumeCursorKeys).
const MaxResumeCursor = wire.MaxCursor

// cursorSealSize is the size of the HMAC-SHA256 tag a sealed cursor ends
// with (truncated, as HMAC allows).
const cursorSealSize = 16

// WithResumeCursorKeys seals the cursors of resumable server streams
// (SendWithCursor) with HMAC-SHA256 under keys[0], over the cursor, the
// stream's resume token, the caller's principal (by value, as
// Identity.Principal describes: strings and plain values by their printed
// form with their type, as earlier versions sealed, so that servers of
// both versions accept each other's cursors) and the procedure; a re-attachment that would restart a stream is
// accepted when the seal verifies under any of keys (list the new key
// first and keep the old ones while streams sealed with them may still
// come back). A client then cannot forge a cursor, nor take one to another
// stream, principal or procedure: a cursor that does not verify is
// answered aborted ("unknown or expired resume token", as a token of
// another principal is). Give every replica the same keys, of at least 32
// random bytes each. The seal adds 16 bytes to every cursor on the wire,
// and ResumeCursor returns the cursor without it. Without this option
// cursors are not sealed, and handlers must treat them as the client's
// claim (ResumeCursor).
func WithResumeCursorKeys(keys ...[]byte) Option {
	return func(c *config) { c.cursorKeys = keys }
}

// cursorMode is what a session's messages are prefixed with.
type cursorMode uint8

const (
	cursorsNone cursorMode = iota // no prefix
	// cursorsOnly: a server stream's cursor prefix (wire.AppendCursor).
	cursorsOnly
	// cursorsWithRequests: a client-streaming or bidi stream of a marked
	// procedure: the cursor, the requests it covers, and checkpoints
	// (wire.AppendCursorPrefix).
	cursorsWithRequests
	// cursorsRefused: the client asked for cursors on a client-streaming
	// or bidi procedure that is not marked.
	cursorsRefused
)

// modeFor returns the cursor mode of a resumable stream of spec whose
// client asked for cursors (asked) or not.
func modeFor(spec tether.Spec, asked bool) cursorMode {
	switch {
	case !asked || spec.StreamType == tether.StreamTypeUnary:
		return cursorsNone
	case spec.StreamType == tether.StreamTypeServer:
		return cursorsOnly
	case spec.ResumeFromCursor:
		return cursorsWithRequests
	}
	return cursorsRefused
}

// sealCursor returns cursor with its seal under key; in
// cursorsWithRequests mode the seal covers the request count too.
func sealCursor(key []byte, x *session, procedure string, cursor []byte, requests uint64) []byte {
	return append(cursor[:len(cursor):len(cursor)], cursorMAC(key, x.token, x.sealForm, procedure, cursor, x.cursors, requests)...)
}

// openCursor returns the cursor a sealed one carries, if its seal verifies
// under one of keys for one of the principal's forms
// (principal.SealForms).
func openCursor(keys [][]byte, token string, principalForms []string, procedure string, sealed []byte, mode cursorMode, requests uint64) ([]byte, bool) {
	if len(sealed) < cursorSealSize {
		return nil, false
	}
	cursor, tag := sealed[:len(sealed)-cursorSealSize], sealed[len(sealed)-cursorSealSize:]
	for _, k := range keys {
		for _, f := range principalForms {
			if hmac.Equal(tag, cursorMAC(k, token, f, procedure, cursor, mode, requests)) {
				return cursor, true
			}
		}
	}
	return nil, false
}

// cursorMAC seals cursor. principalForm is what the seal covers of the
// caller (principal.SealForms): for strings and plain values, their
// printed form with their type, as earlier versions sealed.
func cursorMAC(key []byte, token string, principalForm string, procedure string, cursor []byte, mode cursorMode, requests uint64) []byte {
	m := hmac.New(sha256.New, key)
	var b []byte
	fields := []string{"tether resume cursor v1", token, principalForm, procedure, string(cursor)}
	if mode == cursorsWithRequests {
		// Server streams' seals stay as they were, so that servers of
		// both versions accept each other's.
		fields = append(fields, "requests", strconv.FormatUint(requests, 10))
	}
	for _, f := range fields {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	m.Write(b)
	return m.Sum(nil)[:cursorSealSize]
}

type resumeCursorKey struct{}

// resumeCursor is what a restarted handler run continues from.
type resumeCursor struct {
	cursor   []byte
	consumed uint64
	requests uint64 // client-streaming and bidi: the requests the cursor covers
}

// ResumeCursor reports whether ctx is the context of a handler run that
// continues a resumable stream its client had opened elsewhere (on
// another replica, or on this server before it restarted), and returns the
// cursor that the previous run attached (SendWithCursor, Checkpoint) to the
// last message the client consumed. The cursor is nil when the client had
// consumed no message of a server stream: start from the beginning. Send
// the messages after the cursor: the client sees them right after the ones
// it has, each message once. A client-streaming or bidi handler (a method
// marked (tether.v1.resume_from_cursor)) is run again only from a cursor;
// its Receive returns the requests after the ones the cursor covers
// (ResumeRequests), each once.
//
// A handler that never sends cursors is run again this way only when its
// client had consumed none of its messages (then it starts over, with ok
// true and a nil cursor): a resumable server stream's handler may run more
// than once, on several servers, like a retried call.
//
// The cursor is the client's claim, not the server's memory: a client can
// send any bytes (at most MaxResumeCursor) with a token this server does not
// hold. The run is authenticated and intercepted like any call, on the
// principal of the connection the client re-attached on; the handler must
// validate the cursor as it would a request field (that it parses, that
// this principal may read from there, and that it is not older than what
// the log still holds, failing with a code such as out_of_range instead of
// skipping silently). Sign or encrypt cursors that must not be forged.
func ResumeCursor(ctx context.Context) (cursor []byte, ok bool) {
	rc, ok := ctx.Value(resumeCursorKey{}).(*resumeCursor)
	if !ok {
		return nil, false
	}
	return rc.cursor, true
}

// ResumeRequests returns, in a client-streaming or bidi handler run that
// ResumeCursor says continues a stream, the number of requests the
// previous runs had received when they attached the cursor: this run's
// first Receive returns request n+1. It is part of the client's claim, like
// the cursor (sealed with it under WithResumeCursorKeys): a handler that
// also records the count in its cursor can check that they agree. It
// returns 0 and false in other runs.
func ResumeRequests(ctx context.Context) (n uint64, ok bool) {
	rc, ok := ctx.Value(resumeCursorKey{}).(*resumeCursor)
	if !ok {
		return 0, false
	}
	return rc.requests, true
}

// SendWithCursor sends one response, like Send, and attaches cursor to it:
// the application's position of this message (an event id, a log offset),
// at most MaxResumeCursor bytes. On a resumable stream whose client asked for
// cursors, the client keeps the cursor of the last message it consumed; if
// it has to re-attach to a server that does not hold the stream, that server
// runs the handler again and ResumeCursor returns the cursor. On other
// streams the cursor is not sent. A message sent with Send carries no
// cursor: a client whose last message has none cannot be restarted (its
// re-attachment fails with aborted instead).
//
// With WithResumeCursorKeys, the cursor is sealed: it may have at most
// MaxResumeCursor-16 bytes.
func (s *ServerStream[Res]) SendWithCursor(msg *Res, cursor []byte) error {
	if err := s.c.checkCursor(cursor); err != nil {
		return err
	}
	if s.c == nil {
		return s.Send(msg)
	}
	s.c.setCursor(cursor)
	defer s.c.setCursor(nil)
	return s.st.Send(any(msg).(proto.Message))
}

func (c *call) setCursor(cursor []byte) {
	c.mu.Lock()
	c.cursor = cursor
	c.mu.Unlock()
}

// marshalResume encodes msg for a session: with its cursor prefix when
// the session carries cursors.
func (c *call) marshalResume(msg proto.Message) ([]byte, error) {
	var b []byte
	switch c.rs.cursors {
	case cursorsOnly:
		c.mu.Lock()
		cursor := c.cursor
		c.mu.Unlock()
		if keys := c.rs.r.keys; len(keys) > 0 && cursor != nil {
			cursor = sealCursor(keys[0], c.rs, c.spec.Procedure, cursor, 0)
		}
		b = wire.AppendCursor(make([]byte, 0, 2+len(cursor)+proto.Size(msg)), cursor)
	case cursorsWithRequests:
		c.mu.Lock()
		cursor := c.cursor
		c.mu.Unlock()
		b = c.cursorPrefix(cursor, false, proto.Size(msg))
	}
	return proto.MarshalOptions{}.MarshalAppend(b, msg)
}

// cursorPrefix returns a new buffer with room for size more bytes that
// holds the prefix of a cursorsWithRequests message: cursor (sealed when
// the server has keys) with the number of requests the handler has
// received.
func (c *call) cursorPrefix(cursor []byte, checkpoint bool, size int) []byte {
	requests := c.rs.recvd.Load()
	if keys := c.rs.r.keys; len(keys) > 0 && cursor != nil {
		cursor = sealCursor(keys[0], c.rs, c.spec.Procedure, cursor, requests)
	}
	return wire.AppendCursorPrefix(make([]byte, 0, 2+len(cursor)+10+size), cursor, requests, checkpoint)
}

// checkCursor checks the size of a cursor a handler attaches.
func (c *call) checkCursor(cursor []byte) error {
	limit := MaxResumeCursor
	if c != nil && c.rs != nil && len(c.rs.r.keys) > 0 {
		limit -= cursorSealSize
	}
	if len(cursor) > limit {
		return tether.Errorf(tether.CodeInternal, "tether: cursor of %d bytes; at most %d", len(cursor), limit)
	}
	return nil
}

// sendWithCursor is SendWithCursor of client-streaming and bidi streams.
func (c *call) sendWithCursor(st Stream, msg proto.Message, cursor []byte) error {
	if err := c.checkCursor(cursor); err != nil {
		return err
	}
	if c == nil {
		return st.Send(msg)
	}
	c.setCursor(cursor)
	defer c.setCursor(nil)
	return st.Send(msg)
}

// checkpoint is Checkpoint: a message with the cursor and no application
// message, in cursorsWithRequests mode; nothing otherwise.
func (c *call) checkpoint(cursor []byte) error {
	if len(cursor) == 0 {
		return tether.Errorf(tether.CodeInternal, "tether: Checkpoint with an empty cursor")
	}
	if err := c.checkCursor(cursor); err != nil {
		return err
	}
	if c == nil || c.rs == nil || c.rs.cursors != cursorsWithRequests {
		return nil
	}
	if err := c.flushHeader(); err != nil {
		return err
	}
	return c.rs.send(c.cursorPrefix(cursor, true, 0))
}

// SendWithCursor sends one response, like Send, and attaches cursor to it:
// the application's position in its durable log once it has applied every
// request this handler has received so far (Receive has returned them),
// at most MaxResumeCursor bytes (MaxResumeCursor-16 with
// WithResumeCursorKeys). Attach it only once the effects of those requests
// are durable: if the client re-attaches to a server that does not hold
// the stream (another replica, or this one after a restart), that server
// runs the handler again with the cursor (ResumeCursor), and the new run
// receives the requests after those, each once. A request that another
// goroutine's Receive returned before this call counts as received.
//
// Cursors are sent when the method is marked
// (tether.v1.resume_from_cursor) and its client asked for them; otherwise
// SendWithCursor is Send. A message sent with Send carries no cursor: a
// client whose last message consumed has none cannot be restarted (its
// re-attachment to another server fails with aborted).
//
// The client keeps every request the last cursor it consumed does not
// cover, within its replay buffer (client.WithResumeBuffer, 1 MiB by
// default), and its Send waits while that is full: a handler must attach
// a cursor (SendWithCursor or Checkpoint) at least once per replay
// buffer's worth of requests.
func (s *BidiStream[Req, Res]) SendWithCursor(msg *Res, cursor []byte) error {
	return s.c.sendWithCursor(s.st, any(msg).(proto.Message), cursor)
}

// Checkpoint sends cursor to the client without a response message: the
// application's position in its durable log once it has applied every
// request this handler has received so far. Call it only once the effects
// of those requests are durable; see SendWithCursor for what the cursor is
// for and how often to attach one. The client library consumes checkpoints
// itself (the application never sees them), also while it only sends.
// Response headers are sent before the first checkpoint: set them before.
// Checkpoint needs a cursor of at least one byte; on a stream without
// cursors it does nothing.
func (s *BidiStream[Req, Res]) Checkpoint(cursor []byte) error { return s.c.checkpoint(cursor) }

// Checkpoint sends cursor to the client without a response message: the
// application's position in its durable log once it has applied every
// request this handler has received so far. Call it only once the effects
// of those requests are durable: if the client re-attaches to a server that
// does not hold the stream (another replica, or this one after a restart),
// that server runs the handler again with the cursor (ResumeCursor), and
// the new run receives the requests after those, each once; it must
// compute its response from its log. Checkpoints are sent when the method
// is marked (tether.v1.resume_from_cursor) and its client asked for
// cursors; otherwise Checkpoint does nothing. The cursor has 1 to
// MaxResumeCursor bytes (MaxResumeCursor-16 with WithResumeCursorKeys).
//
// The client library consumes checkpoints itself, also while it only
// sends. It keeps every request the last checkpoint does not cover, within
// its replay buffer (client.WithResumeBuffer, 1 MiB by default), and its
// Send waits while that is full: checkpoint at least once per replay
// buffer's worth of requests. The response the handler returns carries no
// cursor. Response headers are sent before the first checkpoint: set them
// before.
func (s *ClientStream[Req]) Checkpoint(cursor []byte) error { return s.c.checkpoint(cursor) }
