package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
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
// A Client is safe for concurrent use; create one per server and share it.
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

	mu        sync.Mutex
	state     State
	conn      *mux.Conn // the ready connection, or nil
	lastErr   error
	permanent bool // lastErr will not go away by waiting (401, 403, 404, 400)
	// retryAfter is the server's Retry-After of the last refused upgrade
	// (429, 503); only the connection manager goroutine uses it.
	retryAfter time.Duration
	changed    chan struct{}
	conns      map[*mux.Conn]struct{} // every open connection, draining ones too
	counters   clientCounters
	budget     *retryBudget
	// served is the last connection that delivered a response to a call:
	// it proved healthy (see healthy).
	served atomic.Pointer[mux.Conn]
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
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the URL, credentials and all.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("tether: parse URL: %w", err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return nil, fmt.Errorf("tether: URL scheme must be ws or wss, not %q", u.Scheme)
	}
	if u.User != nil {
		// The WebSocket dialer refuses userinfo (RFC 6455 section 3), and
		// it is a credential: say so without repeating it.
		return nil, errors.New("tether: URL must not contain a user name or password; send credentials with WithHandshakeHeader")
	}
	shown, secrets := redactURL(u)
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
	go c.run()
	return c, nil
}

// URL returns the URL the client dials as the client prints it: userinfo
// and the values of credential-like query parameters (access_token, token,
// key, password, secret, auth, ...) replaced by REDACTED. The client's
// errors and logs use this form only.
func (c *Client) URL() string { return c.url }

// State returns the connection's current state.
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

func (c *Client) setState(st State, err error, conn *mux.Conn) {
	c.mu.Lock()
	if c.state == StateClosed {
		c.mu.Unlock()
		return
	}
	c.state, c.lastErr, c.conn = st, err, conn
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	if c.cfg.onState != nil {
		c.cfg.onState(st, err)
	}
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
func (c *Client) run() {
	defer c.wg.Done()
	defer c.shutdown()
	b := c.newBackoff()
	first := true
	for {
		if !first {
			// A lost connection: wait a random part of the initial interval
			// so that clients of one server do not return in lockstep.
			if !c.sleep(time.Duration(rand.Int64N(int64(b.InitialInterval) + 1))) {
				return
			}
		}
		first = false
		for {
			c.setState(StateConnecting, nil, nil)
			c.counters.attempts.Add(1)
			conn, err := c.dial()
			if err == nil {
				c.counters.connects.Add(1)
				c.setState(StateReady, nil, conn)
				opened := time.Now()
				if err = c.serve(conn); err == nil {
					if c.ctx.Err() != nil {
						return
					}
					healthy := c.healthy(conn, opened)
					c.served.CompareAndSwap(conn, nil) // do not keep the old connection alive
					if healthy {
						b.Reset() // the connection was good: start the next backoff afresh
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
			c.setState(StateTransientFailure, err, nil)
			c.cfg.logger.Debug("tether connect failed", "url", c.url, "err", err)
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
		}
	}
}

// healthy reports whether conn, now lost or draining, proved healthy: it
// delivered a response to a call, or stayed open for HealthyUptime.
func (c *Client) healthy(conn *mux.Conn, opened time.Time) bool {
	return c.served.Load() == conn || time.Since(opened) >= HealthyUptime
}

// markServed records that conn delivered a response to a call.
func (c *Client) markServed(conn *mux.Conn) {
	if c.served.Load() != conn {
		c.served.Store(conn)
	}
}

// lostEarly is the error of a connection lost before it proved healthy.
func (c *Client) lostEarly(conn *mux.Conn, age time.Duration) error {
	cause := "tether: server is going away"
	if err := conn.Err(); err != nil {
		cause = c.scrub(err.Error()) // may hold the server's close reason
	}
	return tether.Errorf(tether.CodeUnavailable, "tether: connection to %s lost %v after it opened, before it served a call: %s", c.url, age.Round(time.Millisecond), cause)
}

// serve waits until conn ends, the server drains it or the client closes.
// It returns the refusal when the server closed conn with a 44xx code (a
// browser-style handshake refusal right after the upgrade: a failed
// attempt, not a lost connection, and calls fail with its code), else nil.
func (c *Client) serve(conn *mux.Conn) error {
	select {
	case <-conn.Done():
		if err := conn.Err(); mux.IsRefusal(err) {
			c.markPermanent(true)
			return err
		}
		c.setState(StateIdle, conn.Err(), nil)
	case <-conn.Draining():
		// The server sent GOAWAY: calls in flight finish on the old
		// connection, new ones wait for the next.
		c.setState(StateIdle, tether.Errorf(tether.CodeUnavailable, "tether: server is going away"), nil)
	case <-c.ctx.Done():
	}
	return nil
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
	c.state, c.conn, c.lastErr = StateClosed, nil, ErrClosed
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

// dial makes one connection attempt.
func (c *Client) dial() (*mux.Conn, error) {
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
	ws, resp, err := c.dialer.DialContext(ctx, c.dialURL, header)
	if err != nil {
		return nil, c.handshakeError(err, resp)
	}
	if ws.Subprotocol() != tether.Subprotocol {
		ws.Close()
		c.markPermanent(true)
		return nil, tether.Errorf(tether.CodeUnavailable, "tether: server at %s did not accept subprotocol %s", c.url, tether.Subprotocol)
	}
	c.markPermanent(false)
	cfg := c.cfg.mux
	// Queue calls beyond the server's announced stream limit on this side
	// instead of having them refused (and retried) by the server.
	cfg.PeerMaxStreams = mux.ParseLimit(resp.Header.Get(mux.HeaderMaxConcurrentStreams))
	cfg.PeerMaxHeaderBytes = mux.ParseLimit(resp.Header.Get(mux.HeaderMaxHeaderBytes))
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

func (c *Client) markPermanent(p bool) {
	c.mu.Lock()
	c.permanent = p
	c.mu.Unlock()
}

// handshakeError explains a failed upgrade, keeping the server's reason.
func (c *Client) handshakeError(err error, resp *http.Response) error {
	if resp == nil {
		c.markPermanent(false)
		return tether.Errorf(tether.CodeUnavailable, "tether: connect %s: %s", c.url, c.scrub(err.Error()))
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
	return tether.Errorf(code, "tether: connect %s: %s: %s", c.url, resp.Status, c.scrub(trimBody(body)))
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
		st, conn, lastErr, permanent, ch := c.state, c.conn, c.lastErr, c.permanent, c.changed
		c.mu.Unlock()
		switch {
		case st == StateReady:
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
