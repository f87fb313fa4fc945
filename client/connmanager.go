// The connection manager: each sub runs its own goroutine (sub.run, started
// by Client.runAll) that dials, serves one connection until it is lost or
// drained, backs off (cenkalti/backoff) and dials again, until the Client
// closes. Its state is guarded by Client.mu, except the fields its doc says
// the goroutine uses alone.

package client

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/mux"
)

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
	// The WebSocket's reads borrow pooled buffers (mux.PooledReads) under
	// the smallest read buffer gorilla/websocket accepts: an idle
	// connection holds no read buffer.
	dialer := c.dialer
	dialer.ReadBufferSize = mux.ReadBufferSize
	// Over ws://, gorilla reads the TCP connection itself: its reads can
	// follow the frames (mux.TrackedReads), so that the connection's reader
	// can step aside and a unary caller read its own reply.
	plain := len(c.ep.dialURL) > 3 && strings.EqualFold(c.ep.dialURL[:3], "ws:")
	dialTo := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		var err error
		if c.cfg.dialer != nil {
			conn, err = c.cfg.dialer(ctx, addr)
		} else {
			conn, err = tcpDialer.DialContext(ctx, network, addr)
		}
		if err != nil {
			return nil, err
		}
		if plain {
			return mux.TrackedReads(conn), nil
		}
		return mux.PooledReads(conn), nil
	}
	dialer.NetDialContext = dialTo
	if c.ep.addr != "" {
		// A resolved address: connect there, keep the URL's host for the
		// Host header and TLS.
		dialer.Proxy = nil
		addr := c.ep.addr
		dialer.NetDialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialTo(ctx, network, addr)
		}
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
	cfg.PeerResumeCursors = mux.ParseResumeCursors(resp.Header.Get(mux.HeaderResumeCursors))
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

// tcpDialer opens the client's TCP connections (unless WithContextDialer
// gave a dial function) without TCP keep-alive: the connection's heartbeats
// (PING frames, and the read deadline they renew) already detect a dead
// server and keep middleboxes' state alive, and turning keep-alive on costs
// four system calls per connection (docs/BENCHMARKS.md, "Round 2:
// connection set-up").
var tcpDialer = net.Dialer{KeepAlive: -1}

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
