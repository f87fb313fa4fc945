package server

import (
	"log/slog"
	"strings"
	"time"

	"github.com/tetherrpc/tether/internal/mux"
)

// Option configures a Server.
type Option func(*config)

type config struct {
	mux              mux.Config
	allowedOrigins   []string
	handshakeTimeout time.Duration
	logger           *slog.Logger
	interceptors     []Interceptor
	maxConns         int
	maxConnsPerIP    int
	authenticate     Authenticator
	httpRefusals     bool
	maxConnAge       time.Duration
	maxConnAgeGrace  time.Duration
	resume           ResumeLimits
	noResume         bool
	cursorKeys       [][]byte // WithResumeCursorKeys
}

// MaxConnectionAgeJitter is the share of the maximum connection age by
// which each connection's age is randomized (plus or minus), so that the
// connections opened together, after a restart, do not drain together.
const MaxConnectionAgeJitter = 0.1

// WithMaxConnectionAge drains every connection once it is age old (plus or
// minus MaxConnectionAgeJitter): the server sends GOAWAY, the client opens
// its next connection at once (through the load balancer, possibly to a
// newer replica) and moves its new calls there, and the calls in flight
// finish on the old connection. After grace more, calls still running are
// ended with unavailable (a clean, retryable end) and the connection
// closes; grace 0 waits for them without a bound. This rebalances a fleet
// after a scale-out: without it a long-lived connection stays on its
// replica forever. The default age is 0: connections live as long as they
// like.
func WithMaxConnectionAge(age, grace time.Duration) Option {
	return func(c *config) { c.maxConnAge, c.maxConnAgeGrace = age, grace }
}

// Defaults of the server's limits. docs/PROTOCOL.md and docs/SECURITY.md
// list every limit with the error a client sees.
const (
	DefaultMaxMessageSize       = mux.DefaultMaxMessageSize
	DefaultMaxConcurrentStreams = mux.DefaultMaxConcurrentStreams
	DefaultStreamWindow         = mux.DefaultStreamWindow
	DefaultMaxHeaderBytes       = mux.DefaultMaxHeaderBytes
	DefaultPingInterval         = mux.DefaultPingInterval
	DefaultPingTimeout          = mux.DefaultPingTimeout
	DefaultWriteTimeout         = mux.DefaultWriteTimeout
	DefaultHandshakeTimeout     = 10 * time.Second
	DefaultMaxConnections       = 50_000
	DefaultMaxConnectionsPerIP  = 10_000
	DefaultMaxHeaderKeys        = mux.DefaultMaxHeaderKeys
	DefaultMaxMessageReadTime   = mux.DefaultMaxMessageReadTime
	DefaultMaxPingRate          = mux.DefaultMaxPingRate
	DefaultMaxIdleFrameRate     = mux.DefaultMaxIdleFrameRate
	DefaultMaxSendQueueBytes    = mux.DefaultMaxQueueBytes
)

// WithAllowedOrigins allows browser upgrades from these origins, written as
// "scheme://host[:port]"; "*" allows any origin. Without it, a request whose
// Origin header names another host than the request's is refused with 403.
// Requests with no Origin header come from non-browser clients (browsers
// always send one) and are allowed.
func WithAllowedOrigins(origins ...string) Option {
	return func(c *config) {
		for _, o := range origins {
			c.allowedOrigins = append(c.allowedOrigins, strings.ToLower(strings.TrimRight(o, "/")))
		}
	}
}

// WithHTTPHandshakeRefusals answers every refused handshake with its HTTP
// status (400, 401, 403), browsers included. By default a browser's request
// (one with an allowed Origin header; a foreign origin always gets 403) that
// is refused for its protocol version or its credentials is upgraded and
// closed at once with close code 4400, 4401 or 4403 and the reason, because
// a browser's WebSocket API shows neither the status nor the body of a
// refused upgrade.
func WithHTTPHandshakeRefusals() Option { return func(c *config) { c.httpRefusals = true } }

// WithMaxMessageSize bounds one message in either direction (default 8 MiB).
// A larger message fails its call with resource_exhausted; the connection's
// other calls go on.
func WithMaxMessageSize(n int) Option { return func(c *config) { c.mux.MaxMessageSize = n } }

// WithMaxPartialBytes bounds, per connection, the memory held for received
// messages whose fragments have not all arrived (default 4 × the maximum
// message size, never less than it, so one message of the largest size
// always fits). A stream whose message would take the connection over it
// is reset with resource_exhausted; the connection's other calls go on.
func WithMaxPartialBytes(n int) Option { return func(c *config) { c.mux.MaxPartialBytes = n } }

// WithMaxConcurrentStreams bounds the handlers running at once on one
// connection (default 1024). A call beyond it is refused with
// resource_exhausted before its handler runs.
func WithMaxConcurrentStreams(n int) Option {
	return func(c *config) { c.mux.MaxConcurrentStreams = n }
}

// WithStreamWindow sets the flow-control window granted to the client per
// stream (default 256 KiB, minimum 64 KiB). It bounds what one stream can
// make the server buffer; a stream whose handler keeps up with the client
// may grow it, within 4 MiB of growth per connection, its first growth
// straight to the most the connection's streams grew (WithWindowGrowth;
// docs/PROTOCOL.md, section 7).
func WithStreamWindow(n int) Option { return func(c *config) { c.mux.StreamWindow = n } }

// WithWindowGrowth bounds how far a stream's flow-control window may grow
// while its handler keeps up with a client that runs into its credit
// (maxStreamWindow, default the stream window plus maxPerConnection; the
// stream window itself turns growth off) and, per connection, the sum of
// what the streams' windows have grown (maxPerConnection, default 4 MiB):
// what growth can add to the memory the client makes the server hold. A
// stream's first growth goes straight to the most the connection's streams
// grew, within maxPerConnection. Streams that grow share maxPerConnection:
// each may keep it over their number (one more while another asks), and
// one that holds more gives the rest back as it reads (docs/PROTOCOL.md,
// section 7). Zero or less keeps a default.
func WithWindowGrowth(maxStreamWindow, maxPerConnection int) Option {
	return func(c *config) { c.mux.MaxStreamWindow, c.mux.MaxWindowGrowth = maxStreamWindow, maxPerConnection }
}

// WithMaxHeaderBytes bounds the cost of a call's request metadata: its
// encoded size plus 32 bytes per metadata entry and per value, so that it
// bounds memory, not only wire size (default 16 KiB); a costlier OPEN is
// refused with resource_exhausted. The
// server announces it in the handshake (Go clients then fail such calls
// before sending them), and also sends no more than this in response
// headers and trailers to clients that announce no limit of their own.
func WithMaxHeaderBytes(n int) Option { return func(c *config) { c.mux.MaxHeaderBytes = n } }

// WithHeartbeat sets how often the server pings each client and how long past
// that a silent client is given before its connection is closed and its calls
// canceled (defaults 10s and 10s).
func WithHeartbeat(interval, timeout time.Duration) Option {
	return func(c *config) { c.mux.PingInterval, c.mux.PingTimeout = interval, timeout }
}

// WithWriteTimeout bounds one socket write (default 10s); a client that does
// not read for that long is disconnected.
func WithWriteTimeout(d time.Duration) Option { return func(c *config) { c.mux.WriteTimeout = d } }

// WithHandshakeTimeout bounds the WebSocket upgrade (default 10s).
func WithHandshakeTimeout(d time.Duration) Option {
	return func(c *config) { c.handshakeTimeout = d }
}

// WithLogger sets the logger for connection events and handler panics
// (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithInterceptors adds interceptors that wrap every handler. The first one
// given is the outermost: it sees the call first and the result last.
func WithInterceptors(interceptors ...Interceptor) Option {
	return func(c *config) { c.interceptors = append(c.interceptors, interceptors...) }
}

// WithMaxConnections bounds the open connections of the server (default
// 50,000); an upgrade beyond it is answered 503 with Retry-After.
func WithMaxConnections(n int) Option { return func(c *config) { c.maxConns = n } }

// WithMaxConnectionsPerIP bounds the open connections from one remote IP
// address (default 10,000); an upgrade beyond it is answered 429.
func WithMaxConnectionsPerIP(n int) Option { return func(c *config) { c.maxConnsPerIP = n } }

// WithMaxHeaderKeys bounds the metadata entries of one call (default 64),
// counted before the metadata is decoded; more is refused with
// resource_exhausted.
func WithMaxHeaderKeys(n int) Option { return func(c *config) { c.mux.MaxHeaderKeys = n } }

// WithMaxMessageReadTime bounds how long one WebSocket message may take to
// arrive once it has started (default 30s): a message trickled in tiny
// fragments closes the connection with 1008.
func WithMaxMessageReadTime(d time.Duration) Option {
	return func(c *config) { c.mux.MaxMessageReadTime = d }
}

// WithFloodLimits bounds PING frames (default 10/s) and frames that carry no
// application data (default 1,000/s) a client may send, each with a burst of
// twice the rate; a flood closes the connection with 1008.
func WithFloodLimits(pingsPerSecond, idleFramesPerSecond float64) Option {
	return func(c *config) { c.mux.MaxPingRate, c.mux.MaxIdleFrameRate = pingsPerSecond, idleFramesPerSecond }
}

// WithMaxSendQueueBytes bounds what the server queues for one client that
// does not read (default 8 MiB); past it the client is disconnected with
// 1008. A client that reads slower than the write timeout is disconnected
// too (WithWriteTimeout).
func WithMaxSendQueueBytes(n int) Option { return func(c *config) { c.mux.MaxQueueBytes = n } }

// WithAuthenticator authenticates every client at the WebSocket handshake,
// before the upgrade: a failure is answered 401 (or 403 for an error with
// tether.CodePermissionDenied) and no connection is made. The identity's
// principal is in every call's CallInfo().Peer().Principal; when the
// identity expires, the connection is closed with 1008 ("credentials
// expired") and the client reconnects with fresh credentials. Under Serve's
// upgrade-only listener it runs on a goroutine that is reused for later
// connections' reading and calls, as handler goroutines are (see the
// package documentation):
// it must not leave pprof labels (use pprof.Do) or a locked OS thread
// behind.
func WithAuthenticator(a Authenticator) Option { return func(c *config) { c.authenticate = a } }
