package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/mux"
)

// ErrClosed is returned by calls made on a closed Client.
var ErrClosed = tether.NewError(tether.CodeCanceled, errors.New("tether: client is closed"))

// Client is a connection manager: it keeps one WebSocket connection to a
// tether server, reconnects when it is lost, and runs every call over it.
// Given several endpoints of one service (WithEndpoints, WithResolver), it
// connects to one and fails over to the next when it refuses, dies or
// drains; WithConnections keeps several connections and spreads calls
// over them. A Client is safe for concurrent use; create one per service and
// share it.
type Client struct {
	// url is the URL as the client prints it, in errors, logs and
	// spans: credentials redacted (redactURL). Only dial uses dialURL.
	url     string
	dialURL string
	secrets []string // the credentials url hides, for scrub
	cfg     config
	dialer  websocket.Dialer

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	secretsMu sync.RWMutex // guards secrets once the connection managers run

	// subs are the connection managers, one per connection the client
	// keeps (WithConnections; one by default).
	subs []*sub
	rr   atomic.Uint32 // round-robin over the ready connections
	base int           // the endpoint index the first manager starts at

	mu        sync.Mutex
	state     State // the best of the managers' states (aggregateLocked)
	lastErr   error
	permanent bool // lastErr will not go away by waiting (401, 403, 404, 400)
	changed   chan struct{}
	conns     map[*mux.Conn]struct{} // every open connection, draining ones too
	counters  clientCounters
	budget    *retryBudget
}

// sub is one connection manager: it keeps one connection, to one endpoint
// at a time. It shares its Client's configuration, lock and counters.
type sub struct {
	*Client
	idx int // its place in Client.subs

	// Guarded by Client.mu.
	st        State
	conn      *mux.Conn // the ready connection, or nil
	permanent bool      // its last error will not go away by waiting

	// current is the connection this manager serves (ready or draining),
	// for markServed; served is its last connection that delivered a
	// response to a call: it proved healthy (see healthy).
	current, served atomic.Pointer[mux.Conn]

	// Used by the manager's goroutine only. retryAfter is the server's
	// Retry-After of the last refused upgrade (429, 503). The endpoints
	// (resolver.go): the last resolved list, the index of the one dialed
	// last (or next), the failed attempts since the last resolution, the
	// endpoint of the connection or attempt under way, and the resolver's
	// last error, if it failed.
	retryAfter time.Duration
	eps        []endpoint
	cur        int
	tried      int
	ep         endpoint
	resolveErr error
}

// HealthyUptime is how long a connection must stay open, if it has not
// delivered a response to a call, before the reconnection backoff starts
// afresh when it is lost. A connection lost sooner counts as a failed
// attempt, so that a server that accepts and at once closes (a token
// rejected right after the upgrade) is redialed with a growing delay, not in
// a loop; grpc-go resets its backoff only after a connection proved healthy
// too.
const HealthyUptime = 5 * time.Second

// New returns a Client for a ws:// or wss:// URL and starts connecting in
// the background. It fails only for a malformed URL, or one with userinfo
// (user:password@), which WebSocket URLs do not allow. Credentials in the
// query (access_token=...) are sent, but never printed: see URL.
func New(rawURL string, opts ...Option) (*Client, error) {
	shown, secrets, err := parseEndpoint(rawURL)
	if err != nil {
		return nil, err
	}
	c := &Client{
		url:     shown,
		dialURL: rawURL,
		secrets: secrets,
		changed: make(chan struct{}),
		conns:   make(map[*mux.Conn]struct{}),
	}
	c.cfg.handshakeTimeout = DefaultHandshakeTimeout
	for _, o := range opts {
		o(&c.cfg)
	}
	eps := []endpoint{{dialURL: rawURL, shown: shown}}
	if len(c.cfg.endpoints) > 0 {
		if c.cfg.resolver != nil {
			return nil, errors.New("tether: use WithEndpoints or WithResolver, not both")
		}
		for _, raw := range c.cfg.endpoints {
			shown, secrets, err := parseEndpoint(raw)
			if err != nil {
				return nil, err
			}
			c.addSecrets(secrets)
			eps = append(eps, endpoint{dialURL: raw, shown: shown})
		}
	}
	if c.cfg.resolver != nil {
		eps = nil // the resolver's, before the first attempt
	}
	// Spread the clients over the endpoints (a random start), and a
	// client's connections over consecutive ones.
	c.base = rand.IntN(1 << 20)
	for i := range max(c.cfg.connections, 1) {
		c.subs = append(c.subs, &sub{Client: c, idx: i, eps: eps, cur: c.base + i})
	}
	if c.cfg.logger == nil {
		c.cfg.logger = slog.Default()
	}
	c.cfg.mux.Logger = c.cfg.logger
	c.budget = newRetryBudget(c.cfg.budget)
	c.dialer = websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		HandshakeTimeout: c.cfg.handshakeTimeout,
		TLSClientConfig:  c.cfg.tlsConfig,
		Subprotocols:     []string{tether.Subprotocol},
		WriteBufferPool:  mux.WriteBufferPool,
		WriteBufferSize:  mux.WriteBufferSize,
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.wg.Add(1)
	go c.runAll()
	return c, nil
}

// URL returns the URL the client dials as the client prints it: userinfo
// and the values of credential-like query parameters (access_token, token,
// key, password, secret, auth, ...) replaced by REDACTED. The client's
// errors and logs use this form only.
func (c *Client) URL() string { return c.url }

// State returns the connection's current state; with several connections
// (WithConnections), the best of theirs: ready while any is ready.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// WaitForStateChange waits until the state differs from from, or ctx ends,
// and returns the state.
func (c *Client) WaitForStateChange(ctx context.Context, from State) State {
	for {
		c.mu.Lock()
		st, ch := c.state, c.changed
		c.mu.Unlock()
		if st != from {
			return st
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return st
		}
	}
}

// Close closes the connection and stops reconnecting. Calls in flight fail
// with unavailable; later calls fail with ErrClosed. Close waits for the
// client's goroutines to end and is idempotent.
func (c *Client) Close() error {
	c.cancel()
	c.wg.Wait()
	return nil
}

// setState records the manager's state and recomputes the client's.
func (c *sub) setState(st State, err error, conn *mux.Conn) {
	c.mu.Lock()
	if c.Client.state == StateClosed {
		c.mu.Unlock()
		return
	}
	c.st, c.conn = st, conn
	agg := c.aggregateLocked()
	if err != nil || len(c.subs) == 1 {
		c.lastErr = err
	}
	c.Client.permanent = c.permanent
	c.Client.state = agg
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	if c.cfg.onState != nil {
		c.cfg.onState(agg, err)
	}
}

// aggregateLocked is the client's state: ready if a connection is,
// else connecting if a manager is, else idle if one is, else
// transient_failure.
func (c *Client) aggregateLocked() State {
	agg := StateTransientFailure
	for _, s := range c.subs {
		switch s.st {
		case StateReady:
			return StateReady
		case StateConnecting:
			agg = StateConnecting
		case StateIdle:
			if agg != StateConnecting {
				agg = StateIdle
			}
		}
	}
	return agg
}

// readyLocked returns a ready connection, round-robin over the managers'.
func (c *Client) readyLocked() *mux.Conn {
	n := len(c.subs)
	if n == 1 {
		return c.subs[0].conn
	}
	start := int(c.rr.Add(1))
	for i := range n {
		if s := c.subs[(start+i)%n]; s.st == StateReady {
			return s.conn
		}
	}
	return nil
}

// runAll runs the connection managers until Close, then closes every
// connection.
func (c *Client) runAll() {
	defer c.wg.Done()
	defer c.shutdown()
	if len(c.subs) == 1 {
		c.subs[0].run()
		return
	}
	var wg sync.WaitGroup
	for _, s := range c.subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.run()
		}()
	}
	wg.Wait()
}

// newBackoff builds the reconnection policy from the config: exponential,
// jittered, capped, and never stopping (MaxElapsedTime 0; backoff/v4's
// default would give up after 15 minutes).
func (c *Client) newBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = orDefault(c.cfg.backoff.Initial, 100*time.Millisecond)
	b.MaxInterval = orDefault(c.cfg.backoff.Max, 10*time.Second)
	b.Multiplier = c.cfg.backoff.Multiplier
	if b.Multiplier <= 1 {
		b.Multiplier = 1.6
	}
	b.RandomizationFactor = c.cfg.backoff.Jitter
	if b.RandomizationFactor <= 0 || b.RandomizationFactor > 1 {
		b.RandomizationFactor = 0.5
	}
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// run is the connection manager: connect, serve until the connection is
// lost or drained, back off, repeat, until Close.
func (c *sub) run() {
	b := c.newBackoff()
	first, moved := true, false
	for {
		if !first && !moved {
			// A lost connection: wait a random part of the initial interval
			// so that clients of one server do not return in lockstep. A
			// healthy connection the server drained (GOAWAY) is replaced at
			// once instead: the server asked the client to move, it is
			// still up to finish the old calls, and new calls wait for the
			// next connection (or go over the client's others; see serve).
			if !c.sleep(time.Duration(rand.Int64N(int64(b.InitialInterval) + 1))) {
				return
			}
		}
		first, moved = false, false
		c.resolve()
		for {
			c.setState(StateConnecting, nil, nil)
			c.counters.attempts.Add(1)
			conn, err := c.dial()
			if err == nil {
				c.counters.connects.Add(1)
				c.current.Store(conn)
				c.setState(StateReady, nil, conn)
				opened := time.Now()
				var drained bool
				if drained, err = c.serve(conn); err == nil {
					if c.ctx.Err() != nil {
						return
					}
					healthy := c.healthy(conn, opened)
					// Do not keep the old connection alive.
					c.current.CompareAndSwap(conn, nil)
					c.served.CompareAndSwap(conn, nil)
					if healthy {
						b.Reset() // the connection was good: start the next backoff afresh
						moved = drained
						c.cur++ // the next connection goes to the next endpoint
						break
					}
					// Lost before it proved healthy: a failed attempt,
					// and the backoff keeps growing.
					err = c.lostEarly(conn, time.Since(opened))
				}
			}
			if c.ctx.Err() != nil {
				return
			}
			if c.cur, c.tried = c.cur+1, c.tried+1; c.tried < len(c.eps) {
				// Fail over: an endpoint of this round is still untried.
				c.cfg.logger.Debug("tether connect failed, trying the next endpoint", "url", c.ep.shown, "err", err)
				continue
			}
			c.setState(StateTransientFailure, err, nil)
			c.cfg.logger.Debug("tether connect failed", "url", c.ep.shown, "err", err)
			delay := b.NextBackOff()
			if ra := c.retryAfter; ra > 0 {
				// The server said when to come back: not before, and
				// spread over half as long again so that the clients it
				// refused together do not return together.
				c.retryAfter = 0
				delay = max(delay, ra+time.Duration(rand.Int64N(int64(ra/2)+1)))
			}
			if !c.sleep(delay) {
				return
			}
			c.resolve()
		}
	}
}

// resolve asks the resolver, if any, for the endpoints again and starts a
// new round of attempts over them. On an error it keeps the last list (an
// empty one makes the next attempt fail with the error).
func (c *sub) resolve() {
	c.tried = 0
	if c.cfg.resolver == nil {
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.handshakeTimeout)
	defer cancel()
	found, err := c.cfg.resolver.Resolve(ctx, c.dialURL)
	var eps []endpoint
	for _, e := range found {
		shown, secrets, perr := parseEndpoint(e.URL)
		if perr != nil {
			err = errors.Join(err, perr)
			continue
		}
		c.addSecrets(secrets)
		eps = append(eps, endpoint{dialURL: e.URL, shown: shown, addr: e.Addr})
	}
	if err != nil {
		c.cfg.logger.Warn("tether resolver failed", "target", c.url, "err", c.scrub(err.Error()))
		c.resolveErr = tether.Errorf(tether.CodeUnavailable, "tether: resolve %s: %s", c.url, c.scrub(err.Error()))
	} else {
		c.resolveErr = nil
	}
	if len(eps) == 0 {
		return // keep the last list; none makes dial fail with resolveErr
	}
	if c.eps == nil {
		c.cur = c.base + c.idx // spread as New does
	}
	c.eps = eps
}

// healthy reports whether conn, now lost or draining, proved healthy: it
// delivered a response to a call, or stayed open for HealthyUptime.
func (c *sub) healthy(conn *mux.Conn, opened time.Time) bool {
	return c.served.Load() == conn || time.Since(opened) >= HealthyUptime
}

// markServed records that conn delivered a response to a call.
func (c *Client) markServed(conn *mux.Conn) {
	for _, s := range c.subs {
		if s.current.Load() == conn {
			if s.served.Load() != conn {
				s.served.Store(conn)
			}
			return
		}
	}
}

// lostEarly is the error of a connection lost before it proved healthy.
func (c *sub) lostEarly(conn *mux.Conn, age time.Duration) error {
	cause := "tether: server is going away"
	if err := conn.Err(); err != nil {
		cause = c.scrub(err.Error()) // may hold the server's close reason
	}
	return tether.Errorf(tether.CodeUnavailable, "tether: connection to %s lost %v after it opened, before it served a call: %s", c.ep.shown, age.Round(time.Millisecond), cause)
}

// serve waits until conn ends, the server drains it or the client closes,
// and reports whether the server drained it (GOAWAY). It returns the
// refusal when the server closed conn with a 44xx code (a browser-style
// handshake refusal right after the upgrade: a failed attempt, not a lost
// connection, and calls fail with its code), else nil.
func (c *sub) serve(conn *mux.Conn) (drained bool, err error) {
	select {
	case <-conn.Done():
		if err := conn.Err(); mux.IsRefusal(err) {
			c.markPermanent(true)
			return false, err
		}
		c.setState(StateIdle, conn.Err(), nil)
	case <-conn.Draining():
		// The server sent GOAWAY: calls in flight finish on the old
		// connection (it stays in conns until it closes), new ones wait
		// for the next, which run dials at once: no call waits for the
		// drain, and a call that raced the GOAWAY is refused unprocessed
		// and retried on the next connection.
		c.setState(StateIdle, tether.Errorf(tether.CodeUnavailable, "tether: server is going away"), nil)
		return true, nil
	case <-c.ctx.Done():
	}
	return false, nil
}

func (c *Client) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

func (c *Client) shutdown() {
	c.mu.Lock()
	c.state, c.lastErr = StateClosed, ErrClosed
	for _, s := range c.subs {
		s.conn = nil
	}
	close(c.changed)
	c.changed = make(chan struct{})
	conns := make([]*mux.Conn, 0, len(c.conns))
	for conn := range c.conns {
		conns = append(conns, conn)
	}
	c.mu.Unlock()
	if c.cfg.onState != nil {
		c.cfg.onState(StateClosed, nil)
	}
	for _, conn := range conns {
		conn.Close()
		<-conn.Done()
	}
}

// dial makes one connection attempt, to the current endpoint.
func (c *sub) dial() (*mux.Conn, error) {
	if len(c.eps) == 0 {
		c.markPermanent(false)
		if c.resolveErr != nil {
			return nil, c.resolveErr
		}
		return nil, tether.Errorf(tether.CodeUnavailable, "tether: resolve %s: no endpoints", c.url)
	}
	c.ep = c.eps[c.cur%len(c.eps)]
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.handshakeTimeout)
	defer cancel()
	header := c.cfg.header.Clone()
	if c.cfg.headerFunc != nil {
		extra, err := c.cfg.headerFunc(ctx)
		if err != nil {
			return nil, tether.Errorf(tether.CodeUnauthenticated, "tether: handshake headers: %v", err)
		}
		if header == nil {
			header = http.Header{}
		}
		for k, vs := range extra {
			header[k] = append(header[k], vs...)
		}
	}
	if header == nil {
		header = http.Header{}
	}
	c.cfg.mux.Announce(header, mux.RoleClient)
	dialer := &c.dialer
	if c.ep.addr != "" {
		// A resolved address: connect there, keep the URL's host for the
		// Host header and TLS.
		d := c.dialer
		d.Proxy = nil
		addr := c.ep.addr
		d.NetDialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return new(net.Dialer).DialContext(ctx, network, addr)
		}
		dialer = &d
	}
	ws, resp, err := dialer.DialContext(ctx, c.ep.dialURL, header)
	if err != nil {
		return nil, c.handshakeError(err, resp)
	}
	if ws.Subprotocol() != tether.Subprotocol {
		ws.Close()
		c.markPermanent(true)
		return nil, tether.Errorf(tether.CodeUnavailable, "tether: server at %s did not accept subprotocol %s", c.ep.shown, tether.Subprotocol)
	}
	c.markPermanent(false)
	cfg := c.cfg.mux
	// Queue calls beyond the server's announced stream limit on this side
	// instead of having them refused (and retried) by the server.
	cfg.PeerMaxStreams = mux.ParseLimit(resp.Header.Get(mux.HeaderMaxConcurrentStreams))
	cfg.PeerMaxHeaderBytes = mux.ParseLimit(resp.Header.Get(mux.HeaderMaxHeaderBytes))
	cfg.PeerResumeGrace = time.Duration(mux.ParseLimit(resp.Header.Get(mux.HeaderResumeGrace))) * time.Second
	var conn *mux.Conn
	c.wg.Add(1)
	cfg.OnClose = func(error) {
		c.mu.Lock()
		delete(c.conns, conn)
		c.counters.bytesInClosed.Add(conn.BytesIn())
		c.counters.bytesOutClosed.Add(conn.BytesOut())
		c.mu.Unlock()
		c.wg.Done()
	}
	c.mu.Lock()
	conn = mux.New(ws, mux.RoleClient, cfg)
	c.conns[conn] = struct{}{}
	c.mu.Unlock()
	return conn, nil
}

func (c *sub) markPermanent(p bool) {
	c.mu.Lock()
	c.permanent = p
	c.mu.Unlock()
}

// handshakeError explains a failed upgrade, keeping the server's reason.
func (c *sub) handshakeError(err error, resp *http.Response) error {
	if resp == nil {
		c.markPermanent(false)
		return tether.Errorf(tether.CodeUnavailable, "tether: connect %s: %s", c.ep.shown, c.scrub(err.Error()))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	code := tether.CodeUnavailable
	permanent := true
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		code = tether.CodeUnauthenticated
	case http.StatusForbidden:
		code = tether.CodePermissionDenied
	case http.StatusNotFound:
		code = tether.CodeUnimplemented
	case http.StatusBadRequest, http.StatusUpgradeRequired:
		code = tether.CodeFailedPrecondition
	default:
		permanent = false
	}
	c.markPermanent(permanent)
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		c.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return tether.Errorf(code, "tether: connect %s: %s: %s", c.ep.shown, resp.Status, c.scrub(trimBody(body)))
}

// MaxRetryAfter caps the delay a server's Retry-After can impose on
// reconnection, so that a wrong or hostile value cannot park a client for
// hours.
const MaxRetryAfter = 5 * time.Minute

// parseRetryAfter reads a Retry-After header (delay-seconds or an HTTP date,
// RFC 9110 section 10.2.3) as a delay from now, capped at MaxRetryAfter; 0
// when absent or malformed.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseUint(v, 10, 64); err == nil {
		d = time.Duration(min(secs, uint64(MaxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), MaxRetryAfter)
}

func trimBody(b []byte) string {
	s := string(b)
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	return s
}

// getConn returns the ready connection, waiting for one unless failFast.
func (c *Client) getConn(ctx context.Context, failFast bool) (*mux.Conn, error) {
	for {
		c.mu.Lock()
		st, lastErr, permanent, ch := c.state, c.lastErr, c.permanent, c.changed
		var conn *mux.Conn
		if st == StateReady {
			conn = c.readyLocked()
		}
		c.mu.Unlock()
		switch {
		case st == StateReady && conn != nil:
			return conn, nil
		case st == StateClosed:
			return nil, ErrClosed
		case st == StateTransientFailure && (failFast || permanent):
			return nil, lastErr
		}
		select {
		case <-ch:
		case <-ctx.Done():
			err := tether.AsError(ctx.Err())
			if lastErr != nil {
				return nil, tether.NewError(err.Code(), fmt.Errorf("%w while waiting for a connection (last error: %v)", ctx.Err(), lastErr))
			}
			return nil, tether.NewError(err.Code(), fmt.Errorf("%w while waiting for a connection", ctx.Err()))
		}
	}
}
