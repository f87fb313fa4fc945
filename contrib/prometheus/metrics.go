// Package prometheus exports tether metrics to Prometheus
// (github.com/prometheus/client_golang).
//
// It lives in its own module, github.com/tetherrpc/tether/contrib/prometheus,
// so that tether itself does not depend on the Prometheus client. Its package
// name clashes with client_golang's; import it under another name:
//
//	import tetherprom "github.com/tetherrpc/tether/contrib/prometheus"
//
// # Per-call metrics
//
// ServerMetrics and ClientMetrics are interceptors and Prometheus collectors
// at once: install one with server.WithInterceptors or
// client.WithInterceptors and register the same value with a
// prometheus.Registerer. They export, with SIDE "server" or "client":
//
//	tether_SIDE_calls_total{procedure,code}            counter: calls that ended, by status code
//	tether_SIDE_call_duration_seconds{procedure}       histogram: call duration (DefaultBuckets)
//	tether_SIDE_messages_received_total{procedure}     counter: messages received
//	tether_SIDE_messages_sent_total{procedure}         counter: messages sent
//
// procedure is the full procedure name ("/example.echo.v1.EchoService/Say")
// and code the status code's name ("ok", "deadline_exceeded", ...). A unary
// call counts one message each way: the response only when the call
// succeeded, and on the client the request only when it was written to a
// connection (once per attempt that sent it, client.Call.MessagesSent), so a
// call that never connected counts none. A client's streaming call ends when Receive returns io.EOF or an
// error, or when Close is called first (code canceled, or the error Send or
// CloseSend returned). A client's unary call is measured once, retries
// included.
//
// The server's interceptors wrap handlers, so calls refused before a handler
// runs (an unknown procedure, too many concurrent streams) are not counted by
// ServerMetrics; the client's metrics show them. When a handler returns its
// context's error, the code comes from the context's cause, so a call reset by
// its client at the client's deadline counts as deadline_exceeded.
//
// # Connection metrics
//
// NewServerCollector and NewClientCollector read (*server.Server).Stats and
// (*client.Client).Stats at scrape time; see their documentation for the
// metrics.
//
// # Several clients or servers in one process
//
// Metric names are fixed; give each instance's collectors distinguishing
// constant labels with WithConstLabels, for example
// WithConstLabels(prometheus.Labels{"client": "billing"}), and register them
// with the same registry.
package prometheus

import (
	"context"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/server"
)

// DefaultBuckets are the call-duration histogram's buckets, in seconds: from
// 0.5ms, for calls answered from memory on a LAN, to 10s, for long calls and
// deadlines.
var DefaultBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Option configures ServerMetrics, ClientMetrics and the Stats collectors.
type Option func(*config)

type config struct {
	constLabels prom.Labels
	buckets     []float64
}

// WithConstLabels adds constant labels to every metric, to tell apart the
// metrics of several servers or clients registered with one registry.
func WithConstLabels(labels prom.Labels) Option {
	return func(c *config) {
		if c.constLabels == nil {
			c.constLabels = prom.Labels{}
		}
		for k, v := range labels {
			c.constLabels[k] = v
		}
	}
}

// WithBuckets sets the call-duration histogram's buckets, in seconds,
// instead of DefaultBuckets. Collectors ignore it.
func WithBuckets(buckets []float64) Option {
	return func(c *config) { c.buckets = append([]float64(nil), buckets...) }
}

func newConfig(opts []Option) *config {
	c := &config{buckets: DefaultBuckets}
	for _, o := range opts {
		o(c)
	}
	return c
}

// callMetrics are the per-call metrics of one side.
type callMetrics struct {
	calls    *prom.CounterVec
	duration *prom.HistogramVec
	received *prom.CounterVec
	sent     *prom.CounterVec
}

func newCallMetrics(side string, cfg *config) *callMetrics {
	name := func(n string) string { return "tether_" + side + "_" + n }
	return &callMetrics{
		calls: prom.NewCounterVec(prom.CounterOpts{
			Name:        name("calls_total"),
			Help:        "Tether calls that ended, by procedure and status code.",
			ConstLabels: cfg.constLabels,
		}, []string{"procedure", "code"}),
		duration: prom.NewHistogramVec(prom.HistogramOpts{
			Name:        name("call_duration_seconds"),
			Help:        "Duration of tether calls, in seconds.",
			ConstLabels: cfg.constLabels,
			Buckets:     cfg.buckets,
		}, []string{"procedure"}),
		received: prom.NewCounterVec(prom.CounterOpts{
			Name:        name("messages_received_total"),
			Help:        "Messages received in tether calls.",
			ConstLabels: cfg.constLabels,
		}, []string{"procedure"}),
		sent: prom.NewCounterVec(prom.CounterOpts{
			Name:        name("messages_sent_total"),
			Help:        "Messages sent in tether calls.",
			ConstLabels: cfg.constLabels,
		}, []string{"procedure"}),
	}
}

func (m *callMetrics) describe(ch chan<- *prom.Desc) {
	m.calls.Describe(ch)
	m.duration.Describe(ch)
	m.received.Describe(ch)
	m.sent.Describe(ch)
}

func (m *callMetrics) collect(ch chan<- prom.Metric) {
	m.calls.Collect(ch)
	m.duration.Collect(ch)
	m.received.Collect(ch)
	m.sent.Collect(ch)
}

func (m *callMetrics) observe(procedure string, code tether.Code, d time.Duration, received, sent int64) {
	m.calls.WithLabelValues(procedure, code.String()).Inc()
	m.duration.WithLabelValues(procedure).Observe(d.Seconds())
	if received > 0 {
		m.received.WithLabelValues(procedure).Add(float64(received))
	}
	if sent > 0 {
		m.sent.WithLabelValues(procedure).Add(float64(sent))
	}
}

// ServerMetrics is a server.Interceptor that measures the calls the server's
// handlers serve, and the prometheus.Collector that exports the measurements.
// Install it with server.WithInterceptors and register it with a registry.
// It is safe for concurrent use.
type ServerMetrics struct{ m *callMetrics }

var (
	_ server.Interceptor = (*ServerMetrics)(nil)
	_ prom.Collector     = (*ServerMetrics)(nil)
)

// NewServerMetrics returns the per-call metrics of a server (see the package
// documentation). Install it first in server.WithInterceptors so that the
// durations cover the other interceptors.
func NewServerMetrics(opts ...Option) *ServerMetrics {
	return &ServerMetrics{m: newCallMetrics("server", newConfig(opts))}
}

// Describe implements prometheus.Collector.
func (s *ServerMetrics) Describe(ch chan<- *prom.Desc) { s.m.describe(ch) }

// Collect implements prometheus.Collector.
func (s *ServerMetrics) Collect(ch chan<- prom.Metric) { s.m.collect(ch) }

// WrapUnary implements server.Interceptor.
func (s *ServerMetrics) WrapUnary(next server.UnaryFunc) server.UnaryFunc {
	return func(ctx context.Context, req proto.Message) (proto.Message, error) {
		start := time.Now()
		res, err := next(ctx, req)
		d := time.Since(start)
		var procedure string
		if ci, ok := server.CallInfoFromContext(ctx); ok {
			procedure = ci.Spec().Procedure
		}
		code := tether.CodeOf(server.HandlerError(ctx, err))
		var sent int64
		if code == tether.CodeOK {
			sent = 1
		}
		s.m.observe(procedure, code, d, 1, sent)
		return res, err
	}
}

// WrapStream implements server.Interceptor.
func (s *ServerMetrics) WrapStream(next server.StreamFunc) server.StreamFunc {
	return func(ctx context.Context, st server.Stream) error {
		start := time.Now()
		observed, counts := server.ObserveStream(st)
		err := next(ctx, observed)
		sent, received := counts()
		s.m.observe(st.Spec().Procedure, tether.CodeOf(server.HandlerError(ctx, err)), time.Since(start), received, sent)
		return err
	}
}

// ClientMetrics is a client.Interceptor that measures a client's calls, and
// the prometheus.Collector that exports the measurements. Install it with
// client.WithInterceptors and register it with a registry. It is safe for
// concurrent use.
type ClientMetrics struct{ m *callMetrics }

var (
	_ client.Interceptor = (*ClientMetrics)(nil)
	_ prom.Collector     = (*ClientMetrics)(nil)
)

// NewClientMetrics returns the per-call metrics of a client (see the package
// documentation). Give each client's metrics their own constant labels
// (WithConstLabels) when several share a registry.
func NewClientMetrics(opts ...Option) *ClientMetrics {
	return &ClientMetrics{m: newCallMetrics("client", newConfig(opts))}
}

// Describe implements prometheus.Collector.
func (c *ClientMetrics) Describe(ch chan<- *prom.Desc) { c.m.describe(ch) }

// Collect implements prometheus.Collector.
func (c *ClientMetrics) Collect(ch chan<- prom.Metric) { c.m.collect(ch) }

// WrapUnary implements client.Interceptor.
func (c *ClientMetrics) WrapUnary(next client.UnaryFunc) client.UnaryFunc {
	return func(ctx context.Context, call *client.Call, req, res proto.Message) error {
		start := time.Now()
		err := next(ctx, call, req, res)
		var received int64
		if err == nil {
			received = 1
		}
		// Only requests written to a connection count: none for a call
		// that never connected, one per attempt that sent it.
		c.m.observe(call.Spec.Procedure, tether.CodeOf(err), time.Since(start), received, call.MessagesSent())
		return err
	}
}

// WrapStream implements client.Interceptor.
func (c *ClientMetrics) WrapStream(next client.StreamFunc) client.StreamFunc {
	return func(ctx context.Context, call *client.Call) (client.Stream, error) {
		start := time.Now()
		procedure := call.Spec.Procedure
		end := func(err error, sent, received int64) {
			c.m.observe(procedure, tether.CodeOf(err), time.Since(start), received, sent)
		}
		st, err := next(ctx, call)
		if err != nil {
			end(err, 0, 0)
			return nil, err
		}
		return client.ObserveStream(st, end), nil
	}
}
