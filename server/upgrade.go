package server

// Accepting connections: the WebSocket upgrade (ServeHTTP), admission
// (origin, authentication, connection limits per server and per IP) and
// the refusals a client is told about.

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/mux"
)

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
	sc := &serverConn{s: s, peer: Peer{Addr: r.RemoteAddr, Principal: id.Principal, ConnID: connID}, ip: ip}
	if s.resume != nil {
		sc.budget.limit = s.resume.lim.ConnBytes
	}
	cfg := s.cfg.mux
	cfg.PeerMaxHeaderBytes = mux.ParseLimit(r.Header.Get(mux.HeaderMaxHeaderBytes))
	cfg.Accept = sc.accept
	cfg.OnClose = sc.closed
	s.mu.Lock()
	conn := mux.New(ws, mux.RoleServer, cfg)
	sc.conn = conn // under s.mu, as closed reads it
	if !id.Expires.IsZero() {
		sc.expiry = time.AfterFunc(time.Until(id.Expires), func() {
			conn.ClosePolicy(tether.Errorf(tether.CodeUnauthenticated, "tether: credentials expired"), "credentials expired")
		})
	}
	if s.cfg.maxConnAge > 0 {
		sc.aged = time.AfterFunc(jitter(s.cfg.maxConnAge), func() { s.ageOut(conn) })
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

// serverConn is what an upgraded connection's hooks (mux.Config.Accept and
// OnClose) need, in one struct, with a method value for each hook, rather
// than a closure for each and an allocation per variable they share.
type serverConn struct {
	s    *Server
	peer Peer
	ip   string
	// Set under s.mu while the connection is made; closed reads them
	// under s.mu.
	conn         *mux.Conn
	expiry, aged *time.Timer
	budget       lazyBudget // the connection's replay budget, with resume
}

// accept is the connection's mux.Config.Accept: it serves one stream.
func (sc *serverConn) accept(st *mux.Stream, open *tetherv1.Open) {
	var budget *lazyBudget
	if sc.s.resume != nil {
		budget = &sc.budget
	}
	sc.s.serveStream(st, open, sc.peer, budget)
}

// closed is the connection's mux.Config.OnClose: it stops the connection's
// timers and gives its place back (admit).
func (sc *serverConn) closed(error) {
	s := sc.s
	s.mu.Lock()
	if sc.expiry != nil {
		sc.expiry.Stop()
	}
	if sc.aged != nil {
		sc.aged.Stop()
	}
	delete(s.conns, sc.conn)
	s.releaseIP(sc.ip)
	s.counters.bytesInClosed.Add(sc.conn.BytesIn())
	s.counters.bytesOutClosed.Add(sc.conn.BytesOut())
	s.mu.Unlock()
	s.wg.Done()
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
