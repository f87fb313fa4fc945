package server

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
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
	wg       sync.WaitGroup // connections and handlers
	counters counters
	pending  int             // upgrades admitted, not yet registered
	drainCtx context.Context // Shutdown's context, for connections that race it
	perIP    map[string]int  // open or pending connections by remote IP
	nextConn uint64
	onDrain  []func()
	drainRan bool
	resume   *resumer // resumable streams (resume.go), nil when turned off
}

// OnDrain registers f to run once when the server begins to drain
// (Shutdown, Close, or Serve when its context ends), before any GOAWAY is
// sent: health.Register uses it to report NOT_SERVING first.
func (s *Server) OnDrain(f func()) {
	s.mu.Lock()
	ran := s.drainRan
	if !ran {
		s.onDrain = append(s.onDrain, f)
	}
	s.mu.Unlock()
	if ran {
		f()
	}
}

// beginDrain runs the OnDrain functions, once.
func (s *Server) beginDrain() {
	s.mu.Lock()
	fs := s.onDrain
	s.onDrain, s.drainRan = nil, true
	s.mu.Unlock()
	for _, f := range fs {
		f()
	}
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

// ServeHTTP upgrades the request to a tether connection. It answers 403 to a
// foreign Origin, 400 to a client that does not offer the tether.v1
// subprotocol, 401 or 403 when the authenticator refuses, and 503 while the
// server shuts down or is full. A browser's request (one with an allowed
// Origin) refused for its version or credentials gets close code 4400,
// 4401 or 4403 right after the upgrade instead (see refuse).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		w.Header().Set("Upgrade", "websocket")
		http.Error(w, "tether: this endpoint speaks WebSocket (subprotocol "+tether.Subprotocol+")", http.StatusUpgradeRequired)
		return
	}
	if !s.originAllowed(r) {
		s.refused(r, RefusalOrigin, http.StatusForbidden)
		http.Error(w, "tether: origin not allowed", http.StatusForbidden)
		return
	}
	if !slices.Contains(websocket.Subprotocols(r), tether.Subprotocol) {
		s.refused(r, RefusalVersion, http.StatusBadRequest)
		s.refuse(w, r, http.StatusBadRequest, "tether: unsupported protocol version; offer Sec-WebSocket-Protocol: "+tether.Subprotocol)
		return
	}
	var id Identity
	if s.cfg.authenticate != nil {
		var err error
		if id, err = s.cfg.authenticate(r); err != nil {
			status, reason := http.StatusUnauthorized, RefusalUnauthenticated
			if tether.CodeOf(err) == tether.CodePermissionDenied {
				status, reason = http.StatusForbidden, RefusalPermissionDenied
			} else {
				w.Header().Set("WWW-Authenticate", `Bearer realm="tether"`)
			}
			s.refused(r, reason, status)
			s.refuse(w, r, status, "tether: "+tether.AsError(err).Message())
			return
		}
	}
	ip, ok := s.admit(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	s.nextConn++
	connID := s.nextConn
	s.mu.Unlock()
	ws, err := s.upgrader.Upgrade(pooledHijacker{w}, r, s.upgradeHeader)
	if err != nil {
		s.unadmit(ip)
		s.cfg.logger.Debug("tether upgrade failed", "peer", r.RemoteAddr, "err", err)
		return // the upgrader has answered
	}
	peer := Peer{Addr: r.RemoteAddr, Principal: id.Principal, ConnID: connID}
	cfg := s.cfg.mux
	cfg.PeerMaxHeaderBytes = mux.ParseLimit(r.Header.Get(mux.HeaderMaxHeaderBytes))
	var conn *mux.Conn
	var expiry, aged *time.Timer
	var budget *lazyBudget
	if s.resume != nil {
		budget = &lazyBudget{limit: s.resume.lim.ConnBytes}
	}
	cfg.Accept = func(st *mux.Stream, open *tetherv1.Open) { s.serveStream(st, open, peer, budget) }
	cfg.Route = s.route
	cfg.NewStream = newServerStream
	cfg.OnClose = func(error) {
		s.mu.Lock()
		if expiry != nil {
			expiry.Stop()
		}
		if aged != nil {
			aged.Stop()
		}
		delete(s.conns, conn)
		s.releaseIP(ip)
		s.counters.bytesInClosed.Add(conn.BytesIn())
		s.counters.bytesOutClosed.Add(conn.BytesOut())
		s.mu.Unlock()
		s.wg.Done()
	}
	s.mu.Lock()
	conn = mux.New(ws, mux.RoleServer, cfg)
	if !id.Expires.IsZero() {
		expiry = time.AfterFunc(time.Until(id.Expires), func() {
			conn.ClosePolicy(tether.Errorf(tether.CodeUnauthenticated, "tether: credentials expired"), "credentials expired")
		})
	}
	if s.cfg.maxConnAge > 0 {
		aged = time.AfterFunc(jitter(s.cfg.maxConnAge), func() { s.ageOut(conn) })
	}
	s.pending--
	s.conns[conn] = struct{}{}
	s.counters.accepted.Add(1)
	draining, drainCtx := s.draining, s.drainCtx
	s.mu.Unlock()
	if draining {
		// Shutdown or Close began after this upgrade was let in: drain it
		// within the same deadline (Close's context is already over, so
		// the connection closes at once).
		go func() { _ = conn.Shutdown(drainCtx) }()
	}
}

// admit reserves a place for a connection from r, or answers 503 (shutting
// down, MaxConnections) or 429 (MaxConnectionsPerIP) and reports false. The
// place counts against both limits and holds Shutdown until it is released:
// by unadmit, or by the connection's OnClose.
func (s *Server) admit(w http.ResponseWriter, r *http.Request) (ip string, ok bool) {
	ip = remoteIP(r.RemoteAddr)
	s.mu.Lock()
	var reason string
	switch {
	case s.draining:
		reason = RefusalShuttingDown
	case s.cfg.maxConns > 0 && len(s.conns)+s.pending >= s.cfg.maxConns:
		reason = RefusalMaxConnections
	case s.cfg.maxConnsPerIP > 0 && s.perIP[ip] >= s.cfg.maxConnsPerIP:
		reason = RefusalMaxPerIP
	default:
		s.pending++
		s.perIP[ip]++
		s.wg.Add(1)
	}
	s.mu.Unlock()
	// Answer and log outside the lock.
	switch reason {
	case "":
		return ip, true
	case RefusalShuttingDown:
		s.refused(r, reason, http.StatusServiceUnavailable)
		http.Error(w, "tether: server is shutting down", http.StatusServiceUnavailable)
	case RefusalMaxConnections:
		s.refused(r, reason, http.StatusServiceUnavailable)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "tether: server has too many connections", http.StatusServiceUnavailable)
	case RefusalMaxPerIP:
		s.refused(r, reason, http.StatusTooManyRequests)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "tether: too many connections from "+ip, http.StatusTooManyRequests)
	}
	return ip, false
}

// refused counts and logs an upgrade refused for reason (a Refusal*
// constant) with HTTP status.
func (s *Server) refused(r *http.Request, reason string, status int) {
	for i, name := range refusalReasons {
		if name == reason {
			s.counters.refused[i].Add(1)
		}
	}
	s.cfg.logger.Info("tether upgrade refused", "reason", reason, "status", status, "peer", r.RemoteAddr)
}

// unadmit releases a place taken by admit that did not become a
// connection.
func (s *Server) unadmit(ip string) {
	s.mu.Lock()
	s.pending--
	s.releaseIP(ip)
	s.mu.Unlock()
	s.wg.Done()
}

// Close codes of the handshake refusals a browser is told about (see
// refuse): 4000 plus the HTTP status a non-browser client gets.
const (
	CloseBadVersion       = mux.CloseBadVersion       // 4400: the client did not offer tether.v1
	CloseUnauthenticated  = mux.CloseUnauthenticated  // 4401: the authenticator refused the credentials
	ClosePermissionDenied = mux.ClosePermissionDenied // 4403: the authenticator refused with permission_denied
)

// CloseClientProtocolError (4002) is the close code a browser client sends
// when it detects a protocol error (browsers cannot send 1002). The server
// fails the connection's calls as for any close by the peer and logs a
// warning, as for 1002.
const CloseClientProtocolError = mux.CloseClientProtocolError

// refuse answers a handshake that will never succeed as it is (bad
// version, refused credentials). A browser cannot read the status or body
// of a refused upgrade (its WebSocket API reports only close code 1006), so
// a request with an Origin header (every browser sends one; the origin has
// already been allowed) is upgraded and closed at once with close code 4000
// + status and the reason, which the browser's close event carries. Other
// clients get the HTTP status and the reason as a text/plain body.
// Refusals that a wait can cure (429, 503) stay HTTP for everyone: a
// browser sees 1006 and retries with backoff, which is right for them, and
// an overloaded server does not upgrade connections it is shedding.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, status int, reason string) {
	if r.Header.Get("Origin") == "" || s.cfg.httpRefusals {
		http.Error(w, reason, status)
		return
	}
	w.Header().Del("WWW-Authenticate")
	// The refused connection lives for up to a few seconds (the close
	// frame, then the lingering read): it counts against the connection
	// limits and Shutdown waits for it, like any other.
	ip, ok := s.admit(w, r)
	if !ok {
		return
	}
	defer s.unadmit(ip)
	up := s.upgrader
	if status == http.StatusBadRequest {
		// Refused for its version: select the first subprotocol the
		// browser offered, if any, only so that its handshake completes
		// and it reads the 4400 that follows at once (a browser fails a
		// 101 that selects none of the subprotocols it offered, or one it
		// did not offer, and shows 1006). Nothing but the close frame is
		// sent on the connection.
		up.Subprotocols = nil
		if offered := websocket.Subprotocols(r); len(offered) > 0 {
			up.Subprotocols = offered[:1]
		}
	}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		return // gorilla has answered
	}
	mux.Refuse(ws, 4000+status, reason)
}

func (s *Server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if len(s.cfg.allowedOrigins) > 0 {
		o := strings.ToLower(strings.TrimRight(origin, "/"))
		return slices.Contains(s.cfg.allowedOrigins, o) || slices.Contains(s.cfg.allowedOrigins, "*")
	}
	u, err := url.Parse(origin)
	return err == nil && strings.EqualFold(u.Host, r.Host)
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
		reset := func() { st.Reset(errDeadline) }
		if rs != nil {
			reset = func() { rs.end(errDeadline) }
		}
		// The deadline ends the call even if the handler ignores ctx; a
		// RESET from a client whose deadline passed ends ctx with
		// DeadlineExceeded too (callctx.go). Without a deadline, the
		// stream's context is the handler's: it ends with Canceled and
		// the stream's cause, as callCtx's would.
		cctx, stop := newCallCtx(ctx, timeout, reset)
		defer stop()
		ctx = cctx
	}
	c.infoCtx = infoCtx{Context: ctx, c: c}
	ctx = &c.infoCtx
	if restarted != nil {
		ctx = context.WithValue(ctx, resumeCursorKey{}, restarted)
	}
	c.ctx = ctx
	res, err := s.run(ctx, h, c)
	c.finish(res, err)
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

// Shutdown drains the server gracefully: the OnDrain functions run first
// (a registered health service reports NOT_SERVING), new connections are
// refused with 503, every connection gets GOAWAY so clients open new calls elsewhere,
// calls in flight run to completion, then connections close. If ctx ends
// first, the remaining connections are closed and ctx's error returned.
// The server's http.Server, if any, is shut down separately.
func (s *Server) Shutdown(ctx context.Context) error {
	s.beginDrain()
	if s.resume != nil {
		// Streams waiting for a client to come back end now; streams
		// attached to a connection run on as that connection drains.
		s.resume.close(notResumed("server is shutting down"))
	}
	s.mu.Lock()
	s.draining = true
	s.drainCtx = ctx
	conns := make([]*mux.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.Shutdown(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return s.wait(ctx)
}

// Close closes every connection at once; calls in flight fail with
// unavailable and their handlers' contexts are canceled. It waits for the
// connections' goroutines to end.
func (s *Server) Close() error {
	s.beginDrain()
	if s.resume != nil {
		s.resume.close(notResumed("server closed"))
	}
	s.mu.Lock()
	s.draining = true
	s.drainCtx = closedCtx
	conns := make([]*mux.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.CloseGoingAway()
	}
	return s.wait(context.Background())
}

func (s *Server) wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ageOut drains conn, which reached the maximum connection age: GOAWAY,
// then it waits for its calls for up to the grace (WithMaxConnectionAge).
func (s *Server) ageOut(conn *mux.Conn) {
	s.mu.Lock()
	if _, open := s.conns[conn]; !open || s.draining {
		s.mu.Unlock()
		return // closed, or Shutdown drains it
	}
	// conn holds a count in wg until its OnClose, so this Add cannot race
	// a Wait that has seen zero.
	s.wg.Add(1)
	s.counters.aged.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if g := s.cfg.maxConnAgeGrace; g > 0 {
			ctx, cancel = context.WithTimeout(ctx, g)
		}
		defer cancel()
		_ = conn.Shutdown(ctx)
	}()
}

// jitter returns d changed by a random share of up to
// MaxConnectionAgeJitter, either way.
func jitter(d time.Duration) time.Duration {
	f := 1 + MaxConnectionAgeJitter*(2*rand.Float64()-1)
	return time.Duration(float64(d) * f)
}

// ConnCount returns the number of open connections.
func (s *Server) ConnCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.conns)
}

func (s *Server) releaseIP(ip string) {
	if s.perIP[ip]--; s.perIP[ip] <= 0 {
		delete(s.perIP, ip)
	}
}

func remoteIP(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// closedCtx is an already canceled context: a connection drained with it
// closes at once.
var closedCtx = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// pooledHijacker hands the upgrader the hijacked connection as
// mux.HijackPooled makes it: reads borrow pooled buffers, the read buffer
// is small, and the reader of an idle connection can park.
type pooledHijacker struct{ http.ResponseWriter }

// Hijack hijacks the underlying ResponseWriter's connection.
func (h pooledHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return mux.HijackPooled(h.ResponseWriter)
}
