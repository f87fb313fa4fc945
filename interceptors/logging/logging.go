// Package logging provides server and client interceptors that write one
// structured log record (log/slog) per tether call, when the call ends.
//
// Install them like any interceptor:
//
//	srv := server.New(server.WithInterceptors(logging.NewServer(logger)))
//	cli, err := client.New(url, client.WithInterceptors(logging.NewClient(logger)))
//
// # Records
//
// Every record has the message "tether server call" or "tether client
// call" and these attributes, in this order:
//
//	procedure          the full procedure name, "/package.Service/Method"
//	stream_type        "unary", "client_stream", "server_stream" or "bidi_stream"
//	code               the call's status code, "ok" or for example "deadline_exceeded"
//	duration           how long the call took (a time.Duration: nanoseconds in JSON)
//	duration_ms        the same in milliseconds, a float, for JSON consumers
//	peer               server only: the client's network address
//	principal          server only, authenticated connections: the Authenticator's
//	                   Identity.Principal (slog.Any; implement slog.LogValuer
//	                   to choose what of it is logged)
//	trace_id           calls with a W3C traceparent in their request metadata
//	                   (contrib/otel puts it there), or WithTraceID's: the trace id
//	messages_received  streams only: messages this side received
//	messages_sent      streams only: messages this side sent
//	error              calls that failed: the error's text (see OmitErrorMessage)
//	metadata_keys      with WithMetadataKeys: the request metadata keys, sorted
//	metadata           with WithMetadataValues: a group of the allowed keys' values
//
// The level comes from the call's code: by default DefaultServerLevel on the
// server (Info for ok, Warn otherwise) and DefaultClientLevel on the client
// (Debug for ok, Info otherwise). WithLevels and WithCodeLevel change it.
// Nothing is formatted when the logger does not log at that level.
//
// # What is never logged
//
// The interceptors never log request or response messages, and never log
// metadata values unless WithMetadataValues names their keys. Even then, the
// values of sensitive keys (any key containing "authorization", "cookie",
// "token", "secret", "password", "passwd", "credential", "api-key",
// "apikey", "api_key" or "session", or a pattern added with
// WithRedactedKeys) are replaced by [Redacted].
//
// # What the server interceptor does not see
//
// A server interceptor wraps handlers, so calls the server refuses before a
// handler runs (an unknown procedure, too many concurrent streams) are not
// logged by it; the client sees them as unimplemented or resource_exhausted.
//
// On the server, when a handler returns its context's error (context.Canceled
// or context.DeadlineExceeded) the code is taken from the context's cause, so
// a call the client reset for its deadline is logged as deadline_exceeded,
// not canceled.
package logging

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/server"
)

// Record messages.
const (
	// ServerMessage is the message of the server interceptor's records.
	ServerMessage = "tether server call"
	// ClientMessage is the message of the client interceptor's records.
	ClientMessage = "tether client call"
)

// Redacted replaces the value of a sensitive metadata key.
const Redacted = "[REDACTED]"

// sensitive are the substrings that make a metadata key's values secret.
var sensitive = []string{
	"authorization", "cookie", "token", "secret", "password", "passwd",
	"credential", "api-key", "apikey", "api_key", "session",
}

// DefaultServerLevel is the server interceptor's default level: Info for a
// call that succeeded, Warn for one that failed.
func DefaultServerLevel(c tether.Code) slog.Level {
	if c == tether.CodeOK {
		return slog.LevelInfo
	}
	return slog.LevelWarn
}

// DefaultClientLevel is the client interceptor's default level: Debug for a
// call that succeeded, Info for one that failed (the server, or the
// caller's own error handling, usually reports failures more loudly).
func DefaultClientLevel(c tether.Code) slog.Level {
	if c == tether.CodeOK {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// Option configures NewServer and NewClient.
type Option func(*config)

type config struct {
	level      func(tether.Code) slog.Level
	codeLevels map[tether.Code]slog.Level
	keys       bool
	values     map[string]bool // lower-case keys whose values may be logged
	redact     []string        // lower-case substrings of sensitive keys
	omitErr    bool
	traceID    func(ctx context.Context) string
	now        func() time.Time // tests
}

// WithTraceID sets how a record finds its call's trace id, instead of the
// traceparent request metadata: for example, with OpenTelemetry,
//
//	logging.WithTraceID(func(ctx context.Context) string {
//		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
//			return sc.TraceID().String()
//		}
//		return ""
//	})
//
// which on a server behind contrib/otel's WithPublicEndpoint gives the
// server span's own trace rather than the caller's. An empty result leaves
// trace_id out.
func WithTraceID(fn func(ctx context.Context) string) Option {
	return func(c *config) { c.traceID = fn }
}

// traceparentID returns the trace id of a W3C traceparent
// ("00-<32 hex trace id>-<16 hex span id>-<2 hex flags>"), or "".
func traceparentID(tp string) string {
	parts := strings.Split(strings.TrimSpace(tp), "-")
	if len(parts) < 4 || len(parts[0]) != 2 || len(parts[1]) != 32 || parts[1] == strings.Repeat("0", 32) {
		return ""
	}
	for _, r := range parts[1] {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return ""
		}
	}
	return parts[1]
}

// WithLevels sets the function that maps a call's code to the record's
// level, in place of DefaultServerLevel or DefaultClientLevel. Codes given
// to WithCodeLevel still take precedence.
func WithLevels(level func(tether.Code) slog.Level) Option {
	return func(c *config) { c.level = level }
}

// WithCodeLevel logs calls that end with code at level, whatever the level
// function says. For example WithCodeLevel(tether.CodeNotFound,
// slog.LevelInfo) keeps lookups of missing entities out of the warnings, and
// WithCodeLevel(tether.CodeInternal, slog.LevelError) raises bugs.
func WithCodeLevel(code tether.Code, level slog.Level) Option {
	return func(c *config) {
		if c.codeLevels == nil {
			c.codeLevels = make(map[tether.Code]slog.Level)
		}
		c.codeLevels[code] = level
	}
}

// WithMetadataKeys adds the attribute metadata_keys: the keys (never the
// values) of the request metadata, sorted. On the server that is what the
// client sent; on the client it is the call's header as the interceptor
// sees it when the call ends (interceptors after this one may have added to
// it).
func WithMetadataKeys() Option { return func(c *config) { c.keys = true } }

// WithMetadataValues adds the group metadata with the request metadata
// values of the listed keys (case-insensitive), for keys that are present.
// Several values are joined with ", ". Values of sensitive keys are always
// logged as [Redacted], even when listed here. Only list keys whose values
// are safe to keep in logs, such as a request id.
func WithMetadataValues(keys ...string) Option {
	return func(c *config) {
		if c.values == nil {
			c.values = make(map[string]bool)
		}
		for _, k := range keys {
			c.values[strings.ToLower(k)] = true
		}
	}
}

// WithRedactedKeys adds substrings (case-insensitive) that make a metadata
// key sensitive, to the built-in ones (authorization, cookie, token, secret,
// password, passwd, credential, api-key, apikey, api_key, session). It
// matters only with WithMetadataValues.
func WithRedactedKeys(substrings ...string) Option {
	return func(c *config) {
		for _, s := range substrings {
			if s != "" {
				c.redact = append(c.redact, strings.ToLower(s))
			}
		}
	}
}

// OmitErrorMessage leaves the attribute error out of the records of failed
// calls, for services whose error messages may quote user input. The code is
// still logged.
func OmitErrorMessage() Option { return func(c *config) { c.omitErr = true } }

func newConfig(defaultLevel func(tether.Code) slog.Level, opts []Option) *config {
	c := &config{level: defaultLevel, redact: slices.Clone(sensitive), now: time.Now}
	for _, o := range opts {
		o(c)
	}
	if c.level == nil {
		c.level = defaultLevel
	}
	return c
}

func (c *config) levelOf(code tether.Code) slog.Level {
	if l, ok := c.codeLevels[code]; ok {
		return l
	}
	return c.level(code)
}

func (c *config) isSensitive(key string) bool {
	key = strings.ToLower(key)
	for _, s := range c.redact {
		if strings.Contains(key, s) {
			return true
		}
	}
	return false
}

// callEnd is what one finished call contributes to its record.
type callEnd struct {
	spec      tether.Spec
	err       error
	code      tether.Code
	duration  time.Duration
	peer      string // server only
	principal any    // server only
	stream    bool
	received  int64
	sent      int64
	md        tether.Metadata
}

// callLogger writes the records of one interceptor.
type callLogger struct {
	l      *slog.Logger
	cfg    *config
	msg    string
	server bool
}

func (lg *callLogger) log(ctx context.Context, e callEnd) {
	level := lg.cfg.levelOf(e.code)
	if !lg.l.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs,
		slog.String("procedure", e.spec.Procedure),
		slog.String("stream_type", e.spec.StreamType.String()),
		slog.String("code", e.code.String()),
		slog.Duration("duration", e.duration),
		slog.Float64("duration_ms", float64(e.duration)/float64(time.Millisecond)),
	)
	if lg.server {
		attrs = append(attrs, slog.String("peer", e.peer))
		if e.principal != nil {
			attrs = append(attrs, slog.Any("principal", e.principal))
		}
	}
	var traceID string
	if lg.cfg.traceID != nil {
		traceID = lg.cfg.traceID(ctx)
	} else {
		traceID = traceparentID(e.md.Get("traceparent"))
	}
	if traceID != "" {
		attrs = append(attrs, slog.String("trace_id", traceID))
	}
	if e.stream {
		attrs = append(attrs,
			slog.Int64("messages_received", e.received),
			slog.Int64("messages_sent", e.sent),
		)
	}
	if e.code != tether.CodeOK && e.err != nil && !lg.cfg.omitErr {
		attrs = append(attrs, slog.String("error", e.err.Error()))
	}
	if lg.cfg.keys {
		attrs = append(attrs, slog.Any("metadata_keys", e.md.Keys()))
	}
	if len(lg.cfg.values) > 0 {
		var group []any
		for _, k := range e.md.Keys() {
			if !lg.cfg.values[k] {
				continue
			}
			v := strings.Join(e.md[k], ", ")
			if lg.cfg.isSensitive(k) {
				v = Redacted
			}
			group = append(group, slog.String(k, v))
		}
		if len(group) > 0 {
			attrs = append(attrs, slog.Group("metadata", group...))
		}
	}
	lg.l.LogAttrs(ctx, level, lg.msg, attrs...)
}

// NewServer returns a server interceptor that logs every call the server's
// handlers serve to logger (slog.Default() if nil). Install it first in
// server.WithInterceptors so that its duration covers the other
// interceptors.
func NewServer(logger *slog.Logger, opts ...Option) server.Interceptor {
	if logger == nil {
		logger = slog.Default()
	}
	return &serverInterceptor{lg: &callLogger{l: logger, cfg: newConfig(DefaultServerLevel, opts), msg: ServerMessage, server: true}}
}

type serverInterceptor struct{ lg *callLogger }

func (s *serverInterceptor) WrapUnary(next server.UnaryFunc) server.UnaryFunc {
	return func(ctx context.Context, req proto.Message) (proto.Message, error) {
		start := s.lg.cfg.now()
		res, err := next(ctx, req)
		e := callEnd{duration: s.lg.cfg.now().Sub(start)}
		e.err = server.HandlerError(ctx, err)
		e.code = tether.CodeOf(e.err)
		if ci, ok := server.CallInfoFromContext(ctx); ok {
			e.spec, e.peer, e.principal, e.md = ci.Spec(), ci.Peer().Addr, ci.Peer().Principal, ci.RequestHeader()
		}
		s.lg.log(ctx, e)
		return res, err
	}
}

func (s *serverInterceptor) WrapStream(next server.StreamFunc) server.StreamFunc {
	return func(ctx context.Context, st server.Stream) error {
		start := s.lg.cfg.now()
		observed, counts := server.ObserveStream(st)
		err := next(ctx, observed)
		cause := server.HandlerError(ctx, err)
		sent, received := counts()
		s.lg.log(ctx, callEnd{
			spec:      st.Spec(),
			err:       cause,
			code:      tether.CodeOf(cause),
			duration:  s.lg.cfg.now().Sub(start),
			peer:      st.Peer().Addr,
			principal: st.Peer().Principal,
			stream:    true,
			received:  received,
			sent:      sent,
			md:        st.RequestHeader(),
		})
		return err
	}
}

// NewClient returns a client interceptor that logs every call to logger
// (slog.Default() if nil). A unary call is logged when it returns, retries
// included. A streaming call is logged when it ends: when Receive returns
// io.EOF or an error, or when Close is called first (then the code is
// canceled, or the error a Send or CloseSend returned).
func NewClient(logger *slog.Logger, opts ...Option) client.Interceptor {
	if logger == nil {
		logger = slog.Default()
	}
	return &clientInterceptor{lg: &callLogger{l: logger, cfg: newConfig(DefaultClientLevel, opts), msg: ClientMessage}}
}

type clientInterceptor struct{ lg *callLogger }

func (c *clientInterceptor) WrapUnary(next client.UnaryFunc) client.UnaryFunc {
	return func(ctx context.Context, call *client.Call, req, res proto.Message) error {
		start := c.lg.cfg.now()
		err := next(ctx, call, req, res)
		c.lg.log(ctx, callEnd{
			spec:     call.Spec,
			err:      err,
			code:     tether.CodeOf(err),
			duration: c.lg.cfg.now().Sub(start),
			md:       call.Header,
		})
		return err
	}
}

func (c *clientInterceptor) WrapStream(next client.StreamFunc) client.StreamFunc {
	return func(ctx context.Context, call *client.Call) (client.Stream, error) {
		start := c.lg.cfg.now()
		end := func(err error, sent, received int64) {
			c.lg.log(ctx, callEnd{
				spec:     call.Spec,
				err:      err,
				code:     tether.CodeOf(err),
				duration: c.lg.cfg.now().Sub(start),
				stream:   true,
				received: received,
				sent:     sent,
				md:       call.Header,
			})
		}
		st, err := next(ctx, call)
		if err != nil {
			end(err, 0, 0)
			return nil, err
		}
		return client.ObserveStream(st, end), nil
	}
}
