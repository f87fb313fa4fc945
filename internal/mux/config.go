// Package mux is tether's connection engine, shared by the server and the
// client: it multiplexes streams over one WebSocket with exactly one reader
// and one writer goroutine, credit-based flow control per stream, heartbeats,
// cancellation and graceful drain. The frame format is in internal/frame and
// docs/PROTOCOL.md.
package mux

import (
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// Protocol constants of tether.v1 (docs/PROTOCOL.md).
const (
	// InitialWindow is the credit each side of a new stream starts with, in
	// each direction. A receiver grants more with WINDOW frames.
	InitialWindow = 65536
	// FrameOverhead is the credit a MESSAGE frame costs on top of its payload
	// length, so that floods of empty frames are bounded too.
	FrameOverhead = 16
	// MaxWebSocketMessage is the largest WebSocket message a peer may send.
	MaxWebSocketMessage = 1 << 20
	// maxStreamID is the largest stream id; a client that reaches it
	// drains the connection and opens a new one.
	maxStreamID = 1<<31 - 1
	// minUsefulWindow: WINDOW frames granting less count as idle frames.
	minUsefulWindow = 1024
)

// Defaults of Config.
const (
	DefaultMaxMessageSize       = 8 << 20
	DefaultStreamWindow         = 256 << 10
	DefaultMaxWindowGrowth      = 4 << 20
	DefaultMaxConcurrentStreams = 1024
	DefaultMaxHeaderBytes       = 16 << 10
	DefaultPingInterval         = 10 * time.Second
	DefaultPingTimeout          = 10 * time.Second
	DefaultWriteTimeout         = 10 * time.Second
	DefaultMaxQueueBytes        = 8 << 20
	DefaultMaxHeaderKeys        = 64
	DefaultMaxMessageReadTime   = 30 * time.Second
	DefaultMaxPingRate          = 10   // PINGs per second, burst twice that
	DefaultMaxIdleFrameRate     = 1000 // frames without payload per second, burst twice that
	// batchBytes is how much the writer's queue holds before senders of
	// stream data wait for it to drain; control frames never wait.
	batchBytes = 256 << 10
)

// Handshake headers that announce limits (docs/PROTOCOL.md, section 1,
// Handshake).
const (
	// HeaderMaxConcurrentStreams, in the server's 101, is its
	// MaxConcurrentStreams.
	HeaderMaxConcurrentStreams = "Tether-Max-Concurrent-Streams"
	// HeaderMaxHeaderBytes, in the client's upgrade request and in the
	// server's 101, is the sender's MaxHeaderBytes: the largest cost of an
	// OPEN, HEADERS or END payload it accepts (encoded size plus 32 bytes
	// per metadata entry and value).
	HeaderMaxHeaderBytes = "Tether-Max-Header-Bytes"
	// HeaderPingInterval, in the client's upgrade request and in the
	// server's 101, is the sender's PingInterval in milliseconds: it sends
	// a message at least this often (a PING when nothing else went out),
	// so that the peer can judge silence without guessing
	// (docs/PROTOCOL.md, section 11).
	HeaderPingInterval = "Tether-Ping-Interval"

	// HeaderResumeGrace, in the server's 101, says the server keeps
	// resumable streams (Open.resume) and for how many seconds it keeps
	// one whose connection is lost (docs/PROTOCOL.md, "Resumable
	// streams"). A client sends Open.resume only to a server that
	// announced it.
	HeaderResumeGrace = "Tether-Resume-Grace"
	// HeaderResumeCursors, in the server's 101, says the server restarts
	// resumable streams from the application's cursor when it does not
	// hold them (Resume.cursors; docs/PROTOCOL.md, "Resumable streams"):
	// value 1, server streams; value 2, also client-streaming and bidi
	// streams of methods marked (tether.v1.resume_from_cursor).
	HeaderResumeCursors = "Tether-Resume-Cursors"
)

// maxAnnounced bounds a limit read from a handshake header; larger values
// count as not announced.
const maxAnnounced = 1 << 20

// ParseLimit reads a limit announced in a handshake header: a positive
// integer up to 1,048,576, else 0 (not announced).
func ParseLimit(v string) int {
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 || n > maxAnnounced {
		return 0
	}
	return n
}

// ParseResumeCursors reads the value of HeaderResumeCursors: 1 or 2, a
// larger number counts as 2 (the levels are cumulative), anything else as 0.
func ParseResumeCursors(v string) int {
	return min(ParseLimit(v), 2)
}

// Announce sets, in h, the handshake headers of the limits this side
// announces: its MaxHeaderBytes, its PingInterval in milliseconds and, for
// a server, its MaxConcurrentStreams (defaults applied).
func (c Config) Announce(h http.Header, role Role) {
	c.withDefaults()
	h.Set(HeaderMaxHeaderBytes, strconv.Itoa(c.MaxHeaderBytes))
	h.Set(HeaderPingInterval, strconv.FormatInt(c.PingInterval.Milliseconds(), 10))
	if role == RoleServer {
		h.Set(HeaderMaxConcurrentStreams, strconv.Itoa(c.MaxConcurrentStreams))
	}
}

// Config tunes a connection. Zero fields take the defaults above.
type Config struct {
	// MaxMessageSize bounds one message, assembled from its fragments, in
	// both directions. A larger message fails its stream with
	// resource_exhausted; the connection stays up.
	MaxMessageSize int
	// MaxPartialBytes bounds, per connection, the memory of received
	// messages still being assembled from their fragments (counted as the
	// capacity of their buffers). Credit is granted back as fragments are
	// assembled, so that messages larger than the window flow, which is why
	// the windows do not bound this. A stream whose next fragment would
	// take the total over it is reset with resource_exhausted; the
	// connection goes on. Default: 4 × MaxMessageSize; never less than
	// MaxMessageSize, so a single message of the largest size always fits.
	// Large buffers are whole 8 KiB pages (bigbuf.go): when MaxMessageSize
	// is not a multiple of a page, each multiple of it that MaxPartialBytes
	// holds gets its last page's slack on top, so that it holds as many
	// messages of the largest size as it holds multiples of MaxMessageSize.
	MaxPartialBytes int
	// StreamWindow is the receive window granted to the peer per stream.
	StreamWindow int
	// MaxStreamWindow is how far a stream's receive window may grow while
	// its consumer keeps up with a sender that runs into its credit (it
	// waits on an empty queue after consuming a whole window, and the
	// sender had half the window in flight at once): the window doubles up to it (its
	// first growth goes straight to the most the connection's streams
	// grew). Default: StreamWindow + MaxWindowGrowth (one stream may take the
	// connection's whole budget for growth: 4.25 MiB by the server's
	// defaults); never less than StreamWindow, which turns growth off.
	MaxStreamWindow int
	// MaxWindowGrowth bounds, per connection, the sum of what the streams'
	// receive windows have grown beyond StreamWindow (MaxStreamWindow):
	// what growth can add to the memory a peer makes this side hold.
	// Default: 4 MiB.
	MaxWindowGrowth int
	// MaxConcurrentStreams bounds the streams a server runs at once on this
	// connection; OPENs beyond it are refused with resource_exhausted.
	MaxConcurrentStreams int
	// MaxHeaderBytes bounds what OPEN, HEADERS and END payloads (metadata
	// and status) cost the receiver: their encoded size plus 32 bytes per
	// metadata entry and per value, counted before decoding, so that the
	// decoded metadata's memory is bounded too, not only its wire size.
	MaxHeaderBytes int
	// PingInterval is how often a PING is sent; PingTimeout is how long past
	// the interval the connection may stay silent before it is declared dead.
	PingInterval, PingTimeout time.Duration
	// WriteTimeout bounds one write to the socket.
	WriteTimeout time.Duration
	// MaxQueueBytes bounds the writer's queue; a peer that does not read
	// while the queue passes it is disconnected.
	MaxQueueBytes int
	// MaxHeaderKeys bounds the number of metadata entries in an OPEN; it is
	// counted on the encoded bytes, before decoding.
	MaxHeaderKeys int
	// MaxMessageReadTime bounds the time one WebSocket message may take to
	// arrive once it has started, so a message trickled in fragments with
	// pongs between cannot hold the connection forever. Exceeding it closes
	// the connection with 1008.
	MaxMessageReadTime time.Duration
	// MaxPingRate bounds the PING frames a peer may send per second
	// (burst: twice as many); a ping flood closes the connection with 1008.
	MaxPingRate float64
	// MaxIdleFrameRate bounds frames that carry no application data (PING
	// answers, empty WebSocket messages, WINDOW frames of less than 1 KiB,
	// empty MORE fragments, OPENs refused for bad input, unknown types) per
	// second, burst twice as many; a flood closes the connection with 1008.
	// Frames for streams that just ended and OPENs refused by the stream
	// limit or a drain are not counted: well-behaved clients send them.
	MaxIdleFrameRate float64
	// Accept is called for every stream the peer opens (servers only), on
	// a goroutine of its own: a new one, or one whose last stream's Accept
	// has returned (startHandler). It must end the stream with Finish or
	// Reset. open has every field of the OPEN but its metadata, which
	// Stream.RequestMetadata decodes when asked.
	Accept func(s *Stream, open *tetherv1.Open)
	// NewStream, when set, gives the memory of each stream the peer opens
	// (servers only): a zero Stream that was never used, typically a field
	// of the application's own per-call struct, and that struct, which
	// Stream.Owner returns; the call's state then costs no allocation of
	// its own. Nil: the streams are allocated alone.
	NewStream func() (s *Stream, owner any)
	// LendFirstMessage lends the first message of each stream as RecvMsg
	// lends every later one: from pooled memory, valid until the next
	// RecvMsg or ReleaseMsg, instead of a copy of its own that the caller
	// may keep. For an application that decodes each message before it
	// receives the next (and calls ReleaseMsg once decoded if it may not
	// receive again): a unary call's request and response then cost no
	// allocation of their own.
	LendFirstMessage bool
	// PeerMaxStreams is how many streams the server runs at once on this
	// connection, as it announced in the handshake (clients only; 0: not
	// announced). Open waits while that many of this client's streams are
	// open instead of sending an OPEN the server would refuse.
	PeerMaxStreams int
	// PeerMaxHeaderBytes is the largest cost (see MaxHeaderBytes) of an
	// OPEN, HEADERS or END payload the peer accepts, as it announced in the handshake (0: not announced;
	// MaxHeaderBytes is assumed). Larger ones are not sent: an OPEN fails
	// with resource_exhausted before it leaves; response headers fail a
	// call that was going to succeed with resource_exhausted; an END keeps
	// only the call's code (and a fixed message if it fits).
	PeerMaxHeaderBytes int
	// PeerResumeGrace is the grace period the server announced for
	// resumable streams (HeaderResumeGrace; clients only; 0: the server
	// does not resume streams).
	PeerResumeGrace time.Duration
	// PeerResumeCursors is the level the server announced in
	// HeaderResumeCursors (clients only): 0 none, 1 server streams, 2 all
	// streaming kinds (ParseResumeCursors).
	PeerResumeCursors int
	// Route looks up a procedure when its OPEN arrives (servers only):
	// route is kept on the stream for Accept (Stream.Route), and single
	// says the procedure takes exactly one request message (unary and
	// server-streaming calls): a second one resets the stream with
	// unimplemented, the code gRPC gives cardinality violations. It is
	// called by the reader goroutine for every OPEN and must be fast.
	// procedure is valid only during the call (it is in the reader's
	// buffer): Route must not keep it. name, when equal to procedure, is
	// the string Accept's OPEN carries as its procedure (the registered
	// name: no copy of the procedure per call); otherwise the OPEN gets a
	// copy.
	Route func(procedure string) (route any, single bool, name string)
	// OnClose is called once, after the connection's goroutines have exited.
	OnClose func(err error)
	// Logger receives connection-level events; nil discards them.
	Logger *slog.Logger
}

func (c *Config) withDefaults() {
	orDefault(&c.MaxMessageSize, DefaultMaxMessageSize)
	orDefault(&c.MaxPartialBytes, 4*c.MaxMessageSize)
	c.MaxPartialBytes = max(c.MaxPartialBytes, c.MaxMessageSize)
	if m := c.MaxMessageSize; m >= minBig && m <= 1<<maxBigShift {
		extra := c.MaxPartialBytes / m * (pageUp(m) - m)
		c.MaxPartialBytes += min(extra, math.MaxInt-c.MaxPartialBytes) // saturating: MaxInt says unbounded
	}
	orDefault(&c.StreamWindow, DefaultStreamWindow)
	c.StreamWindow = min(max(c.StreamWindow, InitialWindow), 1<<30)
	orDefault(&c.MaxWindowGrowth, DefaultMaxWindowGrowth)
	orDefault(&c.MaxStreamWindow, c.StreamWindow+min(c.MaxWindowGrowth, 1<<30-c.StreamWindow)) // no overflow where int has 32 bits
	c.MaxStreamWindow = min(max(c.MaxStreamWindow, c.StreamWindow), 1<<30)
	orDefault(&c.MaxConcurrentStreams, DefaultMaxConcurrentStreams)
	orDefault(&c.MaxHeaderBytes, DefaultMaxHeaderBytes)
	orDefault(&c.PingInterval, DefaultPingInterval)
	orDefault(&c.PingTimeout, DefaultPingTimeout)
	orDefault(&c.WriteTimeout, DefaultWriteTimeout)
	orDefault(&c.MaxQueueBytes, DefaultMaxQueueBytes)
	c.MaxQueueBytes = max(c.MaxQueueBytes, 2*batchBytes)
	orDefault(&c.MaxHeaderKeys, DefaultMaxHeaderKeys)
	orDefault(&c.MaxMessageReadTime, DefaultMaxMessageReadTime)
	orDefault(&c.MaxPingRate, DefaultMaxPingRate)
	orDefault(&c.MaxIdleFrameRate, DefaultMaxIdleFrameRate)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// orDefault sets *v to def when it is zero or negative.
func orDefault[T int | float64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// WriteBufferPool is given to gorilla/websocket's Upgrader and Dialer
// (their WriteBufferPool) so that gorilla allocates no write buffer per
// connection: a tether connection writes its frames itself (wswrite.go)
// and never takes one; only a WebSocket written through gorilla's writer
// (a test's bare peer) does.
var WriteBufferPool = &sync.Pool{}

// ReadBufferSize is the WebSocket read buffer size: the smallest
// gorilla/websocket accepts (a control frame's payload), since the
// connection under it (PooledReads) borrows a pooled buffer while bytes
// wait, and payloads go straight into the message buffer.
const ReadBufferSize = 128

// WriteBufferSize is the size of the write buffers gorilla/websocket's
// writer takes from WriteBufferPool (see there).
const WriteBufferSize = 64 << 10
