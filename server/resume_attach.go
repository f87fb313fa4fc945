package server

// Re-attaching a resumable stream (resume.go): a client's OPEN with
// resume.attach finds its session by token and principal, or, with a
// cursor, restarts the stream on a server that does not hold it
// (cursor.go); the session then replays what the client has not consumed.
// Shutting the resumer down ends every session.

import (
	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/mux"
	"github.com/tetherrpc/tether/internal/principal"
	"github.com/tetherrpc/tether/internal/wire"
)

// attach serves a re-attaching OPEN on st: find the session, answer with the
// handler's position, replay and continue. It returns once st has ended, so
// that st counts against its connection's limits while it is in use.
//
// When this server does not hold the stream and the OPEN carries a cursor
// it can restart from (a server stream's; a non-empty one of a
// client-streaming or bidi stream in cursorsWithRequests mode), attach
// instead registers a new session for it, answers that the stream
// restarts, and returns the session and the cursor (nil when the client
// consumed nothing): the caller runs the handler again with it
// (ResumeCursor).
func (r *resumer) attach(st *mux.Stream, rs *tetherv1.Resume, peer Peer, budget *replayBudget, spec tether.Spec) (*session, []byte) {
	r.mu.Lock()
	x := r.sessions[string(rs.GetToken())]
	r.mu.Unlock()
	mode := modeFor(spec, rs.GetCursors())
	if x == nil && rs.Cursor != nil && (mode == cursorsOnly || mode == cursorsWithRequests && len(rs.Cursor) > 0) {
		cursor := rs.Cursor
		if len(cursor) > wire.MaxCursor {
			_ = st.Finish(tether.Errorf(tether.CodeInvalidArgument, "tether: resume cursor of %d bytes; at most %d", len(cursor), wire.MaxCursor), nil)
			return nil, nil
		}
		// A client-streaming or bidi handler reads the requests after the
		// ones its cursor covers; a server stream's, its request again.
		var requests uint64
		if mode == cursorsWithRequests {
			requests = rs.GetCursorRequests()
		}
		if len(cursor) > 0 && len(r.keys) > 0 {
			var ok bool
			if cursor, ok = openCursor(r.keys, string(rs.GetToken()), principal.SealForms(peer.Principal), spec.Procedure, cursor, mode, requests); !ok {
				_ = st.Finish(notResumed("unknown or expired resume token"), nil)
				return nil, nil
			}
		}
		x, err := r.newSession(st, rs.GetToken(), peer, budget, rs.GetConsumed(), mode)
		if err != nil {
			_ = st.Finish(err, nil)
			return nil, nil
		}
		// Before the handler's first Receive: requests are numbered from
		// requests+1.
		x.recvd.Store(requests)
		st.SetSeq(requests)
		// Before the handler can send: the client learns where the new
		// run reads its requests from.
		_ = st.SendResumeHeaders(nil, &tetherv1.ResumeAck{Consumed: requests, Restarted: true})
		if len(cursor) == 0 {
			cursor = nil // the client consumed nothing
		}
		return x, cursor
	}
	if x == nil || x.principal != principalKey(peer.Principal) {
		_ = st.Finish(notResumed("unknown or expired resume token"), nil)
		return nil, nil
	}
	if err := x.attach(st, rs.GetConsumed()); err != nil {
		_ = st.Finish(err, nil)
		return nil, nil
	}
	<-st.Done()
	return nil, nil
}

func (x *session) attach(st *mux.Stream, consumed uint64) error {
	x.mu.Lock()
	if x.ended {
		x.mu.Unlock()
		return notResumed("the stream has ended")
	}
	first := x.sent + 1
	if len(x.out) > 0 {
		first = x.out[0].seq
	}
	if consumed > x.sent || consumed+1 < first {
		x.mu.Unlock()
		return notResumed("cannot replay from message %d: messages %d to %d are buffered", consumed+1, first, x.sent)
	}
	old := x.st
	x.st = nil
	x.gen++ // the old attachment's watcher and writes see it is replaced
	if x.stopWait != nil {
		x.stopWait()
	}
	x.wakeLocked()
	x.mu.Unlock()
	if old != nil {
		// A connection not yet known to be dead: the client is on a new
		// one, so this one goes, and a write blocked on it returns.
		old.Reset(tether.Errorf(tether.CodeAborted, "tether: stream re-attached on another connection"))
	}
	x.sendMu.Lock()
	defer x.sendMu.Unlock()
	x.mu.Lock()
	if old != nil {
		x.recvSeq = old.Seq()
	}
	if x.ended {
		x.mu.Unlock()
		return notResumed("the stream has ended")
	}
	freed := x.trimLocked(consumed)
	if x.timer != nil && !x.done {
		x.timer.Stop()
		x.timer = nil
	}
	x.unparkLocked()
	replay := append([]outMsg(nil), x.out...)
	recvSeq, hdr, done, endErr, endTrail := x.recvSeq, x.hdr, x.done, x.endErr, x.endTrail
	// Before the handler's Receive can reach st: it counts from recvSeq.
	st.SetSeq(recvSeq)
	x.attachLocked(st)
	x.mu.Unlock()
	x.budget.give(freed)
	st.OnAck(x.onAck)
	if err := st.SendResumeHeaders(hdr, &tetherv1.ResumeAck{Consumed: recvSeq}); err != nil {
		return nil // lost again: the watcher parks the session
	}
	for _, m := range replay {
		if err := st.SendMsg(x.ctx, m.b); err != nil {
			return nil
		}
	}
	if done {
		_ = st.Finish(endErr, endTrail)
	}
	return nil
}

// close ends every session (server Close or Shutdown) and parks no more.
func (r *resumer) close(err error) {
	r.mu.Lock()
	r.closed = true
	all := make([]*session, 0, len(r.sessions))
	for _, x := range r.sessions {
		all = append(all, x)
	}
	r.mu.Unlock()
	for _, x := range all {
		x.mu.Lock()
		parkedOrDone := x.st == nil || x.done
		x.mu.Unlock()
		if parkedOrDone {
			x.end(err)
		}
	}
}

// sessionCount is the number of sessions, for tests.
func (r *resumer) sessionCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sessions)
}
