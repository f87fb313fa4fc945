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
//	tether_SIDE_calls_started_total{procedure}         counter: calls that started
//	tether_SIDE_calls_total{procedure,code}            counter: calls that ended, by status code
//	tether_SIDE_call_duration_seconds{procedure}       histogram: call duration (DefaultBuckets, DefaultStreamBuckets)
//	tether_SIDE_messages_received_total{procedure}     counter: messages received
//	tether_SIDE_messages_sent_total{procedure}         counter: messages sent
//
// procedure is the full procedure name ("/example.echo.v1.EchoService/Say")
// and code the status code's name ("ok", "deadline_exceeded", ...). The
// calls in flight are sum(calls_started_total) - sum(calls_total) by
// procedure. The duration of unary calls is in DefaultBuckets (0.5ms to
// 10s), of streaming calls in DefaultStreamBuckets (10ms to 1h): one
// histogram, each series with its kind's buckets (WithBuckets,
// WithStreamBuckets).
//
// # Fitting grpc-go and connect dashboards
//
// WithServiceMethodLabels replaces procedure with service, method and type
// (unary, client_stream, server_stream, bidi_stream) and WithGRPCCodeNames
// spells codes as grpc-go does ("DeadlineExceeded"), so queries written for
// go-grpc-prometheus's grpc_service, grpc_method, grpc_type and grpc_code
// carry over by renaming the metric and the labels. WithFilter measures
// only some procedures; WithExemplar attaches exemplars (for example trace
// ids) to calls_total and the duration histogram. The defaults are those of
// earlier versions plus the calls_started_total counter and the stream
// buckets. contrib/prometheus/dashboards/tether.json is a Grafana dashboard
// of these metrics. A unary
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
	"strings"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/server"
)

// DefaultBuckets are the call-duration histogram's buckets for unary calls,
// in seconds: from 0.5ms, for calls answered from memory on a LAN, to 10s,
// for long calls and deadlines.
var DefaultBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// DefaultStreamBuckets are the call-duration histogram's buckets for
// streaming calls, in seconds: from 10ms to an hour, so that long-lived
// streams do not all land above the top bucket.
var DefaultStreamBuckets = []float64{0.01, 0.1, 1, 10, 30, 60, 300, 600, 1800, 3600}

// Option configures ServerMetrics, ClientMetrics and the Stats collectors.
type Option func(*config)

type config struct {
	constLabels   prom.Labels
	buckets       []float64
	streamBuckets []float64 // nil: DefaultStreamBuckets, or buckets when WithBuckets was given
	bucketsSet    bool
	splitLabels   bool
	grpcCodes     bool
	filter        func(procedure string) bool
	exemplar      func(ctx context.Context) prom.Labels
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
// instead of DefaultBuckets; for streaming calls too unless
// WithStreamBuckets is given. Collectors ignore it.
func WithBuckets(buckets []float64) Option {
	return func(c *config) { c.buckets, c.bucketsSet = append([]float64(nil), buckets...), true }
}

// WithStreamBuckets sets the buckets, in seconds, of the call-duration
// histogram's series of streaming calls (client, server and bidi), instead
// of DefaultStreamBuckets. The series of one histogram may have different
// buckets: each series (procedure, or service, method and type) has its
// kind's.
func WithStreamBuckets(buckets []float64) Option {
	return func(c *config) { c.streamBuckets = append([]float64(nil), buckets...) }
}

// WithServiceMethodLabels replaces the procedure label of the per-call
// metrics with three, as grpc-go's and connect's dashboards expect: service
// ("example.echo.v1.EchoService"), method ("Say") and type ("unary",
// "client_stream", "server_stream" or "bidi_stream", go-grpc-prometheus's
// grpc_type values).
func WithServiceMethodLabels() Option { return func(c *config) { c.splitLabels = true } }

// WithGRPCCodeNames spells the code label as grpc-go does and
// go-grpc-prometheus exports it ("OK", "DeadlineExceeded", ...) instead of
// tether's names ("ok", "deadline_exceeded", ...).
func WithGRPCCodeNames() Option { return func(c *config) { c.grpcCodes = true } }

// WithFilter measures only the calls of the procedures ("/pkg.Service/Method")
// for which include returns true; it is called for every call, so it must be
// fast and safe for concurrent use.
func WithFilter(include func(procedure string) bool) Option {
	return func(c *config) { c.filter = include }
}

// WithExemplar attaches exemplars to the calls_total counter and the
// call-duration histogram: fn returns the exemplar's labels for a call's
// context (for example the trace id of its span), or nil for none.
// Prometheus reads exemplars in the OpenMetrics format only
// (promhttp.HandlerOpts.EnableOpenMetrics). With OpenTelemetry:
//
//	tetherprom.WithExemplar(func(ctx context.Context) prometheus.Labels {
//		if sc := trace.SpanContextFromContext(ctx); sc.IsSampled() {
//			return prometheus.Labels{"trace_id": sc.TraceID().String()}
//		}
//		return nil
//	})
func WithExemplar(fn func(ctx context.Context) prom.Labels) Option {
	return func(c *config) { c.exemplar = fn }
}

func newConfig(opts []Option) *config {
	c := &config{buckets: DefaultBuckets}
	for _, o := range opts {
		o(c)
	}
	if c.streamBuckets == nil {
		c.streamBuckets = DefaultStreamBuckets
		if c.bucketsSet {
			c.streamBuckets = c.buckets
		}
	}
	return c
}

// grpcCodeNames are the codes as grpc-go's codes.Code.String spells them.
var grpcCodeNames = [...]string{
	"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
	"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
	"Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
	"Unauthenticated",
}

// grpcTypes are go-grpc-prometheus's grpc_type values, by tether.StreamType.
var grpcTypes = map[tether.StreamType]string{
	tether.StreamTypeUnary:  "unary",
	tether.StreamTypeClient: "client_stream",
	tether.StreamTypeServer: "server_stream",
	tether.StreamTypeBidi:   "bidi_stream",
}

// callMetrics are the per-call metrics of one side.
type callMetrics struct {
	cfg      *config
	started  *prom.CounterVec
	calls    *prom.CounterVec
	duration *prom.HistogramVec // unary calls
	streams  *prom.HistogramVec // streaming calls: same name, their own buckets
	received *prom.CounterVec
	sent     *prom.CounterVec
}

func newCallMetrics(side string, cfg *config) *callMetrics {
	name := func(n string) string { return "tether_" + side + "_" + n }
	labels := []string{"procedure"}
	if cfg.splitLabels {
		labels = []string{"service", "method", "type"}
	}
	withCode := append(append([]string(nil), labels...), "code")
	histogram := func(buckets []float64) *prom.HistogramVec {
		return prom.NewHistogramVec(prom.HistogramOpts{
			Name:        name("call_duration_seconds"),
			Help:        "Duration of tether calls, in seconds.",
			ConstLabels: cfg.constLabels,
			Buckets:     buckets,
		}, labels)
	}
	return &callMetrics{
		cfg: cfg,
		started: prom.NewCounterVec(prom.CounterOpts{
			Name:        name("calls_started_total"),
			Help:        "Tether calls that started; minus calls_total, the calls in flight.",
			ConstLabels: cfg.constLabels,
		}, labels),
		calls: prom.NewCounterVec(prom.CounterOpts{
			Name:        name("calls_total"),
			Help:        "Tether calls that ended, by procedure and status code.",
			ConstLabels: cfg.constLabels,
		}, withCode),
		duration: histogram(cfg.buckets),
		streams:  histogram(cfg.streamBuckets),
		received: prom.NewCounterVec(prom.CounterOpts{
			Name:        name("messages_received_total"),
			Help:        "Messages received in tether calls.",
			ConstLabels: cfg.constLabels,
		}, labels),
		sent: prom.NewCounterVec(prom.CounterOpts{
			Name:        name("messages_sent_total"),
			Help:        "Messages sent in tether calls.",
			ConstLabels: cfg.constLabels,
		}, labels),
	}
}

func (m *callMetrics) describe(ch chan<- *prom.Desc) {
	m.started.Describe(ch)
	m.calls.Describe(ch)
	m.duration.Describe(ch) // streams has the same descriptor
	m.received.Describe(ch)
	m.sent.Describe(ch)
}

func (m *callMetrics) collect(ch chan<- prom.Metric) {
	m.started.Collect(ch)
	m.calls.Collect(ch)
	m.duration.Collect(ch)
	m.streams.Collect(ch)
	m.received.Collect(ch)
	m.sent.Collect(ch)
}

// measured reports whether calls of spec are measured (WithFilter).
func (m *callMetrics) measured(spec tether.Spec) bool {
	return m.cfg.filter == nil || m.cfg.filter(spec.Procedure)
}

// labelValues are the values of the per-call labels but code.
func (m *callMetrics) labelValues(spec tether.Spec) []string {
	if !m.cfg.splitLabels {
		return []string{spec.Procedure}
	}
	svc, meth, _ := strings.Cut(strings.TrimPrefix(spec.Procedure, "/"), "/")
	return []string{svc, meth, grpcTypes[spec.StreamType]}
}

func (m *callMetrics) codeName(c tether.Code) string {
	if m.cfg.grpcCodes && int(c) < len(grpcCodeNames) {
		return grpcCodeNames[c]
	}
	return c.String()
}

func (m *callMetrics) start(spec tether.Spec) {
	m.started.WithLabelValues(m.labelValues(spec)...).Inc()
}

func (m *callMetrics) observe(ctx context.Context, spec tether.Spec, code tether.Code, d time.Duration, received, sent int64) {
	lv := m.labelValues(spec)
	var ex prom.Labels
	if m.cfg.exemplar != nil {
		ex = m.cfg.exemplar(ctx)
	}
	calls := m.calls.WithLabelValues(append(lv, m.codeName(code))...)
	hv := m.duration
	if spec.StreamType != tether.StreamTypeUnary {
		hv = m.streams
	}
	h := hv.WithLabelValues(lv...)
	if len(ex) > 0 {
		calls.(prom.ExemplarAdder).AddWithExemplar(1, ex)
		h.(prom.ExemplarObserver).ObserveWithExemplar(d.Seconds(), ex)
	} else {
		calls.Inc()
		h.Observe(d.Seconds())
	}
	if received > 0 {
		m.received.WithLabelValues(lv...).Add(float64(received))
	}
	if sent > 0 {
		m.sent.WithLabelValues(lv...).Add(float64(sent))
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
		var spec tether.Spec
		if ci, ok := server.CallInfoFromContext(ctx); ok {
			spec = ci.Spec()
		}
		if !s.m.measured(spec) {
			return next(ctx, req)
		}
		s.m.start(spec)
		start := time.Now()
		res, err := next(ctx, req)
		d := time.Since(start)
		code := tether.CodeOf(server.HandlerError(ctx, err))
		var sent int64
		if code == tether.CodeOK {
			sent = 1
		}
		s.m.observe(ctx, spec, code, d, 1, sent)
		return res, err
	}
}

// WrapStream implements server.Interceptor.
func (s *ServerMetrics) WrapStream(next server.StreamFunc) server.StreamFunc {
	return func(ctx context.Context, st server.Stream) error {
		spec := st.Spec()
		if !s.m.measured(spec) {
			return next(ctx, st)
		}
		s.m.start(spec)
		start := time.Now()
		observed, counts := server.ObserveStream(st)
		err := next(ctx, observed)
		sent, received := counts()
		s.m.observe(ctx, spec, tether.CodeOf(server.HandlerError(ctx, err)), time.Since(start), received, sent)
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
		if !c.m.measured(call.Spec) {
			return next(ctx, call, req, res)
		}
		c.m.start(call.Spec)
		start := time.Now()
		err := next(ctx, call, req, res)
		var received int64
		if err == nil {
			received = 1
		}
		// Only requests written to a connection count: none for a call
		// that never connected, one per attempt that sent it.
		c.m.observe(ctx, call.Spec, tether.CodeOf(err), time.Since(start), received, call.MessagesSent())
		return err
	}
}

// WrapStream implements client.Interceptor.
func (c *ClientMetrics) WrapStream(next client.StreamFunc) client.StreamFunc {
	return func(ctx context.Context, call *client.Call) (client.Stream, error) {
		spec := call.Spec
		if !c.m.measured(spec) {
			return next(ctx, call)
		}
		c.m.start(spec)
		start := time.Now()
		end := func(err error, sent, received int64) {
			c.m.observe(ctx, spec, tether.CodeOf(err), time.Since(start), received, sent)
		}
		st, err := next(ctx, call)
		if err != nil {
			end(err, 0, 0)
			return nil, err
		}
		return client.ObserveStream(st, end), nil
	}
}
