package server

// Application cursors of resumable server streams (docs/PROTOCOL.md,
// "Resumable streams"): the handler attaches a cursor to each message it
// sends (ServerStream.SendWithCursor), the client keeps the cursor of the
// last message it consumed, and a re-attachment that reaches a server that
// does not hold the stream (another replica, or this one after a restart)
// runs the handler again with that cursor (ResumeCursor).

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/wire"
)

// MaxResumeCursor is the largest cursor SendWithCursor accepts, and a
// re-attaching client may send back: 1024 bytes.
const MaxResumeCursor = wire.MaxCursor

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
func (s *ServerStream[Res]) SendWithCursor(msg *Res, cursor []byte) error {
	if len(cursor) > MaxResumeCursor {
		return tether.Errorf(tether.CodeInternal, "tether: cursor of %d bytes; at most %d", len(cursor), MaxResumeCursor)
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
		b = wire.AppendCursor(make([]byte, 0, 1+len(c.cursor)+proto.Size(msg)), c.cursor)
		c.mu.Unlock()
	}
	return proto.MarshalOptions{}.MarshalAppend(b, msg)
}
