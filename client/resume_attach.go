package client

// Re-attaching a resumable stream (resume.go) after its connection was
// lost: reattach waits for the client's next connection and opens the
// stream again with its token (attachOnce); replay sends the requests the
// server's answer says it has not consumed. The locks are resume.go's:
// reattachMu → sendMu → mu.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/mux"
)

func notResumed(format string, args ...any) error {
	return tether.NewError(tether.CodeAborted, fmt.Errorf("%w: %s", ErrNotResumed, fmt.Sprintf(format, args...)))
}

// reattach moves the stream to the client's next connection, unless another
// goroutine has already done so since attachment gen.
func (rs *resumeStream) reattach(gen uint64) error {
	rs.reattachMu.Lock()
	defer rs.reattachMu.Unlock()
	for {
		rs.mu.Lock()
		old, cur, failed := rs.st, rs.gen, rs.failed
		rs.mu.Unlock()
		if failed != nil {
			return failed
		}
		if cur != gen {
			return nil
		}
		<-old.Done() // its consumed count is final
		rs.mu.Lock()
		fresh := old == rs.first && old.NeverSent()
		rs.mu.Unlock()
		err := rs.attachOnce(old.Seq(), fresh)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errLostAgain) {
			return rs.fail(err)
		}
		rs.mu.Lock()
		gen = rs.gen
		rs.mu.Unlock()
	}
}

var errLostAgain = errors.New("connection lost during re-attachment")

// attachOnce opens the stream again on the next connection and replays.
// fresh says the first OPEN never left: the server has never seen the
// stream, so it is opened again as new, with the same token.
func (rs *resumeStream) attachOnce(consumed uint64, fresh bool) error {
	ctx, cancel := context.WithTimeout(rs.ctx, rs.grace)
	defer cancel()
	for {
		conn, err := rs.c.getConn(ctx, false)
		if err != nil {
			if rs.ctx.Err() != nil {
				return tether.AsError(context.Cause(rs.ctx))
			}
			return notResumed("no connection within the grace period of %v: %v", rs.grace, err)
		}
		if conn.PeerResumeGrace() == 0 || rs.cursors && conn.PeerResumeCursors() == 0 || rs.withRequests && conn.PeerResumeCursors() < 2 {
			return notResumed("the server no longer resumes streams")
		}
		open := proto.Clone(rs.open).(*tetherv1.Open)
		if !fresh {
			open.Resume = &tetherv1.Resume{Token: rs.open.GetResume().GetToken(), Attach: true, Consumed: consumed, Cursors: rs.cursors}
			rs.mu.Lock()
			switch {
			case !rs.cursors:
			case rs.withRequests:
				// Restartable only from a cursor: the first run's
				// effects are known up to there.
				if consumed > 0 && rs.cursorSeq == consumed && rs.hasCursor {
					open.Resume.Cursor = bytes.Clone(rs.cursor)
					open.Resume.CursorRequests = rs.covered
				}
			case consumed == 0:
				open.Resume.Cursor = []byte{}
			case rs.cursorSeq == consumed && rs.hasCursor:
				open.Resume.Cursor = bytes.Clone(rs.cursor)
			}
			rs.mu.Unlock()
		}
		if err := setTimeout(rs.ctx, open); err != nil {
			return tether.AsError(err)
		}
		st, _, err := conn.Open(ctx, open, nil, false)
		if err != nil {
			if errors.Is(err, mux.ErrUnprocessed) && ctx.Err() == nil {
				// The connection went (or drains) before the OPEN left:
				// wait for the next one.
				select {
				case <-conn.Done():
					rs.c.awaitConnGone(ctx, conn)
				case <-conn.Draining():
				case <-ctx.Done():
				}
				continue
			}
			if rs.ctx.Err() != nil {
				return tether.AsError(context.Cause(rs.ctx))
			}
			return notResumed("%v", err)
		}
		if fresh {
			rs.mu.Lock()
			rs.first = st
			rs.mu.Unlock()
			return rs.replay(conn, st, 0, false)
		}
		st.SetSeq(consumed)
		hdr, err := st.Header(ctx)
		if err != nil {
			st.Reset(err)
			if rs.ctx.Err() != nil {
				return tether.AsError(context.Cause(rs.ctx))
			}
			return notResumed("no answer within the grace period of %v", rs.grace)
		}
		ack := st.ResumeAck()
		if ack == nil {
			_, rerr := st.RecvMsg()
			if st.ConnClosed() {
				continue
			}
			st.Reset(tether.Errorf(tether.CodeAborted, "tether: not resumed"))
			if rerr == nil || errors.Is(rerr, io.EOF) {
				return notResumed("the server did not resume the stream")
			}
			return notResumed("%s", tether.AsError(rerr).Message())
		}
		if len(hdr) > 0 {
			rs.mu.Lock()
			if rs.laterHdr == nil {
				rs.laterHdr = hdr
			}
			rs.mu.Unlock()
		}
		if ack.GetRestarted() && (!rs.cursors || open.Resume.Cursor == nil) {
			st.Reset(tether.Errorf(tether.CodeAborted, "tether: not resumed"))
			return notResumed("the server restarted a stream it had no cursor for")
		}
		if rs.withRequests {
			if ack.GetRestarted() && ack.GetConsumed() != open.Resume.GetCursorRequests() {
				st.Reset(tether.Errorf(tether.CodeAborted, "tether: not resumed"))
				return notResumed("the server restarted after request %d, not %d", ack.GetConsumed(), open.Resume.GetCursorRequests())
			}
			// A new run reads the requests after the cursor's, as
			// the old one would after the ones it consumed.
			return rs.replay(conn, st, ack.GetConsumed(), false)
		}
		return rs.replay(conn, st, ack.GetConsumed(), ack.GetRestarted())
	}
}

// replay makes st the attachment and sends the requests the server has not
// consumed, and HALF_CLOSE if the caller had sent it. restarted says a new
// run of the handler reads the requests from the first: the request is sent
// again.
func (rs *resumeStream) replay(conn *mux.Conn, st *mux.Stream, consumed uint64, restarted bool) error {
	rs.sendMu.Lock()
	defer rs.sendMu.Unlock()
	rs.mu.Lock()
	if rs.failed != nil { // closed meanwhile
		err := rs.failed
		rs.mu.Unlock()
		st.Reset(err)
		return err
	}
	if consumed > rs.sent {
		rs.mu.Unlock()
		st.Reset(tether.Errorf(tether.CodeAborted, "tether: not resumed"))
		return notResumed("the server claims %d requests of %d sent", consumed, rs.sent)
	}
	if restarted && rs.sent > 0 {
		// A server stream has one request, kept in rs.req.
		rs.out, rs.outBytes = []sentMsg{{seq: 1, b: rs.req}}, len(rs.req)
	}
	if rs.withRequests {
		// Requests the server consumed stay until a cursor covers them:
		// another server may need them.
		rs.acked = max(rs.acked, consumed)
		rs.trimLocked(min(rs.acked, rs.covered))
	} else {
		rs.trimLocked(consumed)
	}
	skip := 0
	for skip < len(rs.out) && rs.out[skip].seq <= consumed {
		skip++
	}
	if skip == 0 && len(rs.out) > 0 && rs.out[0].seq != consumed+1 {
		rs.mu.Unlock()
		st.Reset(tether.Errorf(tether.CodeAborted, "tether: not resumed"))
		return notResumed("request %d is no longer buffered", consumed+1)
	}
	replay := append([]sentMsg(nil), rs.out[skip:]...)
	closed := rs.closedSend
	rs.st, rs.conn = st, conn
	rs.gen++
	rs.wakeLocked()
	rs.mu.Unlock()
	if rs.ctx.Err() != nil {
		st.Reset(tether.AsError(context.Cause(rs.ctx)))
	}
	st.OnAck(rs.onAck)
	for _, m := range replay {
		if err := st.SendMsg(rs.ctx, m.b); err != nil {
			if rs.lost(st) {
				return errLostAgain
			}
			return nil // the stream ended: Receive has its status
		}
	}
	if closed {
		if err := st.CloseSend(rs.ctx); err != nil && rs.lost(st) {
			return errLostAgain
		}
	}
	return nil
}

// awaitConnGone waits until no connection manager of c offers conn any
// more (it has noticed that conn closed), or ctx ends: until then getConn
// hands conn out again, and a re-attachment would spin on it.
func (c *Client) awaitConnGone(ctx context.Context, conn *mux.Conn) {
	for {
		c.mu.Lock()
		offered := false
		for _, s := range c.subs {
			offered = offered || s.st == StateReady && s.conn == conn
		}
		ch := c.changed
		c.mu.Unlock()
		if !offered {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}
