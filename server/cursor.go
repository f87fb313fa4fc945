package server

// Application cursors of resumable server streams (docs/PROTOCOL.md,
// "Resumable streams"): the handler attaches a cursor to each message it
// sends (ServerStream.SendWithCursor), the client keeps the cursor of the
// last message it consumed, and a re-attachment that reaches a server that
// does not hold the stream (another replica, or this one after a restart)
// runs the handler again with that cursor (ResumeCursor).

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

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
// stream's resume token, the caller's principal (its printed form with its
// type) and the procedure; a re-attachment that would restart a stream is
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

// sealCursor returns cursor with its seal under key.
func sealCursor(key []byte, x *session, procedure string, cursor []byte) []byte {
	return append(cursor[:len(cursor):len(cursor)], cursorMAC(key, x.token, x.principal, procedure, cursor)...)
}

// openCursor returns the cursor a sealed one carries, if its seal verifies
// under one of keys.
func openCursor(keys [][]byte, token string, principal any, procedure string, sealed []byte) ([]byte, bool) {
	if len(sealed) < cursorSealSize {
		return nil, false
	}
	cursor, tag := sealed[:len(sealed)-cursorSealSize], sealed[len(sealed)-cursorSealSize:]
	for _, k := range keys {
		if hmac.Equal(tag, cursorMAC(k, token, principal, procedure, cursor)) {
			return cursor, true
		}
	}
	return nil, false
}

func cursorMAC(key []byte, token string, principal any, procedure string, cursor []byte) []byte {
	m := hmac.New(sha256.New, key)
	var b []byte
	for _, f := range []string{"tether resume cursor v1", token, fmt.Sprintf("%T:%#v", principal, principal), procedure, string(cursor)} {
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
}

// ResumeCursor reports whether ctx is the context of a handler run that
// continues a resumable server stream its client had opened elsewhere (on
// another replica, or on this server before it restarted), and returns the
// cursor that the previous run attached (SendWithCursor) to the last
// message the client consumed. The cursor is nil when the client had
// consumed no message: start from the beginning. Send the messages after
// the cursor: the client sees them right after the ones it has, each
// message once.
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
	limit := MaxResumeCursor
	if s.c != nil && s.c.rs != nil && len(s.c.rs.r.keys) > 0 {
		limit -= cursorSealSize
	}
	if len(cursor) > limit {
		return tether.Errorf(tether.CodeInternal, "tether: cursor of %d bytes; at most %d", len(cursor), limit)
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
	if c.rs.cursors {
		c.mu.Lock()
		cursor := c.cursor
		c.mu.Unlock()
		if keys := c.rs.r.keys; len(keys) > 0 && cursor != nil {
			cursor = sealCursor(keys[0], c.rs, c.spec.Procedure, cursor)
		}
		b = wire.AppendCursor(make([]byte, 0, 2+len(cursor)+proto.Size(msg)), cursor)
	}
	return proto.MarshalOptions{}.MarshalAppend(b, msg)
}
