package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"
	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"storj.io/drpc/drpcconn"
	"storj.io/drpc/drpcmux"
	"storj.io/drpc/drpcserver"

	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
	"github.com/tetherrpc/tether/bench/gen/bench/v1/benchv1connect"
	"github.com/tetherrpc/tether/bench/gen/bench/v1/benchv1drpc"
)

// The peers beyond grpc-go: connect-go and drpc, each over two transports.
const (
	// ConnectH2C is connect-go's Connect protocol over HTTP/2 cleartext
	// (prior knowledge, net/http's unencrypted HTTP/2).
	ConnectH2C = "connect-h2c"
	// ConnectHTTP1 is connect-go's Connect protocol over HTTP/1.1: unary and
	// server streaming only; the client's transport opens as many
	// connections as it has calls in flight.
	ConnectHTTP1 = "connect-http1"
	// DRPCTCP is drpc over plain TCP. A drpc connection runs one call at a
	// time, so the client keeps a pool: a call takes an idle connection or
	// dials a new one.
	DRPCTCP = "drpc-tcp"
	// DRPCWS is drpc over a WebSocket as coder runs it: coder/websocket's
	// NetConn carries a yamux session, and every call opens its own yamux
	// stream with a fresh drpc connection on it, closed when the call ends.
	DRPCWS = "drpc-ws"
)

// DRPCPath is the WebSocket path of the drpc-ws server.
const DRPCPath = "/drpc"

// RPCSystems are the RPC systems of the comparison, tether first.
var RPCSystems = []string{Tether, GRPC, ConnectH2C, ConnectHTTP1, DRPCTCP, DRPCWS}

// Call kinds a system may not support (see Unsupported).
const (
	KindUnary        = "unary"
	KindServerStream = "server-stream"
	KindClientStream = "client-stream"
	KindBidi         = "bidi"
)

// Unsupported returns why system cannot run calls of kind, or "" if it can.
func Unsupported(system, kind string) string {
	if system == ConnectHTTP1 && kind == KindBidi {
		return "the Connect protocol needs HTTP/2 for bidirectional streaming"
	}
	return ""
}

// ConnCounter is implemented by the Conns that may open more than one
// network connection (connect-http1's transport, drpc-tcp's pool).
type ConnCounter interface {
	// Dialed returns how many network connections the Conn has opened
	// and written to.
	Dialed() int64
}

// Dialed returns how many network connections c has opened and written
// to: what its ConnCounter says, else 1.
func Dialed(c Conn) int64 {
	if cc, ok := c.(ConnCounter); ok {
		return cc.Dialed()
	}
	return 1
}

// --- servers ---

// serveConnect serves BenchService over connect-go on lns, with HTTP/1.1
// and, if h2c, unencrypted HTTP/2 (prior knowledge). gzip is unregistered:
// connect-go would otherwise compress every response for its own client,
// which accepts gzip by default, and no other system compresses.
func serveConnect(lns []net.Listener, h2c bool) (targets []string, stop func()) {
	mux := http.NewServeMux()
	mux.Handle(benchv1connect.NewBenchServiceHandler(&ConnectHandler{}, connect.WithCompression("gzip", nil, nil)))
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(h2c)
	for _, ln := range lns {
		targets = append(targets, "http://"+ln.Addr().String())
	}
	return targets, serveHTTPWith(mux, lns, &p)
}

func newDRPCServer() *drpcserver.Server {
	m := drpcmux.New()
	if err := benchv1drpc.DRPCRegisterBenchService(m, &DRPCHandler{}); err != nil {
		panic(err) // only if the generated description were broken
	}
	return drpcserver.New(m)
}

// serveDRPCTCP serves BenchService over drpc on plain TCP.
func serveDRPCTCP(lns []net.Listener) (targets []string, stop func()) {
	ds := newDRPCServer()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, ln := range lns {
		targets = append(targets, ln.Addr().String())
		wg.Go(func() { _ = ds.Serve(ctx, ln) })
	}
	return targets, func() { cancel(); wg.Wait() }
}

func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	return cfg
}

// serveDRPCWS serves BenchService over drpc as coder does: a WebSocket
// (coder/websocket) whose binary messages carry a yamux session, every yamux
// stream one drpc connection.
func serveDRPCWS(lns []net.Listener) (targets []string, stop func()) {
	ds := newDRPCServer()
	ctx, cancel := context.WithCancel(context.Background())
	var conns sync.WaitGroup
	mux := http.NewServeMux()
	mux.HandleFunc(DRPCPath, func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			return
		}
		conns.Add(1)
		defer conns.Done()
		nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
		sess, err := yamux.Server(nc, yamuxConfig())
		if err != nil {
			_ = nc.Close()
			return
		}
		// Serve closes the session (and so the WebSocket) when ctx ends;
		// it returns when the client closes it.
		_ = ds.Serve(ctx, sess)
		_ = sess.Close()
	})
	for _, ln := range lns {
		targets = append(targets, "ws://"+ln.Addr().String()+DRPCPath)
	}
	stopHTTP := serveHTTPWith(mux, lns, nil)
	return targets, func() { stopHTTP(); cancel(); conns.Wait() }
}

// --- connect-go client ---

type connectConn struct {
	tr    *http.Transport
	svc   benchv1connect.BenchServiceClient
	dials atomic.Int64
}

// DialConnect connects a connect-go client (Connect protocol, binary
// Protobuf, no compression) to baseURL over unencrypted HTTP/2 (h2c) or
// HTTP/1.1. Over HTTP/2 the transport holds one connection; over HTTP/1.1
// it opens one per call in flight and keeps up to 1024 idle. With wait, one
// unary call with an empty body opens the connection before it returns.
func DialConnect(ctx context.Context, baseURL string, h2c, wait bool) (Conn, error) {
	if err := checkLoopbackURL(baseURL); err != nil {
		return nil, err
	}
	c := &connectConn{}
	var p http.Protocols
	if h2c {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	d := &net.Dialer{}
	c.tr = &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &countedConn{Conn: nc, dials: &c.dials}, nil
		},
		Protocols:           &p,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 1024,
	}
	c.svc = benchv1connect.NewBenchServiceClient(&http.Client{Transport: c.tr}, baseURL,
		connect.WithAcceptCompression("gzip", nil, nil))
	if wait {
		if _, err := c.Unary(ctx, &benchv1.Payload{}); err != nil {
			c.tr.CloseIdleConnections()
			return nil, fmt.Errorf("bench: connect %s: %w", baseURL, err)
		}
	}
	return c, nil
}

// Dialed counts the connections that were written to: a request over
// HTTP/1.1, the HTTP/2 preface over h2c. net/http's h2c transport may dial
// a spare connection and close it without writing to it (a call that
// starts before the first connection is back in its idle pool: the spare
// finds an HTTP/2 connection already pooled); counting dials would count it.
func (c *connectConn) Dialed() int64 { return c.dials.Load() }

// countedConn adds one to dials at its first Write.
type countedConn struct {
	net.Conn
	dials *atomic.Int64
	used  atomic.Bool
}

func (c *countedConn) Write(b []byte) (int, error) {
	if !c.used.Load() && c.used.CompareAndSwap(false, true) {
		c.dials.Add(1)
	}
	return c.Conn.Write(b)
}

func (c *connectConn) Unary(ctx context.Context, req *benchv1.Payload) (*benchv1.Payload, error) {
	res, err := c.svc.Unary(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

func (c *connectConn) ServerStream(ctx context.Context, req *benchv1.StreamRequest) (int, error) {
	s, err := c.svc.ServerStream(ctx, connect.NewRequest(req))
	if err != nil {
		return 0, err
	}
	defer s.Close()
	n := 0
	for s.Receive() {
		n++
	}
	return n, s.Err()
}

func (c *connectConn) ClientStream(ctx context.Context, msg *benchv1.Payload, count int) (int, error) {
	s := c.svc.ClientStream(ctx)
	return sendAll(count, func() error { return s.Send(msg) }, func() (*benchv1.UploadSummary, error) {
		res, err := s.CloseAndReceive()
		if err != nil {
			return nil, err
		}
		return res.Msg, nil
	})
}

func (c *connectConn) Bidi(ctx context.Context) (BidiStream, error) {
	return connectBidi{c.svc.Bidi(ctx)}, nil
}

func (c *connectConn) Close() error {
	c.tr.CloseIdleConnections()
	return nil
}

type connectBidi struct {
	s *connect.BidiStreamForClient[benchv1.Payload, benchv1.Payload]
}

func (b connectBidi) Send(m *benchv1.Payload) error   { return b.s.Send(m) }
func (b connectBidi) Recv() (*benchv1.Payload, error) { return b.s.Receive() }

func (b connectBidi) Close() error {
	defer b.s.CloseResponse()
	if err := b.s.CloseRequest(); err != nil {
		return err
	}
	for {
		if _, err := b.s.Receive(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// --- drpc clients ---

// drpcClient runs every call on a drpc connection of its own: from open,
// which dials (drpc-tcp) or opens a yamux stream (drpc-ws). With reuse, a
// connection goes back to an idle pool when its call ends (drpc-tcp);
// without, it is closed (drpc-ws, as coder's MultiplexedConn does).
type drpcClient struct {
	open    func(ctx context.Context) (net.Conn, error)
	reuse   bool
	dials   atomic.Int64
	onClose func() error

	mu     sync.Mutex
	idle   []*drpcconn.Conn
	closed bool
}

var errDRPCClosed = errors.New("bench: drpc client closed")

func (d *drpcClient) get(ctx context.Context) (*drpcconn.Conn, error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, errDRPCClosed
	}
	for len(d.idle) > 0 {
		c := d.idle[len(d.idle)-1]
		d.idle = d.idle[:len(d.idle)-1]
		select {
		case <-c.Closed():
			continue
		default:
		}
		d.mu.Unlock()
		return c, nil
	}
	d.mu.Unlock()
	nc, err := d.open(ctx)
	if err != nil {
		return nil, err
	}
	if d.reuse {
		d.dials.Add(1)
	}
	return drpcconn.New(nc), nil
}

// put ends a call on c: back to the pool if it went well and reuse is on.
func (d *drpcClient) put(c *drpcconn.Conn, err error) {
	if d.reuse && err == nil {
		d.mu.Lock()
		if !d.closed {
			d.idle = append(d.idle, c)
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()
	}
	_ = c.Close()
}

// DialDRPCTCP connects a drpc client over plain TCP to addr. It dials one
// connection now and more as calls overlap (one per call in flight).
func DialDRPCTCP(ctx context.Context, addr string) (Conn, error) {
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}
	d := &net.Dialer{}
	c := &drpcClient{reuse: true, open: func(ctx context.Context) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	}}
	first, err := c.get(ctx)
	if err != nil {
		return nil, err
	}
	c.put(first, nil)
	return c, nil
}

// DialDRPCWS connects a drpc client to a drpc-ws server as coder's clients
// do: one WebSocket (coder/websocket, no compression) carrying a yamux
// session; every call opens a yamux stream and a drpc connection on it.
func DialDRPCWS(ctx context.Context, rawURL string) (Conn, error) {
	if err := checkLoopbackURL(rawURL); err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: &http.Transport{Proxy: nil}}
	ws, _, err := websocket.Dial(ctx, rawURL, &websocket.DialOptions{
		HTTPClient:      hc,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return nil, err
	}
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	sess, err := yamux.Client(nc, yamuxConfig())
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	return &drpcClient{
		open: func(context.Context) (net.Conn, error) {
			return sess.Open()
		},
		onClose: sess.Close,
	}, nil
}

func (d *drpcClient) Dialed() int64 {
	if !d.reuse {
		return 1 // one WebSocket
	}
	return d.dials.Load()
}

func (d *drpcClient) Unary(ctx context.Context, req *benchv1.Payload) (*benchv1.Payload, error) {
	c, err := d.get(ctx)
	if err != nil {
		return nil, err
	}
	res, err := benchv1drpc.NewDRPCBenchServiceClient(c).Unary(ctx, req)
	d.put(c, err)
	return res, err
}

func (d *drpcClient) ServerStream(ctx context.Context, req *benchv1.StreamRequest) (n int, err error) {
	c, err := d.get(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { d.put(c, err) }()
	s, err := benchv1drpc.NewDRPCBenchServiceClient(c).ServerStream(ctx, req)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	for {
		if _, err := s.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return n, nil
			}
			return n, err
		}
		n++
	}
}

func (d *drpcClient) ClientStream(ctx context.Context, msg *benchv1.Payload, count int) (n int, err error) {
	c, err := d.get(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { d.put(c, err) }()
	s, err := benchv1drpc.NewDRPCBenchServiceClient(c).ClientStream(ctx)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	return sendAll(count, func() error { return s.Send(msg) }, s.CloseAndRecv)
}

func (d *drpcClient) Bidi(ctx context.Context) (BidiStream, error) {
	c, err := d.get(ctx)
	if err != nil {
		return nil, err
	}
	s, err := benchv1drpc.NewDRPCBenchServiceClient(c).Bidi(ctx)
	if err != nil {
		d.put(c, err)
		return nil, err
	}
	return &drpcBidi{s: s, done: func(err error) { d.put(c, err) }}, nil
}

func (d *drpcClient) Close() error {
	d.mu.Lock()
	d.closed = true
	idle := d.idle
	d.idle = nil
	d.mu.Unlock()
	for _, c := range idle {
		_ = c.Close()
	}
	if d.onClose != nil {
		return d.onClose()
	}
	return nil
}

type drpcBidi struct {
	s    benchv1drpc.DRPCBenchService_BidiClient
	done func(error)
}

func (b *drpcBidi) Send(m *benchv1.Payload) error   { return b.s.Send(m) }
func (b *drpcBidi) Recv() (*benchv1.Payload, error) { return b.s.Recv() }

func (b *drpcBidi) Close() (err error) {
	defer func() { b.done(err) }()
	if err := b.s.CloseSend(); err != nil {
		return err
	}
	for {
		if _, err := b.s.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}
