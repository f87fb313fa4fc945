package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
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
	if c.cfg.mux.StreamWindow <= 0 {
		c.cfg.mux.StreamWindow = DefaultStreamWindow // the mux's default is the server's
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
	// Every receiver decodes a message before it receives the next
	// (unaryAttempt decodes the response before the status; streams and
	// resumed streams decode in Receive).
	c.cfg.mux.LendFirstMessage = true
	c.budget = newRetryBudget(c.cfg.budget)
	c.dialer = websocket.Dialer{
		// No HandshakeTimeout: sub.dial's context carries the handshake
		// timeout (a second one would cost a context and a timer per dial).
		Proxy:           http.ProxyFromEnvironment,
		TLSClientConfig: c.cfg.tlsConfig,
		Subprotocols:    []string{tether.Subprotocol},
		WriteBufferPool: mux.WriteBufferPool,
		WriteBufferSize: mux.WriteBufferSize,
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

// MaxRetryAfter caps the delay a server's Retry-After can impose on
// reconnection, so that a wrong or hostile value cannot park a client for
// hours.
const MaxRetryAfter = 5 * time.Minute

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
