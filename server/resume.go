package server

// Resumable streams on the server (docs/PROTOCOL.md, "Resumable streams").
//
// A resumable call is a session: the handler runs against it instead of
// against one mux.Stream, and the session forwards to its current
// attachment, the mux.Stream of the connection the client is on now. When
// that connection is lost the session parks: the handler keeps running,
// its Receive waits and its Send fills the replay buffer (and waits once
// it is full). The client re-attaches with the token on a new connection
// within the grace period; the session answers with the last sequence
// number the handler consumed, replays what the client has not consumed
// and continues. A session that is not re-attached in time ends: the
// handler's context is canceled and its buffer released.
//
// Goroutines: the handler's (send, recv, finish, sendHeaders), the reader
// goroutine of the current connection (onAck), the goroutine that accepted
// a re-attaching OPEN (attach, which then holds the attachment's place in
// its connection's running count until it ends), and timers and
// context.AfterFunc callbacks (detached, expire).
//
// Locks: sendMu → mu → resumer.mu, replayBudget.mu and the attachment's
// own (SetSeq); mu is never held across a write or a wait. sendMu orders the handler's writes and attach's
// replay, so a message is never sent on a new attachment before the
// replay of the ones before it.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/mux"
	"github.com/tetherrpc/tether/internal/principal"
)

// ErrNotResumed is the cause of the error of a resumable stream that could
// not be resumed (unknown or expired token, grace period over, parked-stream
// limit, server closing): errors.Is(err, ErrNotResumed). The call's code is
// aborted: the stream is over and its messages since the last one consumed
// are lost; the application starts a new call.
var ErrNotResumed = errors.New("tether: stream could not be resumed")

func notResumed(format string, args ...any) error {
	return tether.NewError(tether.CodeAborted, fmt.Errorf("%w: %s", ErrNotResumed, fmt.Sprintf(format, args...)))
}

// Token sizes a client may choose (Resume.token).
const (
	minResumeToken = 16
	maxResumeToken = 64
)

// resumer is a server's table of sessions.
type resumer struct {
	lim      ResumeLimits
	mu       sync.Mutex
	sessions map[string]*session // by token
	parked   map[string]int      // parked sessions by principal scope
	closed   bool
	keys     [][]byte // WithResumeCursorKeys: cursors are sealed (cursor.go)
}

func newResumer(lim ResumeLimits) *resumer {
	lim.withDefaults()
	return &resumer{lim: lim, sessions: make(map[string]*session), parked: make(map[string]int)}
}

// principalKey is the scope a session's token is bound to: the
// principal's value, the same in every process (internal/principal), so
// that the same user re-attaches on a new connection even when the
// Authenticator returns a new *User for it.
func principalKey(p any) string { return principal.Identity(p) }

// outMsg is a sent message kept until the client acknowledges it.
type outMsg struct {
	seq uint64
	b   []byte
}

// session is one resumable call.
type session struct {
	r         *resumer
	token     string
	principal string // principalKey of the caller
	sealForm  string // what its cursors' seals cover of the caller (principal.SealForms)
	budget    *replayBudget
	ctx       context.Context // the handler's, canceled when the session ends
	cancel    context.CancelCauseFunc

	sendMu sync.Mutex

	mu       sync.Mutex
	wake     chan struct{} // closed and replaced on every change waiters care about
	st       *mux.Stream   // the attachment; nil while parked
	gen      uint64        // attachments so far
	stopWait func() bool   // stops the AfterFunc that watches st
	out      []outMsg
	outBytes int
	sent     uint64 // sequence number of the last message sent
	recvSeq  uint64 // last client message consumed, as of the last detach
	hdr      tether.Metadata
	done     bool // the handler returned: end* hold the status
	endErr   error
	endTrail tether.Metadata
	parked   bool
	ended    bool
	timer    *time.Timer
	cursors  cursorMode // what the handler's messages are prefixed with (cursor.go)
	// recvd counts the requests handed to the handler (its Receive),
	// across attachments and from the R of a restart: the request count
	// of a cursor (cursorsWithRequests).
	recvd atomic.Uint64
}

// open starts a session for a resumable call's first OPEN. cursors says
// what the handler's messages are prefixed with (a stream whose client
// asked for cursors).
func (r *resumer) open(st *mux.Stream, rs *tetherv1.Resume, peer Peer, budget *replayBudget, cursors cursorMode) (*session, error) {
	if rs.GetAttach() || rs.GetConsumed() != 0 || rs.Cursor != nil || rs.GetCursorRequests() != 0 {
		return nil, tether.Errorf(tether.CodeInvalidArgument, "tether: first OPEN of a resumable stream with attach, consumed, cursor or cursor_requests set")
	}
	return r.newSession(st, rs.GetToken(), peer, budget, 0, cursors)
}

// newSession registers a session under token, attached to st, whose
// handler's first message will be number sent+1.
func (r *resumer) newSession(st *mux.Stream, tok []byte, peer Peer, budget *replayBudget, sent uint64, cursors cursorMode) (*session, error) {
	if len(tok) < minResumeToken || len(tok) > maxResumeToken {
		return nil, tether.Errorf(tether.CodeInvalidArgument, "tether: resume token of %d bytes; it must have %d to %d", len(tok), minResumeToken, maxResumeToken)
	}
	x := &session{r: r, token: string(tok), principal: principalKey(peer.Principal), sealForm: principal.SealForms(peer.Principal)[0], budget: budget, wake: make(chan struct{}), sent: sent, cursors: cursors}
	x.ctx, x.cancel = context.WithCancelCause(context.Background())
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		x.cancel(nil)
		return nil, tether.Errorf(tether.CodeUnavailable, "tether: server is closing")
	case r.sessions[x.token] != nil:
		r.mu.Unlock()
		x.cancel(nil)
		return nil, tether.Errorf(tether.CodeAlreadyExists, "tether: resume token already in use")
	}
	r.sessions[x.token] = x
	r.mu.Unlock()
	x.mu.Lock()
	x.attachLocked(st)
	x.mu.Unlock()
	st.OnAck(x.onAck)
	return x, nil
}

// attachLocked makes st the attachment and watches it. x.mu is held.
func (x *session) attachLocked(st *mux.Stream) {
	x.gen++
	gen := x.gen
	x.st = st
	x.stopWait = context.AfterFunc(st.Context(), func() { x.detached(st, gen) })
	x.wakeLocked()
}

func (x *session) wakeLocked() {
	close(x.wake)
	x.wake = make(chan struct{})
}

// detached runs when attachment st has ended: lost with its connection
// (the session parks), or ended by the client's RESET (the session ends),
// or by the END the session sent.
func (x *session) detached(st *mux.Stream, gen uint64) {
	x.mu.Lock()
	if x.gen != gen || x.st != st || x.ended {
		x.mu.Unlock()
		return
	}
	x.st = nil
	x.recvSeq = st.Seq()
	x.wakeLocked()
	if x.done && !st.ConnClosed() {
		// Our END went out: the session stays until the timer runs, for
		// a client that did not get it.
		x.mu.Unlock()
		return
	}
	if !st.ConnClosed() {
		x.mu.Unlock()
		x.end(context.Cause(st.Context()))
		return
	}
	x.r.mu.Lock()
	closed := x.r.closed
	over := false
	if !closed && !x.done {
		x.parked = true
		x.r.parked[x.principal]++
		over = x.r.parked[x.principal] > x.r.lim.ParkedPerPrincipal
	}
	x.r.mu.Unlock()
	if !closed && !over && x.timer == nil {
		x.timer = time.AfterFunc(x.r.lim.Grace, x.expire)
	}
	x.mu.Unlock()
	switch {
	case closed:
		x.end(notResumed("server is closing"))
	case over:
		x.end(tether.NewError(tether.CodeResourceExhausted, fmt.Errorf("%w: more than %d streams of this principal wait to be resumed", ErrNotResumed, x.r.lim.ParkedPerPrincipal)))
	}
}

// expire ends a session whose client did not re-attach within the grace
// period, or a finished one whose grace period is over.
func (x *session) expire() {
	x.mu.Lock()
	idle := x.st == nil || x.done
	x.mu.Unlock()
	if idle {
		x.end(notResumed("not resumed within %v", x.r.lim.Grace))
	}
}

// end releases the session: the handler's context is canceled with err,
// the attachment reset, the replay buffer given back.
func (x *session) end(err error) {
	x.mu.Lock()
	if x.ended {
		x.mu.Unlock()
		return
	}
	x.ended = true
	// Before anyone wakes: a handler that sees ended finds the cause.
	x.cancel(err)
	st, done := x.st, x.done
	x.st = nil
	if x.stopWait != nil {
		x.stopWait()
	}
	if x.timer != nil {
		x.timer.Stop()
	}
	freed := x.outBytes
	x.out, x.outBytes = nil, 0
	x.wakeLocked()
	x.r.mu.Lock()
	if x.parked {
		x.parked = false
		if x.r.parked[x.principal]--; x.r.parked[x.principal] <= 0 {
			delete(x.r.parked, x.principal)
		}
	}
	if x.r.sessions[x.token] == x {
		delete(x.r.sessions, x.token)
	}
	x.r.mu.Unlock()
	x.mu.Unlock()
	x.budget.give(freed)
	if st != nil && !done {
		st.Reset(err)
	}
}

// unparkLocked takes a parked session out of the parked count. x.mu is
// held.
func (x *session) unparkLocked() {
	if !x.parked {
		return
	}
	x.parked = false
	x.r.mu.Lock()
	if x.r.parked[x.principal]--; x.r.parked[x.principal] <= 0 {
		delete(x.r.parked, x.principal)
	}
	x.r.mu.Unlock()
}

// onAck trims the replay buffer up to seq (the reader goroutine; never
// blocks).
func (x *session) onAck(seq uint64) {
	x.mu.Lock()
	freed := x.trimLocked(seq)
	x.mu.Unlock()
	x.budget.give(freed)
}

// trimLocked drops buffered messages up to seq and returns the bytes freed.
func (x *session) trimLocked(seq uint64) int {
	if seq > x.sent {
		seq = x.sent // a client cannot acknowledge what was not sent
	}
	n, freed := 0, 0
	for n < len(x.out) && x.out[n].seq <= seq {
		freed += len(x.out[n].b)
		x.out[n] = outMsg{}
		n++
	}
	if n > 0 {
		x.out = x.out[n:]
		x.outBytes -= freed
		x.wakeLocked()
	}
	return freed
}

// endErr returns the error a handler's operation gets once the session has
// ended.
func (x *session) errLocked() error {
	if err := context.Cause(x.ctx); err != nil {
		return tether.AsError(err)
	}
	return tether.Errorf(tether.CodeCanceled, "tether: stream ended")
}

// send queues one message: into the replay buffer (waiting while it or the
// connection's budget is full), then onto the attachment if there is one.
// A lost attachment is not an error: the message is replayed after the
// client re-attaches.
func (x *session) send(b []byte) error {
	if len(b) > x.r.lim.StreamBytes {
		return tether.Errorf(tether.CodeResourceExhausted, "tether: message of %d bytes exceeds the replay buffer of %d bytes", len(b), x.r.lim.StreamBytes)
	}
	if err := x.reserve(len(b)); err != nil {
		return err
	}
	x.sendMu.Lock()
	defer x.sendMu.Unlock()
	x.mu.Lock()
	if x.ended {
		err := x.errLocked()
		x.mu.Unlock()
		x.budget.give(len(b))
		return err
	}
	x.sent++
	x.out = append(x.out, outMsg{seq: x.sent, b: b})
	x.outBytes += len(b)
	st, gen := x.st, x.gen
	x.mu.Unlock()
	if st == nil {
		return nil
	}
	if err := st.SendMsg(x.ctx, b); err != nil {
		return x.sendErr(st, gen, err)
	}
	return nil
}

// sendErr is what a write to attachment st that failed with err returns:
// nil when the attachment was lost or replaced (the message stays in the
// replay buffer), else err.
func (x *session) sendErr(st *mux.Stream, gen uint64, err error) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	switch {
	case x.ended:
		return x.errLocked()
	case x.gen != gen || st.ConnClosed():
		return nil
	}
	return err
}

// reserve waits until n more bytes fit the stream's replay buffer and the
// connection's budget, and takes them from the budget.
func (x *session) reserve(n int) error {
	for {
		x.mu.Lock()
		if x.ended {
			err := x.errLocked()
			x.mu.Unlock()
			return err
		}
		wake := x.wake
		var budgetWake <-chan struct{}
		if x.outBytes+n <= x.r.lim.StreamBytes {
			ok, w := x.budget.take(n, x.outBytes == 0)
			if ok {
				x.mu.Unlock()
				return nil
			}
			budgetWake = w
		}
		x.mu.Unlock()
		select {
		case <-wake:
		case <-budgetWake:
		case <-x.ctx.Done():
		}
	}
}

// recv returns the next client message, waiting across re-attachments.
func (x *session) recv() ([]byte, error) {
	for {
		x.mu.Lock()
		for x.st == nil && !x.ended {
			wake := x.wake
			x.mu.Unlock()
			<-wake
			x.mu.Lock()
		}
		if x.ended {
			err := x.errLocked()
			x.mu.Unlock()
			return nil, err
		}
		st, gen := x.st, x.gen
		x.mu.Unlock()
		b, err := st.RecvMsg()
		if err == nil {
			x.recvd.Add(1)
			return b, nil
		}
		if errors.Is(err, io.EOF) {
			return b, err
		}
		if x.sendErr(st, gen, err) != nil {
			return nil, err
		}
		// Lost: wait for the next attachment (detached clears st).
		x.mu.Lock()
		for x.gen == gen && x.st == st && !x.ended {
			wake := x.wake
			x.mu.Unlock()
			<-wake
			x.mu.Lock()
		}
		x.mu.Unlock()
	}
}

// sendHeaders sends the response headers on the attachment, and keeps them
// for the answer to a re-attachment in case they were lost.
func (x *session) sendHeaders(md tether.Metadata) error {
	x.sendMu.Lock()
	defer x.sendMu.Unlock()
	x.mu.Lock()
	x.hdr = md
	st := x.st
	x.mu.Unlock()
	if st == nil {
		return nil
	}
	if err := st.SendHeaders(md); err != nil && !st.ConnClosed() {
		return err
	}
	return nil
}

// finish ends the call for the handler: last (a client-streaming call's
// response) is sent like any message, then END on the attachment, or on
// the next one. The session then lingers for the grace period, so that a
// client that lost the END can still re-attach and get it.
func (x *session) finish(headers tether.Metadata, last []byte, callErr error, trailers tether.Metadata) {
	if len(headers) > 0 {
		_ = x.sendHeaders(headers)
	}
	if last != nil {
		if err := x.send(last); err != nil && callErr == nil {
			callErr = err
		}
	}
	x.sendMu.Lock()
	defer x.sendMu.Unlock()
	x.mu.Lock()
	if x.ended {
		x.mu.Unlock()
		return
	}
	x.done, x.endErr, x.endTrail = true, callErr, trailers
	x.unparkLocked()
	if x.timer == nil {
		x.timer = time.AfterFunc(x.r.lim.Grace, x.expire)
	} else {
		x.timer.Reset(x.r.lim.Grace)
	}
	st := x.st
	x.mu.Unlock()
	if st != nil {
		_ = st.Finish(callErr, trailers)
	}
}
