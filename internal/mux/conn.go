package mux

// This file holds the Conn type, New, the accessors and the stream table.
//
// The goroutines of a connection, and the files whose state each owns:
//
//   - the reader goroutine (reader.go), started by New: the only one that
//     reads from the WebSocket. On an idle server connection it parks
//     (park.go) and ends: on Linux the process's shared poller
//     (parkpoll_linux.go) starts a new one when bytes arrive, elsewhere a
//     waiter goroutine on a small stack takes its place until they do. On
//     Linux a reader whose reads are tracked (a client's: TrackedReads; a
//     server's: HijackPooled) steps aside into the poller when a client's
//     calls are made one after another, or a lone stream's messages are
//     answered one at a time (callerread_linux.go's stepAside), and a
//     receiver waiting for its message (a unary caller, a stream's RecvMsg,
//     a handler's) takes the socket and is the reader until the message has
//     come (readFor), running readOne as the reader goroutine does.
//     It runs the frame handlers (reader.go's
//     handle, stream_handle.go, open.go's handleOpen, lifecycle.go's
//     handleGoAway) and gorilla's ping and pong handlers, and ends the
//     connection when it returns (lifecycle.go's drain and readerExit).
//     When an OPEN starts the connection's only running stream, the reader
//     hands off (reader.go's handOff) and runs the stream's Accept: the
//     connection parks; or, on calls made one at a time (the last message
//     was a lone stream's OPEN too, and no other stream started beside
//     this one, no other server connection lent in the last 100 µs, and GOMAXPROCS
//     is above 1) where it can park in the shared poller, it lends its socket
//     to the poller for as long as Accept runs (park.go's lendToPoller) and
//     reads on itself afterwards if nothing arrived meanwhile; or another
//     goroutine reads on from the next message.
//   - the writer goroutine (writer.go), started on demand by kickLocked and
//     gone after writerLinger to twice that without work. It and the
//     application goroutines that write their own frames inline
//     (writer.go's writeInline) take turns writing data messages to the
//     WebSocket, one at a time (the write token, wbusy).
//   - the heartbeat timer (heartbeat.go), a time.AfterFunc running ping;
//     it also starts a parked reader whose read deadline has passed.
//   - the application's goroutines: callers of Open (open.go), Close,
//     Shutdown and GoAway (lifecycle.go); a stream's sending goroutine
//     (stream_send.go, stream_end.go) and receiving goroutine
//     (stream_recv.go); on a server, one handler goroutine per stream
//     (Config.Accept), started by handleOpen, or the goroutine of the
//     reader that read the OPEN of a lone stream (handOff).
//
// Locks, in the order they may be taken (a goroutine holding one may take
// only those after it):
//
//	Stream.sendMu → Conn.wmu → Conn.mu
//	Stream.sendMu → Stream.mu
//
// Conn.mu and Stream.mu are leaves: neither is held while another lock is
// taken, across a socket write or while waiting on a channel. Conn.wmu is
// held only to append to the writer's queue; the function that builds the
// frames runs under it and may take Conn.mu (Open, FinishWith). closeWith
// is called with neither of the connection's locks nor a Stream.mu held
// (a sender may hold its sendMu: SendMsg resets its stream, and the RESET
// may find the queue overflowing). Config.Route and Config.Accept run with
// no lock of the connection held (Route may take the server's lock).
//
// The stream table (streams, nextID, maxPeerID, running) and the drain
// state (localGoAway, peerGoAway, draining, idle) are guarded by mu; any
// goroutine takes it, briefly. The table holds each stream in it (hold),
// and code that takes a stream out of it to use after mu is released holds
// it too, under mu, and drops it when done (lookup, cancelContexts; closeWith
// and handleGoAway take over the table's hold): a recycled stream is
// reused once its last holder drops it (stream.go).

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether/internal/frame"
)

// Role says which end of the connection this is.
type Role uint8

// The two ends.
const (
	RoleClient Role = iota
	RoleServer
)

// Conn is one multiplexed tether connection over a WebSocket.
//
// Its fields are grouped by owner; the file comments say which goroutine
// runs the code that uses each group.
type Conn struct {
	// Set by New, read-only afterwards: safe from any goroutine.
	ws        *websocket.Conn
	wsw       *wsWriter // every frame written after New (wswrite.go)
	cfg       Config
	slots     chan struct{} // client: one token per open stream, up to PeerMaxStreams
	pingTimer *time.Timer   // the heartbeat (heartbeat.go)

	// Heartbeat clocks (heartbeat.go), atomic: written by their owners,
	// read by the heartbeat timer.
	pingDue  atomic.Int64 // when the next check is due (nanotime), for Heartbeats: ping
	lastSent atomic.Int64 // when a message was last written (nanotime): writeBatch
	lastRecv atomic.Int64 // when the read deadline was last renewed (nanotime): touch

	// The stream table and the drain state (this file, open.go,
	// lifecycle.go), guarded by mu; any goroutine.
	mu          sync.Mutex
	streams     map[uint32]*Stream
	nextID      uint32 // client: id of the next stream
	maxPeerID   uint32 // server: highest stream id the peer opened
	running     int    // server: streams accepted and not finished
	localGoAway bool
	peerGoAway  bool
	draining    chan struct{}   // closed on GOAWAY (sent or received); a server's made by Draining
	idle        chan struct{}   // non-nil while someone waits for running == 0
	ctx         context.Context // made by Context on first use; canceled by closeWith
	cancel      context.CancelCauseFunc

	// The writer's queue (writer.go), guarded by wmu; any goroutine
	// queues, the holder of the write token (wbusy) takes. spare is the
	// holder's own, and so is wslow while the token is held.
	wmu         sync.Mutex
	wbuf        []byte
	spare       []byte
	wwaiters    int           // senders waiting for room in the queue (queue)
	wtokens     int           // wake-ups sent on wspace that no waiter has taken yet
	wspace      chan struct{} // made by the first sender to wait, then kept: one wake-up for each waiter when the writer takes the queue (takeLocked)
	wnotify     chan struct{}
	wclosing    bool          // graceful close queued: the writer closes once drained
	wrunning    bool          // a writer goroutine is running
	wbusy       bool          // the write token: a goroutine is writing to the socket
	winline     bool          // the token's holder is an inline writer (writeInline), not the writer goroutine
	inlines     atomic.Uint32 // batches written inline (writeInline), for tests
	wslow       bool          // the last socket write took over slowWrite: no inline writes
	wdead       bool          // the connection closed: no writer is started any more
	closeCode   int
	closeText   string
	flushedOpen atomic.Uint32 // client: highest stream id whose OPEN was written

	// Closing (lifecycle.go): closed and err are set once, by closeWith,
	// on whichever goroutine closes first.
	closeOnce   sync.Once
	closed      chan struct{}
	err         error
	wg          sync.WaitGroup // the writer goroutine, waited for by readerExit
	lingerUntil atomic.Int64   // after a close frame was sent: read deadline (Unix ns) of the drain

	// The reader goroutine's own (reader.go), and its waiter's when it
	// parks (park.go).
	inMessage  atomic.Bool   // reader is inside a WebSocket message
	parks      atomic.Uint32 // times the reader parked, for tests
	parkState  atomic.Uint32 // 1: parked in the shared poller (parkpoll_linux.go)
	parkFD     int32         // the socket's descriptor, as the poller knows it
	parkGen    int32         // the poller's generation of the last registration (poller's mu)
	parkConn   *pooledConn   // set by New when the reader can park
	lastMsg    int64         // when the last message arrived (nanotime)
	lastPingIn int64         // when the last PING arrived (nanotime), for pingAloneGap
	pingLimit  tokenBucket   // PINGs received (limits.go)
	idleLimit  tokenBucket   // frames without application data received (limits.go)
	donated    bool          // reader: a stream kept a frame of the current buffer
	adopted    bool          // reader: a stream kept the payload buffer handle was given
	quietGap   bool          // the last message came after a quiet spell
	woke       bool          // the waiter woke with an error: read at once
	lone       acceptJob     // reader: a lone stream's Accept, which the reader runs itself (handOff)
	touched    bool          // reader: handOff renewed the read deadline, which the next reader (continuing, or started for a lent socket's bytes) need not renew
	lastLone   bool          // reader: the last message ended in handOff (a lone stream's Accept)
	lendID     uint64        // reader: this connection in lendGates (park.go), given at its first mayLend
	parkReg    bool          // the socket is registered with the poller

	// A receiver reading the connection itself (callerread_linux.go): its
	// wait for the socket is cut (cutCaller) while cutArmed, which cutMu
	// guards; cutDone tells it that the cut came.
	cutMu      sync.Mutex
	cutArmed   bool
	cutDone    bool
	cutFn      func()                 // cutCaller, for context.AfterFunc; the reader's
	ownReads   atomic.Uint32          // messages read by receivers (readFor), for tests
	readingFor atomic.Pointer[Stream] // the stream whose receiver reads the connection, while armed
	inReadOne  atomic.Bool            // that receiver is handling a message (readOne): a reset then needs no cut
	lastReady  bool                   // reader: the last message left the connection ready for a receiver's read (noteReady)
	lastMsgLen int                    // reader: the size of the last message read
	rs         readState              // reader: kept from one message to the next, whichever goroutine reads (readOne)

	// The read deadline of the message being read, set on the socket only
	// when the message needs a read of it (socketRead). Reader goroutine.
	lazyMsgDeadline bool      // the socket tells of its reads (watchReads)
	msgDeadline     time.Time // the message's deadline, while msgPending
	msgPending      bool      // msgDeadline is not yet the socket's

	role Role // set by New, read-only afterwards

	// Counters, updated atomically from any goroutine.
	bytesIn, bytesOut atomic.Uint64
	partialBytes      atomic.Int64 // capacity of the buffers of messages being assembled (Stream.assembleLocked)
	windowGrowth      atomic.Int64 // receive windows grown beyond StreamWindow, all streams (Stream.growLocked)
	learnedGrowth     atomic.Int64 // the most one stream's receive window has grown beyond StreamWindow: a stream's first growth goes straight to it (Stream.growLocked)
	growthHolders     atomic.Int32 // streams whose receive window has grown (Stream.grown > 0): each may keep MaxWindowGrowth over their number (fairShare)
	growthAsked       atomic.Int64 // nanotime of the last ask for growth by a stream without any, 0 once answered or stale: one more share while fresh (Stream.growLocked, fairShare)
}

// New starts the engine on an established WebSocket: one reader goroutine,
// one writer goroutine and a heartbeat timer.
func New(ws *websocket.Conn, role Role, cfg Config) *Conn {
	cfg.withDefaults()
	c := &Conn{
		ws:      ws,
		role:    role,
		cfg:     cfg,
		streams: make(map[uint32]*Stream),
		nextID:  1,
		wnotify: make(chan struct{}, 1),
		closed:  make(chan struct{}),
	}
	if role == RoleClient {
		// A client's Open waits on it; a server's is made on demand
		// (Draining).
		c.draining = make(chan struct{})
	}
	if role == RoleClient && cfg.PeerMaxStreams > 0 {
		c.slots = make(chan struct{}, cfg.PeerMaxStreams)
	}
	c.wsw = newWSWriter(ws.NetConn(), role == RoleClient)
	ws.SetReadLimit(MaxWebSocketMessage)
	ws.SetPongHandler(func(string) error { c.touch(); return nil })
	// The peer's close frame is answered as gorilla would (its code
	// echoed), through this connection's writer.
	ws.SetCloseHandler(func(code int, _ string) error {
		_ = c.wsw.writeControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
		return nil
	})
	// WebSocket pings (tether uses its own PING frames) are answered as
	// gorilla would, but count against the ping limit.
	ws.SetPingHandler(func(data string) error {
		if !c.pingAllowed() {
			return &floodError{"WebSocket pings"}
		}
		c.touch()
		err := c.wsw.writeControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			return err
		}
		return nil
	})
	// The heartbeat timer is armed only once c.pingTimer is set: ping reads
	// the field (to re-arm it), and Reset orders this write before the
	// timer's first run.
	c.parkConn = parker(ws.NetConn()) // before the timer: ping reads it
	c.lazyMsgDeadline = watchReads(ws.NetConn(), c)
	c.pingTimer = time.AfterFunc(math.MaxInt64, c.ping)
	c.armPing()
	goReader(c.readLoop)
	return c
}

// Done is closed when the connection has closed.
func (c *Conn) Done() <-chan struct{} { return c.closed }

// Draining is closed once either side has sent GOAWAY: no new streams will
// be accepted on this connection.
func (c *Conn) Draining() <-chan struct{} {
	if c.role == RoleClient {
		return c.draining
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.draining == nil {
		c.draining = make(chan struct{})
		if c.localGoAway || c.peerGoAway {
			close(c.draining)
		}
	}
	return c.draining
}

// Err returns why the connection closed, or nil while it is open.
func (c *Conn) Err() error {
	select {
	case <-c.closed:
		return c.err
	default:
		return nil
	}
}

// Context is canceled when the connection closes, with the connection's
// error as its cause.
//
// It is made on first use: an idle connection holds no context, and the
// streams' contexts are not its children (closeWith cancels them itself),
// so that it keeps no map of children either.
func (c *Conn) Context() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx == nil {
		c.ctx, c.cancel = context.WithCancelCause(context.Background())
		if c.isClosed() {
			c.cancel(c.err)
		}
	}
	return c.ctx
}

// NetConn is the network connection under the WebSocket.
func (c *Conn) NetConn() net.Conn { return c.ws.NetConn() }

// RemoteAddr is the peer's network address.
func (c *Conn) RemoteAddr() string { return c.ws.RemoteAddr().String() }

// ActiveStreams returns the number of open streams.
func (c *Conn) ActiveStreams() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams)
}

// BytesIn counts WebSocket payload bytes read.
func (c *Conn) BytesIn() uint64 { return c.bytesIn.Load() }

// BytesOut counts WebSocket payload bytes written.
func (c *Conn) BytesOut() uint64 { return c.bytesOut.Load() }

// String names the connection by its peer's address, for logs.
func (c *Conn) String() string {
	return fmt.Sprintf("tether.Conn(%s)", c.ws.RemoteAddr())
}

// isClosed reports whether the connection has closed.
func (c *Conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// connErr is the error a stream sees when the connection has closed.
func (c *Conn) connErr() error {
	<-c.closed
	return c.err
}

func (c *Conn) newStream(id uint32, into *Stream) *Stream {
	s := into
	if s == nil {
		s = new(Stream)
	}
	s.c, s.id = c, id
	s.sendCredit, s.sendPeak = InitialWindow, InitialWindow
	s.recvWindow = c.cfg.StreamWindow
	if c.cfg.LendFirstMessage { // its first message as the later ones (slab.go)
		s.copiedFirst, s.gaveFirst = true, true
	}
	return s
}

// lookup finds the stream a frame is for, held (drop it once the frame is
// handled). Frames for streams that have ended are ignored; frames for
// streams never opened are protocol errors.
func (c *Conn) lookup(f frame.Frame) (*Stream, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.streams[f.StreamID]; s != nil {
		s.hold() // the caller drops it once it has handled f
		return s, nil
	}
	if c.role == RoleServer && f.StreamID > c.maxPeerID {
		return nil, protoErrf("%v for stream %d, which was never opened", f.Type, f.StreamID)
	}
	if c.role == RoleClient && f.StreamID >= c.nextID {
		return nil, protoErrf("%v for stream %d, which was never opened", f.Type, f.StreamID)
	}
	return nil, nil
}

// remove takes a finished stream out of the table. A recycled stream may be
// reused from then on unless the caller holds it (every caller does).
func (c *Conn) remove(s *Stream) {
	if s.slotHeld.CompareAndSwap(true, false) {
		<-c.slots // a token is there: this stream put it
	}
	c.mu.Lock()
	c.unlinkLocked(s)
	done := c.drainedLocked()
	c.mu.Unlock()
	if done {
		go c.Close()
	}
}

// unlink takes s out of the stream table; frames for it are then ignored.
func (c *Conn) unlink(s *Stream) {
	c.mu.Lock()
	c.unlinkLocked(s)
	c.mu.Unlock()
}

func (c *Conn) unlinkLocked(s *Stream) {
	if c.streams[s.id] == s {
		delete(c.streams, s.id)
		s.drop() // the table's hold: whoever unlinks holds s too
	}
}

// drainedLocked reports whether this is a client connection that drains
// (GOAWAY either way, or its stream ids used up) with no stream left: the
// client has moved to a new connection, and this one is to be closed. It is
// checked wherever either condition starts to hold: when a stream is
// removed, and when the drain begins. c.mu is held.
func (c *Conn) drainedLocked() bool {
	return c.role == RoleClient && (c.localGoAway || c.peerGoAway) && len(c.streams) == 0
}

// releaseRunning takes a server stream out of the running count, once: when
// its END is queued (the handler has returned; the client may open another
// stream as soon as it reads END, and must find the place free) or, if no
// END is sent, when its handler goroutine ends.
func (c *Conn) releaseRunning(s *Stream) {
	if !s.runningReleased.CompareAndSwap(false, true) {
		return
	}
	c.mu.Lock()
	c.running--
	if c.running == 0 && c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
	c.mu.Unlock()
}
