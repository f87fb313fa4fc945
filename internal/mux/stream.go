package mux

// This file holds the Stream type and its accessors.
//
// A stream is used by up to four goroutines:
//
//   - the connection's reader goroutine delivers its frames
//     (stream_handle.go);
//   - one receiving goroutine at a time calls RecvMsg (stream_recv.go);
//   - one sending goroutine at a time calls SendMsg, SendProto, CloseSend,
//     SendHeaders and FinishWith (stream_send.go, stream_end.go),
//     serialized by sendMu;
//   - any goroutine may call Reset, Header, Trailer and the accessors, and
//     the connection's closeWith terminates the stream when the connection
//     closes (stream_end.go).
//
// A recycled stream (SetRecycler: the client's unary calls) is reused
// once no one holds it: its caller until Release, the connection's table,
// and any goroutine that took it from the table, which must hold it (hold,
// under the connection's mu) until it is done with it (drop).
//
// On a server the receiving and sending goroutine is the handler's
// (Config.Accept); on a client, the caller's.
//
// Locks: sendMu → mu, and sendMu → the connection's wmu (Conn.write); mu
// is a leaf, never held across a write, a channel wait or another lock.
// The reader goroutine's own fields (partial, midMessage, gotMessage) are
// written under mu but read by it alone.

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// Stream is one call on a connection. One goroutine may send and one may
// receive at a time; Reset and the accessors are safe from any goroutine.
//
// Its fields are grouped by owner; the file comments say which goroutine
// runs the code that uses each group.
type Stream struct {
	// Set when the stream is made, read-only afterwards (until Clear).
	c  *Conn
	id uint32

	// Not read-only: under mu, with the receiving side's fields below, but
	// here in id's padding (a serverStream must stay in its size class:
	// server's size test). The most grown (below) has been, what the
	// peer's sender may have seen (shrinkFloorLocked).
	grownMax int32

	// Set by the reader goroutine before the stream's frames are handled
	// and before Accept runs (server).
	ctx       context.Context // server: canceled when the stream ends; made by Context, under mu
	ctxMade   atomic.Bool     // ctx is set for good: read without mu (a handler's ctx.Done and Err per message)
	answering atomic.Bool     // a whole message arrived since this side last sent one (SendProto writes inline)
	cancelCtx context.CancelCauseFunc
	route     any           // Config.Route's value for the procedure
	owner     any           // server: Config.NewStream's owner, or nil
	single    bool          // the procedure takes one request message
	resumable bool          // the OPEN carried Open.resume: messages are sequenced and acknowledged (resume.go)
	reqMD     []byte        // server: the OPEN's metadata fields, still encoded (openmd.go), in mdBuf when they fit
	open      tetherv1.Open // server: the OPEN, passed to Accept
	// server: where reqMD is when it fits (no allocation of its own)
	mdBuf [mdBufSize]byte

	// Atomic, any goroutine.
	slotHeld        atomic.Bool // client: holds one of the connection's slots (Conn.Open)
	runningReleased atomic.Bool // server: out of the connection's running count (releaseRunning)

	// A recycled stream's (SetRecycler) holders: its caller until
	// Release, the connection's table while it is in it, and each
	// goroutine that took it from the table and still uses it. The last
	// to let go hands the memory back to recycler, which SetRecycler sets
	// before OpenInto and Clear unsets.
	refs     atomic.Int32
	recycler Recycler

	sendMu sync.Mutex // serializes senders so fragments never interleave

	mu sync.Mutex // guards the fields below

	// The receiving side: the reader goroutine queues, the receiving
	// goroutine takes (stream_handle.go, stream_recv.go, slab.go).
	recvQ         recvQueue
	recvEnd       error // io.EOF or the call's error once nothing more arrives
	recvWindow    int   // credit the peer still has
	unacked       int   // credit consumed by the application, not yet granted back
	deferredGrant int   // server: window beyond InitialWindow, granted on the first RecvMsg (single: when RecvMsg must wait)
	grown         int   // receive window beyond StreamWindow, charged to the connection's windowGrowth (growLocked; given back beyond the stream's share in takeGrantLocked)
	drained       int   // credit consumed since the receive window last grew
	partial       int   // reader goroutine: bytes of the message being received
	midMessage    bool  // reader goroutine: a fragment with MORE came, the message's last has not
	gotMessage    bool  // reader goroutine: a whole message has arrived
	copiedFirst   bool  // a payload has been copied out (slab.go), or Config.LendFirstMessage (newStream)
	gaveFirst     bool  // RecvMsg has returned a message, or Config.LendFirstMessage (newStream)
	headersSet    bool  // headers are set (HEADERS, or the end without them)
	fed           bool  // reader: a whole message went to a receiver that had taken every one before, since noteReady last looked (stepAside)
	filled        bool  // the peer had used half its window or more at once since the window last grew (handleMessage): the window held it back (growLocked)
	assembly      []byte
	assemblyCap   int   // capacity of assembly charged to the connection's partialBytes
	slab          *slab // where small queued frames are copied (slab.go)
	held          *slab // the slab of the message RecvMsg returned last
	asmSlab       *slab // the pooled buffer assembly is in (bigbuf.go), or nil
	headers       tether.Metadata
	headersCh     chan struct{} // made by Header when it must wait; closed when headers, a message or the end arrive
	done          chan struct{} // made by doneLocked when someone must wait for the end; closed when the stream finishes
	trailers      tether.Metadata
	// recvNotify wakes the receiving goroutine: made by recvWakeLocked
	// when it must wait, read under mu by whoever queues a frame or ends
	// the stream. A recycled stream keeps it (Clear).
	recvNotify chan struct{}

	// Resumable streams only (resume.go).
	seq       uint64              // messages consumed (RecvMsg) counted from the stream's base
	ackSent   uint64              // the last seq acknowledged to the peer
	peerAck   uint64              // the highest seq the peer acknowledged
	ackFn     func(uint64)        // called with peerAck as it grows
	resumeAck *tetherv1.ResumeAck // client: Headers.resumed of the HEADERS frame

	// The sending side (stream_send.go, stream_end.go).
	sendNotify chan struct{} // made by the first sender to wait for credit (senderWakeLocked); a resumable stream's with the stream
	sendCredit int
	sendPeak   int   // the most credit the stream has held at once (handleWindow; wholeWantLocked, takeFrameCredit)
	sendErr    error // set when the stream can carry no more sends
	halfClosed bool  // we sent HALF_CLOSE or END

	finished bool // removed from the connection (stream_end.go)

	// server: why the stream ended, set by terminate when its context
	// had not been made yet (Context makes it canceled with this cause).
	ctxCause error

	// OnEnd's notifier, told once with the cause when the stream ends or
	// its connection closes; ended and endCause are set then (what OnEnd
	// tells a notifier that comes later).
	endHook  EndNotifier
	ended    bool
	endCause error
}

// Recycler takes back the memory of a stream once no one uses it
// (SetRecycler).
type Recycler interface {
	// Recycle runs once, on whichever goroutine let go of the stream
	// last, when neither the stream's caller nor its connection uses it.
	Recycle()
}

// SetRecycler makes s, a zero Stream (or one Clear made ready again) that a
// client's OpenInto will be given, a recycled one: the connection counts
// who holds it, and once the caller has called Release and the connection
// no longer uses it, r.Recycle runs, which may then Clear s and reuse the
// memory (the client's unary calls come from a pool this way). Nothing may use s after Release;
// metadata maps it returned stay valid (not s's memory), and so does a
// message RecvMsg returned until the next receive (pooled memory, not s's).
// Client streams only: a server stream's end runs with its locks held.
// Recycle may run with the connection's mu held (the last holder may be
// the table): it must not call into the connection.
func (s *Stream) SetRecycler(r Recycler) {
	s.recycler = r
	s.refs.Store(1) // the caller's, until Release
}

// Clear makes s, a recycled stream no one uses any longer (Recycle runs),
// a zero Stream for OpenInto again, keeping its wake-up channel, drained:
// one allocation fewer per call.
func (s *Stream) Clear() {
	wake := s.recvNotify
	*s = Stream{}
	if wake != nil {
		select {
		case <-wake:
		default:
		}
		s.recvNotify = wake
	}
}

// Release lets go of the caller's hold on a recycled stream (SetRecycler):
// Recycle runs now if the connection no longer uses it, else when it lets
// go. No-op for other streams.
func (s *Stream) Release() { s.drop() }

// hold counts one more holder of a recycled stream: the connection's
// table, or a goroutine that found it there (under the connection's mu,
// while the table's hold keeps it).
func (s *Stream) hold() {
	if s.recycler != nil {
		s.refs.Add(1)
	}
}

// drop lets go of one hold of a recycled stream; the last one recycles it.
func (s *Stream) drop() {
	if s.recycler != nil && s.refs.Add(-1) == 0 {
		s.recycler.Recycle()
	}
}

// EndNotifier is told when a stream ends (Stream.OnEnd).
type EndNotifier interface {
	// StreamEnded runs once with the cause the stream ended with.
	StreamEnded(cause error)
}

// mdBufSize is the room for the OPEN's encoded metadata inside a server
// stream's struct: a generated idempotency key fits (60 bytes encoded);
// more metadata gets a buffer of its own.
const mdBufSize = 64

// ID returns the stream id.
func (s *Stream) ID() uint32 { return s.id }

// Route is what Config.Route returned for the stream's procedure (server
// streams), or nil.
func (s *Stream) Route() any { return s.route }

// Single reports whether the stream's procedure takes exactly one request
// message (Config.Route's single; servers only). Set before Accept, read-only
// after.
func (s *Stream) Single() bool { return s.single }

// Owner is the struct Config.NewStream gave the stream's memory in
// (server streams), or nil.
func (s *Stream) Owner() any { return s.owner }

// Context is canceled when the stream ends for any reason, with the reason
// as its cause (server streams; nil on a client). It is made when first
// asked for: a handler that never uses its context costs no context. A
// stream that has ended by then, or whose connection is closing, gets a
// context canceled with the cause it ended with (the connection's error).
//
// s.mu is held while the context is made: the context package's own locks
// come after it, and never call back into the stream.
func (s *Stream) Context() context.Context {
	if s.c.role != RoleServer {
		return nil
	}
	if s.ctxMade.Load() {
		return s.ctx
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx == nil {
		// Not a child of the connection's context (which an idle
		// connection does not keep): closeWith cancels it
		// (cancelContexts), and terminate does, with the stream's cause.
		switch {
		case s.ctxCause != nil:
			ctx, cancel := context.WithCancelCause(context.Background())
			cancel(s.ctxCause)
			s.ctx = ctx
		case s.c.isClosed():
			// Closing: cancelContexts may have passed this stream
			// already, and terminate has not reached it yet.
			ctx, cancel := context.WithCancelCause(context.Background())
			cancel(s.c.err)
			s.ctx = ctx
		default:
			s.ctx, s.cancelCtx = context.WithCancelCause(context.Background())
		}
		s.ctxMade.Store(true)
	}
	return s.ctx
}

// OnEnd arranges for n to be told once, with the cause, when the stream
// ends or its connection closes, at the moment a server stream's context
// (Context) is canceled, without making the context: a server's handler
// context learns of the stream's end this way (server/callctx.go). A client
// stream ended by the peer's END tells the END's error (io.EOF for OK). If
// the stream has ended already, n is told now. n runs on the goroutine
// that ends the stream (its reader, a handler or the one closing the
// connection) holding no lock of the stream's: it must not block. One
// notifier per stream; a second call replaces the first.
func (s *Stream) OnEnd(n EndNotifier) {
	s.mu.Lock()
	switch {
	case s.ended:
		cause := s.endCause
		s.mu.Unlock()
		n.StreamEnded(cause)
	case s.c.isClosed():
		// Closing: cancelContexts may have passed this stream already,
		// and terminate has not reached it yet.
		s.ended, s.endCause = true, s.c.err
		s.mu.Unlock()
		n.StreamEnded(s.c.err)
	default:
		s.endHook = n
		s.mu.Unlock()
	}
}

// endedLocked records that the stream ended with cause, for OnEnd, and
// returns the notifier to tell outside s.mu (nil if none, or if it ended
// before). s.mu held.
func (s *Stream) endedLocked(cause error) EndNotifier {
	if s.ended {
		return nil
	}
	s.ended, s.endCause = true, cause
	n := s.endHook
	s.endHook = nil
	return n
}

// Ended reports whether the stream has finished: ended by the peer, reset,
// or closed with its connection.
func (s *Stream) Ended() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.finished
}

// doneLocked returns the channel closed when the stream finishes, making it
// on first use: most streams end without anyone waiting for it (a unary
// call's both sides), and a channel is an allocation. Once the stream has
// finished it is closedChan. s.mu is held, as it is wherever done is read.
func (s *Stream) doneLocked() <-chan struct{} {
	if s.done == nil {
		if s.finished {
			return closedChan
		}
		s.done = make(chan struct{})
	}
	return s.done
}

// doneChan is doneLocked for a caller without s.mu.
func (s *Stream) doneChan() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.doneLocked()
}

// closedChan is the done channel of a stream that finished before anyone
// asked for it.
var closedChan = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
