package mux

// Opening streams.
//
// Open runs on the application's goroutine (clients). It waits for a slot
// (Config.PeerMaxStreams) with no lock held, then builds the OPEN inside
// the writer's queue: the function it passes to write runs under wmu and
// takes mu there, so stream ids are given in the order their OPENs are
// queued. Lock order: wmu → mu.
//
// handleOpen runs on the reader goroutine (servers). It checks the limits
// and adds the stream to the table under mu, and releases mu before it
// calls Config.Route (which may take the server's lock) and before
// sendReset (wmu). It starts the handler's goroutine (Config.Accept), or,
// for the connection's only running stream, leaves its Accept to the
// reader at the message's end (Conn.handOff, reader.go). The stream holds
// its place in the running count until releaseRunning (conn.go).

import (
	"context"
	"time"
	"unsafe"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// Open starts a stream (clients only). The OPEN frame is queued in stream-id
// order; the returned stream is ready for SendMsg and RecvMsg.
//
// When first is not nil and fits the initial window, it is queued as the
// stream's first message together with the OPEN (and HALF_CLOSE when
// closeSend is set), so that a unary call leaves in one write; otherwise the
// caller sends it with SendMsg. sent reports which happened.
func (c *Conn) Open(ctx context.Context, open *tetherv1.Open, first []byte, closeSend bool) (s *Stream, sent bool, err error) {
	return c.OpenInto(ctx, nil, open, first, closeSend)
}

// OpenInto is Open with the stream's memory given by the caller: into,
// when not nil, must be a zero Stream that was never used (but for
// SetRecycler), or one Clear made ready again once its Recycler was told
// that no one uses it any longer, typically a field of the caller's own
// per-call struct (one allocation for both); it may become the stream
// whether or not the call succeeds, and must not be given to OpenInto
// again before that.
func (c *Conn) OpenInto(ctx context.Context, into *Stream, open *tetherv1.Open, first []byte, closeSend bool) (s *Stream, sent bool, err error) {
	size, byHand := openSize(open)
	if !byHand {
		size = proto.Size(open)
	}
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
	// A whole request (OPEN, message, HALF_CLOSE) may leave on this
	// goroutine (writeAlone); fn sets alone to the stream's id.
	var alone uint32
	var aloneP *uint32
	if inline && closeSend {
		aloneP = &alone
	}
	err = c.writeAlone(ctx, nil, aloneP, func(b []byte) []byte {
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
		if byHand {
			b = appendOpen(b, open)
			if len(b)-start-frame.HeaderSize != size {
				// open changed since openSize (a caller's bug): the
				// frame would lie about its length and break the
				// connection for every stream on it.
				openErr = tether.Errorf(tether.CodeInternal, "tether: encode OPEN: the Open changed while it was sent")
				return b[:start]
			}
		} else {
			b, merr = marshalOpts.MarshalAppend(b, open)
		}
		if merr != nil {
			openErr = tether.Errorf(tether.CodeInternal, "tether: encode OPEN: %v", merr)
			return b[:start]
		}
		s = c.newStream(id, into)
		alone = id
		s.resumable = open.GetResume() != nil
		if s.resumable {
			s.sendNotify = make(chan struct{}, 1) // read without mu by resume.go
		}
		s.slotHeld.Store(c.slots != nil)
		c.nextID += 2
		c.streams[s.id] = s
		s.hold() // the table's
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
	// The OPEN lives in the stream's struct: one allocation for both.
	var into *Stream
	var owner any
	if c.cfg.NewStream != nil {
		into, owner = c.cfg.NewStream()
	}
	s := c.newStream(f.StreamID, into)
	s.owner = owner
	open := &s.open
	// open.Metadata stays empty (Stream.RequestMetadata), and
	// open.Procedure until Route has named it.
	proc, md, err := decodeOpen(f.Payload, open, s.mdBuf[:])
	if err != nil {
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
	s.resumable = open.GetResume() != nil
	if s.resumable {
		s.sendNotify = make(chan struct{}, 1) // read without mu by resume.go
	}
	s.reqMD = md // the stream's context is made when first asked for (Stream.Context); closeWith cancels it (cancelContexts)
	c.streams[f.StreamID] = s
	c.running++
	lone := c.running == 1
	c.mu.Unlock()
	// Outside c.mu: Route takes the server's lock, which is held elsewhere
	// while connections' locks are taken. Only this goroutine reads
	// s.single, and it handles the stream's messages after this; Accept's
	// goroutine starts after s.route is set.
	if c.cfg.Route != nil {
		// proc is in the reader's buffer: Route may not keep the string.
		var name string
		s.route, s.single, name = c.cfg.Route(unsafe.String(unsafe.SliceData(proc), len(proc)))
		if name == string(proc) { // no allocation: a comparison
			open.Procedure = name
		}
	}
	if open.Procedure == "" && len(proc) > 0 {
		open.Procedure = string(proc) // not routed: a copy of its own
	}
	// The window beyond InitialWindow is granted when the handler first
	// reads (RecvMsg), not here: a unary call that has already
	// half-closed never needs it, and the WINDOW frame would cost a write.
	// A procedure that takes one request (s.single) grants it only when
	// RecvMsg has to wait for the request (it has not all arrived).
	s.recvWindow = InitialWindow
	s.deferredGrant = c.cfg.StreamWindow - InitialWindow
	j := acceptJob{c: c, s: s, open: open}
	// c.lone is empty here (a pending lone stream counts in running); the
	// check only keeps one from ever being overwritten.
	if lone && c.lone.c == nil {
		// The connection's only running stream: its Accept runs on this
		// goroutine once the message's frames are handled, and the
		// connection parks or another goroutine reads on (Conn.handOff).
		c.lone = j
		return nil
	}
	startHandler(j)
	return nil
}

// Handler goroutines (servers). Every stream's Accept runs on a goroutine
// of its own, but not always a new one: once Accept returns, its goroutine
// waits handlerIdle (to twice that) for the next stream of any connection
// of the process (handlers) and ends only if none comes. A busy server
// then neither starts a goroutine per call (an allocation) nor grows a new
// goroutine's stack again through the handler's call chain (13% of the
// server's CPU at 64 unary calls in flight). An idle one keeps no
// goroutine: the last ones end handlerIdle to twice that after their last
// call. The reader never waits for a goroutine: when none is idle it
// starts one.
//
// The connection's only running stream is the exception: the reader runs
// its Accept itself once the message is handled, and the connection parks
// or another reader goroutine reads on (Conn.handOff, reader.go).
//
// A handler that leaves state on its goroutine (pprof labels set with
// SetGoroutineLabels, a LockOSThread without its unlock) leaves it to the
// next handler or reader on that goroutine, as grpc-go's stream workers do.

// handlerIdle is how long a handler goroutine waits for the next stream.
const handlerIdle = 20 * time.Millisecond

// handlers runs streams' Accept on reused goroutines (workers,
// goroutines.go); a zero job ends the goroutine that takes it (tests).
var handlers = newWorkers(handlerIdle, func(j acceptJob) bool {
	if j.c == nil {
		return false
	}
	j.run()
	return true
})

// acceptJob is one stream for a handler goroutine.
type acceptJob struct {
	c    *Conn
	s    *Stream
	open *tetherv1.Open
}

// startHandler runs j's Accept on an idle handler goroutine, or on a new
// one.
func startHandler(j acceptJob) { handlers.start(j) }

// run calls Accept for the stream. The stream counts against
// MaxConcurrentStreams until its handler returns, not only until it is
// reset: a flood of open-then-cancel cannot run more handlers than the
// limit.
func (j acceptJob) run() {
	defer j.c.releaseRunning(j.s)
	j.c.cfg.Accept(j.s, j.open)
}
