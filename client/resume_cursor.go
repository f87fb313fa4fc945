package client

// Client-streaming and bidi streams that restart from the handler's cursor
// (docs/PROTOCOL.md, "Resumable streams"; a method marked
// (tether.v1.resume_from_cursor) on a server that announced
// Tether-Resume-Cursors 2).
//
// Each response carries a prefix (wire.SplitCursorPrefix): the handler's
// cursor, if any, with R, the number of requests it had received when it
// attached it; a checkpoint carries a cursor and no response. Responses
// are consumed in order, by Receive, or, when nobody is in Receive, by
// Send and CloseSend without waiting, so that a caller that only sends
// still sees checkpoints: a response that is not a checkpoint is then kept
// in pending for the next Receive, and nothing behind it is taken. The
// goroutine that takes responses off the attachment holds recvTok.
//
// A request leaves the replay buffer once the server acknowledged it and
// the cursor of the last response consumed covers it (R): if the stream
// has to restart on another server from that cursor, the new run reads the
// requests after R, which the client then still has.

import (
	"bytes"
	"errors"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/mux"
	"github.com/tetherrpc/tether/internal/wire"
)

// take consumes response b, just taken off st: it keeps its cursor and R
// and returns the application message, or checkpoint true.
func (rs *resumeStream) take(st *mux.Stream, b []byte) (msg []byte, checkpoint bool, err error) {
	cursor, requests, checkpoint, msg, err := wire.SplitCursorPrefix(b)
	rs.mu.Lock()
	if err == nil && cursor != nil && (requests < rs.covered || requests > rs.sent) {
		err = errors.New("request count out of order")
	}
	if err != nil {
		rs.mu.Unlock()
		err = tether.Errorf(tether.CodeInternal, "tether: response of %s: %v", rs.open.GetProcedure(), err)
		st.Reset(err)
		return nil, false, rs.fail(err)
	}
	rs.cursorSeq, rs.hasCursor = st.Seq(), cursor != nil
	if cursor != nil {
		rs.cursor = append(rs.cursor[:0], cursor...) // b is pooled
		rs.covered = requests
		rs.trimLocked(min(rs.acked, rs.covered))
	}
	rs.mu.Unlock()
	return msg, checkpoint, nil
}

// drain takes the responses queued on st without waiting (recvTok is
// held): checkpoints are consumed, and the first other response is kept in
// pending. It reports whether it took any.
func (rs *resumeStream) drain(st *mux.Stream) bool {
	took := false
	for {
		rs.mu.Lock()
		full := rs.hasPending
		rs.mu.Unlock()
		if full {
			return took
		}
		b, ok, err := st.TryRecvMsg()
		if !ok || err != nil {
			return took // the end, or an error, is for Receive
		}
		took = true
		msg, checkpoint, err := rs.take(st, b)
		if err != nil {
			return took
		}
		if !checkpoint {
			rs.mu.Lock()
			rs.pending, rs.hasPending = bytes.Clone(msg), true
			rs.mu.Unlock()
		}
	}
}

// tryDrain is drain if nobody is taking responses now.
func (rs *resumeStream) tryDrain(st *mux.Stream) {
	select {
	case rs.recvTok <- struct{}{}:
		rs.drain(st)
		<-rs.recvTok
	default:
	}
}

// drainWait is drain for a Send that waits for room (recvTok is held):
// when nothing was queued, it waits for the next response (or the end of
// st, a wake-up, the call's end) and takes it.
func (rs *resumeStream) drainWait(st *mux.Stream, wake <-chan struct{}) {
	if rs.drain(st) {
		return
	}
	select {
	case <-st.RecvReady():
		rs.drain(st)
	case <-wake:
	case <-st.Done():
	case <-rs.ctx.Done():
	}
}

// receiveWithRequests is Receive: the pending response, else the next one
// that is not a checkpoint.
func (rs *resumeStream) receiveWithRequests(msg proto.Message) error {
	select {
	case rs.recvTok <- struct{}{}:
	case <-rs.ctx.Done():
		_, _, err := rs.cur()
		return err
	}
	defer func() { <-rs.recvTok }()
	for {
		rs.mu.Lock()
		b, ok := rs.pending, rs.hasPending
		rs.pending, rs.hasPending = nil, false
		if ok {
			rs.wakeLocked() // a Send waiting for room may take responses again
		}
		rs.mu.Unlock()
		if ok {
			return rs.unmarshal(b, msg)
		}
		st, gen, err := rs.cur()
		if err != nil {
			return err
		}
		b, err = st.RecvMsg()
		if err == nil {
			rs.c.markServed(rs.connOf(st))
			m, checkpoint, err := rs.take(st, b)
			if err != nil {
				return err
			}
			if checkpoint {
				continue
			}
			return rs.unmarshal(m, msg)
		}
		if rs.lost(st) {
			if err := rs.reattach(gen); err != nil {
				return err
			}
			continue
		}
		rs.stop()
		return err
	}
}
