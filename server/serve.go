package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Timeouts and limits of the http.Server that Serve and ListenAndServe run.
// WebSocket connections are hijacked from net/http once upgraded, so only
// DefaultReadHeaderTimeout and DefaultMaxRequestHeaderBytes apply to them
// (to the upgrade request; they are also the upgrade-only listener's,
// which Serve runs without an HTTP handler); the others bound plain HTTP
// requests to the same server, such as a health check on a mux that also mounts the
// Server. An upgraded connection is bounded by the Server's own options
// (WithHeartbeat, WithWriteTimeout, WithMaxMessageReadTime).
const (
	// DefaultReadHeaderTimeout bounds reading a request's headers, the
	// WebSocket upgrade included, from the moment the connection is
	// accepted (and the TLS handshake): a client that trickles its
	// request, or sends nothing, is disconnected after it.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultHTTPReadTimeout bounds reading a whole plain HTTP request.
	DefaultHTTPReadTimeout = 30 * time.Second
	// DefaultHTTPWriteTimeout bounds writing a plain HTTP response.
	DefaultHTTPWriteTimeout = 30 * time.Second
	// DefaultIdleTimeout bounds how long a kept-alive HTTP connection
	// waits for its next request.
	DefaultIdleTimeout = 120 * time.Second
	// DefaultMaxRequestHeaderBytes bounds the size of a request's headers
	// (net/http's own default is 1 MiB).
	DefaultMaxRequestHeaderBytes = 64 << 10
	// DefaultShutdownGrace is how long Serve waits, once its context has
	// ended, for calls in flight to finish before it closes the remaining
	// connections.
	DefaultShutdownGrace = 30 * time.Second
)

// ServeOption configures Serve and ListenAndServe.
type ServeOption func(*serveConfig)

type serveConfig struct {
	handler           http.Handler
	tls               *tls.Config
	grace             time.Duration
	drainDelay        time.Duration
	readHeaderTimeout time.Duration
	http              []func(*http.Server)
}

// WithReadHeaderTimeout sets how long a connection may take to send its
// upgrade request, from the moment it is accepted (default
// DefaultReadHeaderTimeout): a client that trickles its request, or sends
// nothing, is disconnected after it. Zero or less keeps the default: the
// request is never read without a bound.
func WithReadHeaderTimeout(d time.Duration) ServeOption {
	return func(c *serveConfig) {
		if d > 0 {
			c.readHeaderTimeout = d
		}
	}
}

// WithDrainDelay makes Serve, once its context has ended, run the server's
// OnDrain functions (a health service registered with health.Register
// reports NOT_SERVING, and its readiness endpoint answers 503) and go on
// serving for d, new connections included, before it refuses new
// connections and sends GOAWAY. Set d to how long your load balancer takes
// to see a failed readiness probe (Kubernetes: periodSeconds times
// failureThreshold), so that no client is sent to a replica that already
// refuses it. The default is 0: GOAWAY at once.
func WithDrainDelay(d time.Duration) ServeOption {
	return func(c *serveConfig) { c.drainDelay = d }
}

// WithHTTPHandler serves h instead of the Server alone: a mux that mounts
// the Server on the path clients dial, next to other endpoints. Shutdown
// still drains the Server; h must route to it.
func WithHTTPHandler(h http.Handler) ServeOption {
	return func(c *serveConfig) { c.handler = h }
}

// WithServeTLS serves over TLS (wss://) with a copy of cfg, which must hold
// the certificates (Certificates or GetCertificate). Only HTTP/1.1 is
// offered (http.Server.Protocols; WithHTTPServer can change it): a
// WebSocket upgrade needs HTTP/1.1, and gorilla/websocket cannot accept
// WebSocket over HTTP/2.
func WithServeTLS(cfg *tls.Config) ServeOption {
	return func(c *serveConfig) { c.tls = cfg }
}

// WithShutdownGrace sets how long Serve waits for calls in flight once its
// context has ended (default DefaultShutdownGrace) before it closes the
// remaining connections.
func WithShutdownGrace(d time.Duration) ServeOption {
	return func(c *serveConfig) { c.grace = d }
}

// WithHTTPServer lets configure change the http.Server that Serve runs,
// after the defaults are set: its timeouts, MaxHeaderBytes, ErrorLog,
// ConnState. Changing Handler or TLSConfig there works too. Setting
// ReadHeaderTimeout to zero (and ReadTimeout with it) brings back the
// unbounded upgrade request that Serve exists to avoid.
func WithHTTPServer(configure func(*http.Server)) ServeOption {
	return func(c *serveConfig) { c.http = append(c.http, configure) }
}

func (s *Server) serveConfig(opts []ServeOption) serveConfig {
	cfg := serveConfig{grace: DefaultShutdownGrace, readHeaderTimeout: DefaultReadHeaderTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

func (s *Server) newHTTPServer(cfg *serveConfig) *http.Server {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: cfg.readHeaderTimeout,
		ReadTimeout:       DefaultHTTPReadTimeout,
		WriteTimeout:      DefaultHTTPWriteTimeout,
		IdleTimeout:       DefaultIdleTimeout,
		MaxHeaderBytes:    DefaultMaxRequestHeaderBytes,
	}
	if cfg.handler != nil {
		hs.Handler = cfg.handler
	}
	if cfg.tls != nil {
		hs.TLSConfig = cfg.tls.Clone()
		hs.Protocols = new(http.Protocols)
		hs.Protocols.SetHTTP1(true)
	}
	for _, f := range cfg.http {
		f(hs)
	}
	return hs
}

// ListenAndServe listens on the TCP address addr and serves s there until
// ctx ends, as Serve does.
func (s *Server) ListenAndServe(ctx context.Context, addr string, opts ...ServeOption) error {
	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln, opts...)
}

// Serve serves s on ln with safe timeouts (the Default constants: without
// a ReadHeaderTimeout, which http.ListenAndServe does not set, a client
// that sends its upgrade request one byte at a time, or nothing, holds a
// socket and a goroutine for as long as it likes), and drains gracefully
// when ctx ends: the OnDrain functions run (a registered health service
// reports NOT_SERVING), then after the drain delay (WithDrainDelay, default
// none) no new connections, GOAWAY to every client so that it opens new
// calls elsewhere, calls in flight run to completion for up to the
// shutdown grace (WithShutdownGrace), then the remaining connections are
// closed. It closes ln.
//
// Without WithHTTPHandler, WithHTTPServer or WithServeTLS, Serve speaks
// only the WebSocket upgrade: it accepts connections and reads their
// upgrade request itself, without net/http's server (whose per-connection
// goroutine, background read and buffers a WebSocket does not need), and
// answers any other request with an error and a close (426 for a request
// that is not an upgrade, 400 for a malformed one, 431 for headers over
// DefaultMaxRequestHeaderBytes). The admission, authentication, limits and
// refusals are ServeHTTP's, the same on every path. With one of those
// options it runs an http.Server, which serves other endpoints beside s
// (WithHTTPHandler), TLS, and keep-alive HTTP requests.
//
// Serve returns nil after a drain that finished within the grace, an error
// that matches context.DeadlineExceeded if connections had to be closed,
// and the listener's error if serving failed (after draining too). s is
// shut down when Serve returns; do not use it again.
func (s *Server) Serve(ctx context.Context, ln net.Listener, opts ...ServeOption) error {
	defer ln.Close() // also when ServeTLS fails before serving (no certificate)
	cfg := s.serveConfig(opts)
	var hs httpServer
	served := make(chan error, 1)
	if cfg.handler == nil && cfg.tls == nil && len(cfg.http) == 0 {
		ul := newUpgradeListener(s, cfg.readHeaderTimeout, DefaultMaxRequestHeaderBytes)
		hs = ul
		go func() { served <- ul.Serve(ln) }()
	} else {
		h := s.newHTTPServer(&cfg)
		hs = h
		go func() {
			if h.TLSConfig != nil {
				served <- h.ServeTLS(ln, "", "") // certificates from TLSConfig
			} else {
				served <- h.Serve(ln)
			}
		}()
	}
	var serveErr error
	select {
	case <-ctx.Done():
		s.beginDrain()
		if cfg.drainDelay > 0 {
			t := time.NewTimer(cfg.drainDelay)
			select {
			case <-t.C:
			case serveErr = <-served:
				served <- serveErr // for drain
			}
			t.Stop()
		}
	case serveErr = <-served:
		served <- serveErr // for drain
	}
	err := s.drain(hs, served, cfg.grace)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return err
}

// httpServer is what Serve runs on its listener: an http.Server, or the
// upgrade-only listener.
type httpServer interface {
	Shutdown(context.Context) error
	Close() error
}

// drain shuts hs and s down within grace, then closes what remains. served
// delivers hs's Serve result.
func (s *Server) drain(hs httpServer, served chan error, grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	httpDone := make(chan error, 1)
	// http.Server.Shutdown closes the listener and idle HTTP connections
	// and waits for HTTP requests in progress (upgrades included); it does
	// not know the hijacked WebSocket connections, which s.Shutdown drains.
	go func() { httpDone <- hs.Shutdown(ctx) }()
	tetherErr := s.Shutdown(ctx)
	httpErr := <-httpDone
	if tetherErr != nil || httpErr != nil {
		_ = hs.Close()
		_ = s.Close()
	}
	<-served
	if tetherErr != nil || httpErr != nil {
		return fmt.Errorf("tether: calls still running after the shutdown grace of %v were ended: %w", grace, context.DeadlineExceeded)
	}
	return nil
}
