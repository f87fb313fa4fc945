// Package otel traces tether calls with OpenTelemetry
// (go.opentelemetry.io/otel) and propagates trace context through tether
// metadata.
//
// It lives in its own module, github.com/tetherrpc/tether/contrib/otel, so
// that tether itself does not depend on OpenTelemetry. Its package name
// clashes with OpenTelemetry's; import it under another name:
//
//	import tetherotel "github.com/tetherrpc/tether/contrib/otel"
//
//	srv := server.New(server.WithInterceptors(tetherotel.NewServer()))
//	cli, err := client.New(url, client.WithInterceptors(tetherotel.NewClient()))
//
// # Propagation
//
// The client interceptor injects the context of its span, and the baggage of
// the call's context, into the call's request metadata; the server
// interceptor extracts them and starts its span as a child of the client's.
// The default propagator is W3C Trace Context with W3C Baggage (metadata keys
// "traceparent", "tracestate" and "baggage"); WithPropagator changes it, for
// example to otel.GetTextMapPropagator(). MetadataCarrier adapts
// tether.Metadata for any propagator.
//
// # Spans
//
// Each call gets one span: SpanKindClient on the client, SpanKindServer on
// the server, named after the procedure without its leading slash
// ("example.echo.v1.EchoService/Say"), with these attributes, named as in
// OpenTelemetry's RPC semantic conventions (v1.26 to v1.37) where they have
// an equivalent:
//
//	rpc.system               "tether"
//	rpc.service              the full service name, "example.echo.v1.EchoService"
//	rpc.method               the method name, "Say"
//	rpc.tether.status_code   the call's status code as a number (0 for ok, 4 for
//	                         deadline_exceeded: gRPC's numbers), set when the
//	                         call ends; the counterpart of rpc.grpc.status_code
//	network.peer.address     server only: the client's address (host part)
//	network.peer.port        server only: the client's port
//	server.address           client only: the server's host, from the client's URL
//	server.port              client only: the server's port, from the URL (80 for
//	                         ws://, 443 for wss:// when it has none)
//
// A client span whose call ends with any code but ok gets span status Error,
// with the error's text as the description. A server span gets status Error
// only for the codes that say the server failed, as the conventions (and
// otelconnect) do: unknown, deadline_exceeded, unimplemented, internal,
// unavailable and data_loss; for the others (canceled, invalid_argument,
// not_found, permission_denied, resource_exhausted, ...) the caller erred,
// and the status stays Unset (rpc.tether.status_code still has the code).
//
// Every message of a streaming call adds an event rpc.message to its span,
// with rpc.message.type ("SENT" or "RECEIVED"), rpc.message.id (1, 2, ...
// in each direction) and rpc.message.uncompressed_size (the encoded
// message's bytes). Unary calls have no message events.
//
// A client's unary span covers the whole call, retries included. A client's
// streaming span ends when Receive returns io.EOF or an error, or when Close
// is called first (then with code canceled, or the error Send or CloseSend
// returned): always Close a stream, or read it to its end, or its span is
// never ended. A server's span ends when the handler returns, just before
// the server sends the call's status.
//
// The server interceptor wraps handlers: calls the server refuses before a
// handler runs (an unknown procedure, too many concurrent streams) get no
// server span. When a handler returns its context's error, the code comes
// from the context's cause, so a call reset by its client at the client's
// deadline is deadline_exceeded.
package otel

import (
	"context"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/server"
)

// ScopeName is the instrumentation scope (tracer name) of the spans.
const ScopeName = "github.com/tetherrpc/tether/contrib/otel"

// Attribute keys of the spans.
const (
	// RPCSystemKey is the key of the attribute rpc.system, always "tether".
	RPCSystemKey = attribute.Key("rpc.system")
	// RPCServiceKey is the key of the attribute rpc.service.
	RPCServiceKey = attribute.Key("rpc.service")
	// RPCMethodKey is the key of the attribute rpc.method.
	RPCMethodKey = attribute.Key("rpc.method")
	// StatusCodeKey is the key of the attribute rpc.tether.status_code: the
	// call's tether.Code as a number.
	StatusCodeKey = attribute.Key("rpc.tether.status_code")
	// PeerAddressKey is the key of the server spans' attribute
	// network.peer.address.
	PeerAddressKey = attribute.Key("network.peer.address")
	// PeerPortKey is the key of the server spans' attribute
	// network.peer.port.
	PeerPortKey = attribute.Key("network.peer.port")
	// ServerAddressKey is the key of the client spans' attribute
	// server.address.
	ServerAddressKey = attribute.Key("server.address")
	// ServerPortKey is the key of the client spans' attribute server.port.
	ServerPortKey = attribute.Key("server.port")
	// MessageTypeKey, MessageIDKey and MessageSizeKey are the keys of the
	// attributes of rpc.message events.
	MessageTypeKey = attribute.Key("rpc.message.type")
	// MessageIDKey is the key of the attribute rpc.message.id.
	MessageIDKey = attribute.Key("rpc.message.id")
	// MessageSizeKey is the key of the attribute
	// rpc.message.uncompressed_size.
	MessageSizeKey = attribute.Key("rpc.message.uncompressed_size")
)

// MessageEvent is the name of the events of stream messages.
const MessageEvent = "rpc.message"

// RPCSystem is the value of the attribute rpc.system.
const RPCSystem = "tether"

// MetadataCarrier adapts tether.Metadata to propagation.TextMapCarrier (and
// propagation.ValuesGetter). Keys are case-insensitive, as in
// tether.Metadata. Set needs a non-nil map.
type MetadataCarrier tether.Metadata

var (
	_ propagation.TextMapCarrier = MetadataCarrier(nil)
	_ propagation.ValuesGetter   = MetadataCarrier(nil)
)

// Get returns the first value of key, or "".
func (c MetadataCarrier) Get(key string) string { return tether.Metadata(c).Get(key) }

// Values returns every value of key.
func (c MetadataCarrier) Values(key string) []string { return tether.Metadata(c).Values(key) }

// Set replaces the values of key with value.
func (c MetadataCarrier) Set(key, value string) { tether.Metadata(c).Set(key, value) }

// Keys returns the keys, sorted.
func (c MetadataCarrier) Keys() []string { return tether.Metadata(c).Keys() }

// Option configures NewServer and NewClient.
type Option func(*config)

type config struct {
	tp     trace.TracerProvider
	prop   propagation.TextMapPropagator
	public bool
}

// WithTracerProvider sets the tracer provider (default: the global one,
// otel.GetTracerProvider(), which follows later calls of
// otel.SetTracerProvider).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tp = tp }
}

// WithPropagator sets the propagator (default: W3C Trace Context and W3C
// Baggage). Pass otel.GetTextMapPropagator() to use the global one.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(c *config) { c.prop = p }
}

// WithPublicEndpoint makes the server start a new trace for every call, with
// a link to the client's span instead of a parent: for servers whose clients
// are not trusted to choose trace ids. Baggage is still extracted. The
// client ignores it. Use it on browser-facing and other public servers
// (docs/SECURITY.md).
func WithPublicEndpoint() Option { return func(c *config) { c.public = true } }

func newConfig(opts []Option) *config {
	c := &config{}
	for _, o := range opts {
		o(c)
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.prop == nil {
		c.prop = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	}
	return c
}

// spanName returns a call's span name and its rpc.* attributes.
func spanName(procedure string) (string, []attribute.KeyValue) {
	name := strings.TrimPrefix(procedure, "/")
	attrs := []attribute.KeyValue{RPCSystemKey.String(RPCSystem)}
	if service, method, ok := strings.Cut(name, "/"); ok {
		attrs = append(attrs, RPCServiceKey.String(service), RPCMethodKey.String(method))
	}
	return name, attrs
}

// serverErrorCodes are the codes for which a server span's status is
// Error: the server failed (OpenTelemetry's RPC conventions for gRPC).
var serverErrorCodes = map[tether.Code]bool{
	tether.CodeUnknown:          true,
	tether.CodeDeadlineExceeded: true,
	tether.CodeUnimplemented:    true,
	tether.CodeInternal:         true,
	tether.CodeUnavailable:      true,
	tether.CodeDataLoss:         true,
}

// endSpan records a call's result and ends its span; on the server, only
// serverErrorCodes set status Error.
func endSpan(span trace.Span, code tether.Code, err error, server bool) {
	span.SetAttributes(StatusCodeKey.Int64(int64(code)))
	if code != tether.CodeOK && (!server || serverErrorCodes[code]) {
		desc := code.String()
		if err != nil {
			desc = err.Error()
		}
		span.SetStatus(codes.Error, desc)
	}
	span.End()
}

// NewServer returns a server interceptor that extracts the trace context
// from each call's request metadata and runs the handler in a server span.
// Install it first in server.WithInterceptors so that the other
// interceptors run inside the span.
func NewServer(opts ...Option) server.Interceptor {
	cfg := newConfig(opts)
	return &serverInterceptor{cfg: cfg, tracer: cfg.tp.Tracer(ScopeName)}
}

type serverInterceptor struct {
	cfg    *config
	tracer trace.Tracer
}

func (s *serverInterceptor) start(ctx context.Context, ci server.CallInfo) (context.Context, trace.Span) {
	name, attrs := spanName(ci.Spec().Procedure)
	if host, port, err := net.SplitHostPort(ci.Peer().Addr); err == nil {
		attrs = append(attrs, PeerAddressKey.String(host))
		if p, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, PeerPortKey.Int(p))
		}
	} else if ci.Peer().Addr != "" {
		attrs = append(attrs, PeerAddressKey.String(ci.Peer().Addr))
	}
	sopts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...)}
	ctx = s.cfg.prop.Extract(ctx, MetadataCarrier(ci.RequestHeader()))
	if s.cfg.public {
		if remote := trace.SpanContextFromContext(ctx); remote.IsValid() {
			sopts = append(sopts, trace.WithLinks(trace.Link{SpanContext: remote}))
		}
		sopts = append(sopts, trace.WithNewRoot())
	}
	return s.tracer.Start(ctx, name, sopts...)
}

func (s *serverInterceptor) WrapUnary(next server.UnaryFunc) server.UnaryFunc {
	return func(ctx context.Context, req proto.Message) (proto.Message, error) {
		ci, ok := server.CallInfoFromContext(ctx)
		if !ok {
			return next(ctx, req)
		}
		ctx, span := s.start(ctx, ci)
		res, err := next(ctx, req)
		cause := server.HandlerError(ctx, err)
		endSpan(span, tether.CodeOf(cause), cause, true)
		return res, err
	}
}

func (s *serverInterceptor) WrapStream(next server.StreamFunc) server.StreamFunc {
	return func(ctx context.Context, st server.Stream) error {
		ctx, span := s.start(ctx, st)
		err := next(ctx, &serverStream{Stream: st, ev: messageEvents{span: span}})
		cause := server.HandlerError(ctx, err)
		endSpan(span, tether.CodeOf(cause), cause, true)
		return err
	}
}

// NewClient returns a client interceptor that runs each call in a client
// span and injects the span's context, and the baggage of the call's
// context, into the call's request metadata.
func NewClient(opts ...Option) client.Interceptor {
	cfg := newConfig(opts)
	return &clientInterceptor{cfg: cfg, tracer: cfg.tp.Tracer(ScopeName)}
}

type clientInterceptor struct {
	cfg    *config
	tracer trace.Tracer
}

func (c *clientInterceptor) start(ctx context.Context, call *client.Call) (context.Context, trace.Span) {
	name, attrs := spanName(call.Spec.Procedure)
	attrs = append(attrs, serverAttrs(call.Target)...)
	ctx, span := c.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	if call.Header == nil {
		call.Header = tether.Metadata{}
	}
	c.cfg.prop.Inject(ctx, MetadataCarrier(call.Header))
	return ctx, span
}

func (c *clientInterceptor) WrapUnary(next client.UnaryFunc) client.UnaryFunc {
	return func(ctx context.Context, call *client.Call, req, res proto.Message) error {
		ctx, span := c.start(ctx, call)
		err := next(ctx, call, req, res)
		endSpan(span, tether.CodeOf(err), err, false)
		return err
	}
}

func (c *clientInterceptor) WrapStream(next client.StreamFunc) client.StreamFunc {
	return func(ctx context.Context, call *client.Call) (client.Stream, error) {
		ctx, span := c.start(ctx, call)
		st, err := next(ctx, call)
		if err != nil {
			endSpan(span, tether.CodeOf(err), err, false)
			return nil, err
		}
		observed := client.ObserveStream(st, func(err error, _, _ int64) {
			endSpan(span, tether.CodeOf(err), err, false)
		})
		return &clientStream{Stream: observed, ev: messageEvents{span: span}}, nil
	}
}

// serverAttrs are server.address and server.port of a client's URL.
func serverAttrs(target string) []attribute.KeyValue {
	u, err := url.Parse(target)
	if err != nil || u.Hostname() == "" {
		return nil
	}
	attrs := []attribute.KeyValue{ServerAddressKey.String(u.Hostname())}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		switch u.Scheme {
		case "ws", "http":
			port = 80
		case "wss", "https":
			port = 443
		default:
			return attrs
		}
	}
	return append(attrs, ServerPortKey.Int(port))
}

// messageEvents adds an rpc.message event to span for each message.
type messageEvents struct {
	span           trace.Span
	sent, received atomic.Int64
}

func (e *messageEvents) add(kind string, n *atomic.Int64, msg proto.Message) {
	e.span.AddEvent(MessageEvent, trace.WithAttributes(
		MessageTypeKey.String(kind),
		MessageIDKey.Int64(n.Add(1)),
		MessageSizeKey.Int(proto.Size(msg)),
	))
}

func (e *messageEvents) onSend(msg proto.Message, err error) {
	if err == nil {
		e.add("SENT", &e.sent, msg)
	}
}

func (e *messageEvents) onReceive(msg proto.Message, err error) {
	if err == nil {
		e.add("RECEIVED", &e.received, msg)
	}
}

// serverStream adds message events to a server call's span.
type serverStream struct {
	server.Stream
	ev messageEvents
}

func (s *serverStream) Send(msg proto.Message) error {
	err := s.Stream.Send(msg)
	s.ev.onSend(msg, err)
	return err
}

func (s *serverStream) Receive(msg proto.Message) error {
	err := s.Stream.Receive(msg)
	s.ev.onReceive(msg, err)
	return err
}

// clientStream adds message events to a client call's span.
type clientStream struct {
	client.Stream
	ev messageEvents
}

func (s *clientStream) Send(msg proto.Message) error {
	err := s.Stream.Send(msg)
	s.ev.onSend(msg, err)
	return err
}

func (s *clientStream) Receive(msg proto.Message) error {
	err := s.Stream.Receive(msg)
	s.ev.onReceive(msg, err)
	return err
}
