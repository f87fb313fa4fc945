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

// WithMaxMessageSize bounds one message in either direction (default 8 MiB).
// A larger message fails its call with resource_exhausted; the connection's
// other calls go on.
func WithMaxMessageSize(n int) Option { return func(c *config) { c.mux.MaxMessageSize = n } }

// WithMaxConcurrentStreams bounds the handlers running at once on one
// connection (default 1024). A call beyond it is refused with
// resource_exhausted before its handler runs.
func WithMaxConcurrentStreams(n int) Option {
	return func(c *config) { c.mux.MaxConcurrentStreams = n }
}

// WithStreamWindow sets the flow-control window granted to the client per
// stream (default 256 KiB, minimum 64 KiB). It bounds what one stream can
// make the server buffer.
func WithStreamWindow(n int) Option { return func(c *config) { c.mux.StreamWindow = n } }

// WithMaxHeaderBytes bounds the encoded size of a call's request metadata
// (default 16 KiB); a larger OPEN is refused with resource_exhausted.
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
