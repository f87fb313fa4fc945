package client

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/clientconn"
	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/internal/mux"
)

// Option configures a Client.
type Option func(*config)

type config struct {
	mux              mux.Config
	resumeBuffer     int
	header           http.Header
	headerFunc       func(context.Context) (http.Header, error)
	tlsConfig        *tls.Config
	handshakeTimeout time.Duration
	backoff          BackoffConfig
	onState          func(State, error)
	logger           *slog.Logger
	interceptors     []Interceptor
	defaultRetry     *RetryPolicy
	budget           RetryBudget
	dlq              dlq.Store
	resolver         Resolver
	endpoints        []string
	connections      int
	dialer           func(ctx context.Context, addr string) (net.Conn, error)
}

// BackoffConfig shapes the delays between reconnection attempts: jittered
// exponential backoff (github.com/cenkalti/backoff/v4) that never gives up.
type BackoffConfig struct {
	// Initial is the delay before the second attempt (default 100ms). The
	// first attempt after a lost connection that proved healthy (it
	// delivered a response, or stayed open for HealthyUptime) waits a
	// random part of it, so clients that lost the same server do not
	// return in lockstep; a connection lost sooner counts as a failed
	// attempt, and the delays keep growing. A healthy connection the
	// server drains (GOAWAY) is replaced at once, without a delay.
	Initial time.Duration
	// Max caps the delay (default 10s).
	Max time.Duration
	// Multiplier grows the delay after each failure (default 1.6).
	Multiplier float64
	// Jitter is the randomization factor: each delay is drawn from
	// [d*(1-Jitter), d*(1+Jitter)] (default 0.5).
	Jitter float64
}

// Defaults.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultMaxMessageSize   = mux.DefaultMaxMessageSize
	// DefaultStreamWindow is the receive window a client grants per stream:
	// four times the server's (server.DefaultStreamWindow), because a
	// client's peer is its server, and what the window lets it queue is
	// bounded by the streams the client's own application opens. At 256
	// KiB a download stream of large messages ran at 73% to 75% of a raw
	// WebSocket stream; at 1 MiB it runs at 92% to 103% (docs/benchmarks/HISTORY.md,
	// sixth pass).
	DefaultStreamWindow = 1 << 20
	DefaultPingInterval = mux.DefaultPingInterval
	DefaultPingTimeout  = mux.DefaultPingTimeout
)

// WithHandshakeHeader adds HTTP headers to the WebSocket upgrade request
// (for example Authorization).
func WithHandshakeHeader(h http.Header) Option {
	return func(c *config) {
		if c.header == nil {
			c.header = http.Header{}
		}
		for k, vs := range h {
			for _, v := range vs {
				c.header.Add(k, v)
			}
		}
	}
}

// WithHandshakeHeaderFunc computes extra handshake headers for every
// connection attempt, for credentials that expire: a server that closes the
// connection when a token expires gets a fresh one on the reconnect. An
// error fails that attempt (it is retried with backoff).
func WithHandshakeHeaderFunc(fn func(ctx context.Context) (http.Header, error)) Option {
	return func(c *config) { c.headerFunc = fn }
}

// WithTLSConfig sets the TLS configuration for wss:// URLs.
func WithTLSConfig(cfg *tls.Config) Option { return func(c *config) { c.tlsConfig = cfg } }

// WithContextDialer makes the client open its TCP connections with dial
// instead of a net.Dialer: to bind a local address, or to connect through
// a tunnel. addr is the host:port to reach (the resolved address when a
// resolver gave one, the proxy's when a proxy is used); TLS and the
// WebSocket upgrade run over the connection dial returns.
func WithContextDialer(dial func(ctx context.Context, addr string) (net.Conn, error)) Option {
	return func(c *config) { c.dialer = dial }
}

// WithHandshakeTimeout bounds one connection attempt: TCP, TLS and the
// WebSocket upgrade (default 10s).
func WithHandshakeTimeout(d time.Duration) Option {
	return func(c *config) { c.handshakeTimeout = d }
}

// WithMaxMessageSize bounds one message in either direction (default 8 MiB).
func WithMaxMessageSize(n int) Option { return func(c *config) { c.mux.MaxMessageSize = n } }

// WithMaxPartialBytes bounds, per connection, the memory held for received
// messages whose fragments have not all arrived (default 4 × the maximum
// message size, never less than it, so one message of the largest size
// always fits). A stream whose message would take the connection over it
// is reset with resource_exhausted; the connection's other calls go on.
func WithMaxPartialBytes(n int) Option { return func(c *config) { c.mux.MaxPartialBytes = n } }

// WithStreamWindow sets the flow-control window granted to the server per
// stream (default 1 MiB, DefaultStreamWindow; minimum 64 KiB): what one
// stream can make the client buffer. A stream whose consumer keeps up with
// a server that runs into its credit may grow it, within 4 MiB of growth per
// connection, its first growth straight to the most the connection's streams
// grew (WithWindowGrowth; docs/PROTOCOL.md, section 7). Zero or less keeps
// the default.
func WithStreamWindow(n int) Option { return func(c *config) { c.mux.StreamWindow = n } }

// WithWindowGrowth bounds how far a stream's flow-control window may grow
// while its consumer keeps up with a server that runs into its credit
// (maxStreamWindow, default the stream window plus maxPerConnection; the
// stream window itself turns growth off) and, per connection, the sum of
// what the streams' windows have grown (maxPerConnection, default 4 MiB):
// what growth can add to the memory the server makes the client hold.
// Streams that grow share maxPerConnection: each may keep it over their
// number (one more while another asks), and one that holds more gives the
// rest back as it reads (docs/PROTOCOL.md, section 7). Zero or less keeps
// a default. A
// maxStreamWindow below the stream window is raised to it (1 MiB by
// default): to hold a stream to less, set WithStreamWindow.
func WithWindowGrowth(maxStreamWindow, maxPerConnection int) Option {
	return func(c *config) { c.mux.MaxStreamWindow, c.mux.MaxWindowGrowth = maxStreamWindow, maxPerConnection }
}

// WithHeartbeat sets how often the client pings the server and how long past
// that a silent server is given before the connection is declared dead, its
// calls fail with unavailable and the client reconnects (defaults 10s, 10s).
func WithHeartbeat(interval, timeout time.Duration) Option {
	return func(c *config) { c.mux.PingInterval, c.mux.PingTimeout = interval, timeout }
}

// WithMaxHeaderBytes bounds the cost (encoded size plus 32 bytes per
// metadata entry and per value) of response headers and trailers accepted
// (default 16 KiB), and of request metadata sent when the
// server has not announced its own limit. The client announces it in the
// handshake, so the server does not send more.
func WithMaxHeaderBytes(n int) Option { return func(c *config) { c.mux.MaxHeaderBytes = n } }

// WithWriteTimeout bounds one socket write (default 10s).
func WithWriteTimeout(d time.Duration) Option { return func(c *config) { c.mux.WriteTimeout = d } }

// WithBackoff sets the reconnection backoff. Zero fields keep their defaults.
func WithBackoff(b BackoffConfig) Option { return func(c *config) { c.backoff = b } }

// WithStateListener calls fn on every connection state change, with the
// error that caused it (nil when there is none). fn runs synchronously in
// the connection manager: keep it short and non-blocking. With several
// connections (WithConnections) it is called with the client's state
// (Client.State) each time one of them changes state, so the same state
// may be reported twice in a row.
func WithStateListener(fn func(State, error)) Option { return func(c *config) { c.onState = fn } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithInterceptors adds client interceptors; the first is outermost.
func WithInterceptors(interceptors ...Interceptor) Option {
	return func(c *config) { c.interceptors = append(c.interceptors, interceptors...) }
}

// CallOption configures one call: an alias of clientconn.CallOption, the
// type generated clients take.
type CallOption = clientconn.CallOption

// callOptions is a call's options as the client reads them.
type callOptions struct {
	clientconn.CallOptions
	// replay: the call replays a dead letter (InvokeRaw): one attempt,
	// never dead-lettered again.
	replay bool
}

// WithHeader adds request metadata to the call.
func WithHeader(md tether.Metadata) CallOption {
	return func(o *clientconn.CallOptions) {
		if o.Header == nil {
			o.Header = tether.Metadata{}
		}
		o.Header.Merge(md)
	}
}

// WithResponseHeader stores the response headers of a unary call in *md
// when the call returns: a unary call returns only its response message, so
// this is how the caller reads them (interceptors see them on the Call; a
// streaming call has them on its stream: Header).
func WithResponseHeader(md *tether.Metadata) CallOption {
	return func(o *clientconn.CallOptions) { o.ResponseHeader = md }
}

// WithResponseTrailer stores the response trailers of a unary call in *md
// when the call returns, also on error: this is how the caller reads them
// (interceptors see them on the Call; a streaming call has them on its
// stream: Trailer).
func WithResponseTrailer(md *tether.Metadata) CallOption {
	return func(o *clientconn.CallOptions) { o.ResponseTrailer = md }
}

// FailFast makes the call fail at once with unavailable when the client is
// not connected, instead of waiting for the connection until the call's
// context ends.
func FailFast() CallOption { return func(o *clientconn.CallOptions) { o.FailFast = true } }

// WithDefaultRetryPolicy sets the retry policy of unary methods that declare
// none in their .proto. Setting one asserts that the server deduplicates
// repeated calls of those methods by idempotency key (see RetryPolicy), as
// server/idempotency does for unary calls. It does not apply to streaming
// methods: nothing deduplicates a repeated stream on the server, so a
// stream is retried after it reached the server only when its method is
// safe to repeat (NO_SIDE_EFFECTS, IDEMPOTENT) or declares a policy of its
// own, or the call sets one (WithRetryPolicy).
func WithDefaultRetryPolicy(p *RetryPolicy) Option { return func(c *config) { c.defaultRetry = p } }

// WithRetryBudget sets the client's retry throttling (defaults: 100 tokens,
// 0.1 per success): when most recent attempts fail, retries stop until
// successes refill the budget, so a failing server is not flooded.
func WithRetryBudget(b RetryBudget) Option { return func(c *config) { c.budget = b } }

// WithDeadLetterQueue sets the store for calls whose policy dead-letters
// them, for example dlqbolt.Open("tether-dlq.db") (package
// github.com/tetherrpc/tether/dlq/dlqbolt). The client does not close
// it. Without a store, such calls fail with their last error.
func WithDeadLetterQueue(s dlq.Store) Option { return func(c *config) { c.dlq = s } }

// WithRetryPolicy overrides the method's retry policy for this call.
func WithRetryPolicy(p *RetryPolicy) CallOption {
	return func(o *clientconn.CallOptions) { o.RetryPolicy = p }
}

// WithoutRetries makes this call a single attempt (requests that never
// reached the server are still retried transparently).
func WithoutRetries() CallOption { return func(o *clientconn.CallOptions) { o.NoRetry = true } }

// WithIdempotencyKey sets the call's idempotency key instead of a random one.
// The key is the same across every attempt and any dead-letter replay, so a
// server can answer a repeat with the first result.
func WithIdempotencyKey(key string) CallOption {
	return func(o *clientconn.CallOptions) {
		if o.Header == nil {
			o.Header = tether.Metadata{}
		}
		o.Header.Set(tether.MetadataIdempotencyKey, key)
	}
}
