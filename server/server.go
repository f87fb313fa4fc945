package server

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/mux"
)

// Server serves registered procedures to tether clients. It is an
// http.Handler: mount it on the path clients dial. Its methods are safe for
// concurrent use.
type Server struct {
	cfg      config
	upgrader websocket.Upgrader
	// upgradeHeader goes with every 101: it announces the server's limits.
	upgradeHeader http.Header

	mu       sync.RWMutex
	handlers map[string]*Handler
	conns    map[*mux.Conn]struct{}
	draining bool
	wg       sync.WaitGroup // admitted upgrades and connections (until OnClose), not handlers
	counters counters
	pending  int             // upgrades admitted, not yet registered
	drainCtx context.Context // Shutdown's context, for connections that race it
	perIP    map[string]int  // open or pending connections by remote IP
	nextConn uint64
	onDrain  []func()
	drainRan bool
	resume   *resumer // resumable streams (resume.go), nil when turned off
}

// New returns a Server with no procedures registered.
func New(opts ...Option) *Server {
	s := &Server{
		handlers: make(map[string]*Handler),
		conns:    make(map[*mux.Conn]struct{}),
		perIP:    make(map[string]int),
	}
	s.cfg.handshakeTimeout = DefaultHandshakeTimeout
	s.cfg.maxConns = DefaultMaxConnections
	s.cfg.maxConnsPerIP = DefaultMaxConnectionsPerIP
	for _, o := range opts {
		o(&s.cfg)
	}
	if s.cfg.logger == nil {
		s.cfg.logger = slog.Default()
	}
	s.cfg.mux.Logger = s.cfg.logger
	// What every connection's engine shares, set once: the method value
	// s.route made per connection was an allocation per set-up.
	s.cfg.mux.Route = s.route
	s.cfg.mux.NewStream = newServerStream
	s.cfg.mux.LendFirstMessage = true // call.Receive decodes, then releases
	s.upgradeHeader = http.Header{}
	s.cfg.mux.Announce(s.upgradeHeader, mux.RoleServer)
	if !s.cfg.noResume {
		s.resume = newResumer(s.cfg.resume)
		s.resume.keys = s.cfg.cursorKeys
		s.upgradeHeader.Set(mux.HeaderResumeGrace, strconv.Itoa(int(max(s.resume.lim.Grace/time.Second, 1))))
		s.upgradeHeader.Set(mux.HeaderResumeCursors, "2")
	}
	s.upgrader = websocket.Upgrader{
		HandshakeTimeout: s.cfg.handshakeTimeout,
		Subprotocols:     []string{tether.Subprotocol},
		WriteBufferPool:  mux.WriteBufferPool,
		WriteBufferSize:  mux.WriteBufferSize,
		// ReadBufferSize 0: the read buffer is the small one that
		// pooledHijacker hands over (mux.HijackPooled), over a connection
		// that borrows a pooled buffer only while read bytes wait: an
		// idle connection holds none, and its reader can park.
		CheckOrigin: func(*http.Request) bool { return true }, // checked before Upgrade
	}
	return s
}

// Register adds handlers. It panics if a procedure is registered twice:
// that is a programming error best found at start-up.
func (s *Server) Register(handlers ...*Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range handlers {
		if _, dup := s.handlers[h.spec.Procedure]; dup {
			panic(fmt.Sprintf("tether: procedure %s registered twice", h.spec.Procedure))
		}
		s.handlers[h.spec.Procedure] = h.compile(s.cfg.interceptors)
	}
}

// Procedures returns the registered procedure names, sorted.
func (s *Server) Procedures() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.handlers))
	for p := range s.handlers {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// route looks up procedure's handler when its OPEN arrives (mux.Config.Route)
// and reports whether it takes one request message, and the procedure's
// registered name (which the OPEN then carries: procedure is the reader's
// buffer and must not be kept).
func (s *Server) route(procedure string) (any, bool, string) {
	s.mu.RLock()
	h := s.handlers[procedure]
	s.mu.RUnlock()
	if h == nil {
		return nil, false, ""
	}
	return h, h.spec.StreamType == tether.StreamTypeUnary || h.spec.StreamType == tether.StreamTypeServer, h.spec.Procedure
}

// serveStream runs one call: find the handler, build its context (deadline,
// call info), run it with panic recovery, and send END.
func (s *Server) serveStream(st *mux.Stream, open *tetherv1.Open, peer Peer, budget *lazyBudget) {
	h, _ := st.Route().(*Handler)
	if h == nil {
		_ = st.Finish(tether.Errorf(tether.CodeUnimplemented, "tether: procedure %q is not served here", open.GetProcedure()), nil)
		return
	}
	var rs *session
	var restarted *resumeCursor
	if r := open.GetResume(); r.GetCursors() && s.resume != nil && modeFor(h.spec, true) == cursorsRefused {
		// Never a misparse: the client expects prefixes the handler
		// would not send, or a restart it cannot get.
		_ = st.Finish(tether.Errorf(tether.CodeFailedPrecondition, "tether: procedure %s does not resume from a cursor", open.GetProcedure()), nil)
		return
	}
	if r := open.GetResume(); r.GetAttach() {
		// A re-attachment finds its session or fails, or, on a server
		// that does not hold it, restarts a server stream from the
		// client's cursor.
		if s.resume == nil || h.spec.StreamType == tether.StreamTypeUnary {
			_ = st.Finish(notResumed("this server does not resume streams of %s", open.GetProcedure()), nil)
			return
		}
		var cursor []byte
		if rs, cursor = s.resume.attach(st, r, peer, budget.get(), h.spec); rs == nil {
			return
		}
		restarted = &resumeCursor{cursor: cursor, consumed: r.GetConsumed()}
		if h.spec.StreamType != tether.StreamTypeServer {
			restarted.requests = r.GetCursorRequests()
		}
	} else if r != nil && s.resume != nil && h.spec.StreamType != tether.StreamTypeUnary {
		var err error
		if rs, err = s.resume.open(st, r, peer, budget.get(), modeFor(h.spec, r.GetCursors())); err != nil {
			_ = st.Finish(err, nil)
			return
		}
	}
	c, _ := st.Owner().(*call) // in the stream's memory (newServerStream)
	if c == nil {
		c = new(call)
	}
	c.s, c.rs, c.spec, c.peer = st, rs, h.spec, peer
	var timeout time.Duration
	if t := open.GetTimeoutMicros(); t > 0 {
		t = min(t, uint64(math.MaxInt64/int64(time.Microsecond)))
		timeout = time.Duration(t) * time.Microsecond
	}
	c.stCtx.s = st
	var ctx context.Context = &c.stCtx // the stream's context, made if used
	if rs != nil {
		// The handler's context outlives the connection: it ends with the
		// session (resume.go).
		ctx = rs.ctx
	}
	if timeout > 0 {
		// The deadline ends the call even if the handler ignores ctx; a
		// RESET from a client whose deadline passed ends ctx with
		// DeadlineExceeded too (callctx.go). Without a deadline, the
		// stream's context is the handler's: it ends with Canceled and
		// the stream's cause, as callCtx's would.
		cctx := &c.cctx
		cctx.start(ctx, timeout, c)
		if rs != nil {
			cctx.watchParent()
		} else {
			cctx.watchStream(st)
		}
		defer cctx.stop()
		ctx = cctx
	}
	c.infoCtx = infoCtx{Context: ctx, c: c, restarted: restarted}
	ctx = &c.infoCtx
	c.ctx = ctx
	res, err := s.run(ctx, h, c)
	if timeout > 0 {
		// The handler has returned: its context ends now, with Canceled,
		// before the call's end (an error of the handler's own, say
		// deadline_exceeded from a call it made) reaches the stream and
		// would be taken for the deadline by what the handler left
		// running.
		c.cctx.end(context.Canceled, mux.ErrCallFinished)
	}
	c.finish(res, err)
}

// expired ends the call when the server's timer passes its deadline
// (callCtx): its stream is reset, or its session ended.
func (c *call) expired() {
	if c.rs != nil {
		c.rs.end(errDeadline)
	} else {
		c.s.Reset(errDeadline)
	}
}

// run calls the handler and turns a panic into an internal error for this
// call alone.
func (s *Server) run(ctx context.Context, h *Handler, c *call) (res proto.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.cfg.logger.Error("tether handler panicked", "procedure", c.spec.Procedure, "peer", c.peer.Addr, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			res, err = nil, tether.Errorf(tether.CodeInternal, "tether: handler panicked")
		}
	}()
	return h.serve(ctx, c)
}

// ConnCount returns the number of open connections.
func (s *Server) ConnCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.conns)
}
