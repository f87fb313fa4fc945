package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"

	"github.com/gorilla/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
	"github.com/tetherrpc/tether/bench/gen/bench/v1/benchv1grpc"
	"github.com/tetherrpc/tether/client"
)

// Conn is one client of a BenchService server: one connection for tether,
// grpc-go, connect-h2c and drpc-ws (see ConnCounter for the others).
type Conn interface {
	// Unary makes one Unary call.
	Unary(ctx context.Context, req *benchv1.Payload) (*benchv1.Payload, error)
	// ServerStream makes one ServerStream call and receives every message;
	// it returns how many arrived.
	ServerStream(ctx context.Context, req *benchv1.StreamRequest) (int, error)
	// ClientStream makes one ClientStream call that sends msg count times,
	// and returns how many payloads the server says arrived.
	ClientStream(ctx context.Context, msg *benchv1.Payload, count int) (int, error)
	// Bidi opens a Bidi call.
	Bidi(ctx context.Context) (BidiStream, error)
	// Close closes the connection.
	Close() error
}

// BidiStream is the client side of a Bidi call.
type BidiStream interface {
	Send(*benchv1.Payload) error
	Recv() (*benchv1.Payload, error)
	// Close half-closes the stream and waits for the server to end it.
	Close() error
}

// Dial connects to a server of system at target (one of Server.Targets).
// With wait it returns once the connection is ready; without, the first call
// may wait for it (tether's and grpc-go's clients connect in the
// background; connect-go's connects on its first call; drpc's clients dial
// before Dial returns).
func Dial(ctx context.Context, system, target string, wait bool) (Conn, error) {
	switch system {
	case Tether:
		return DialTether(ctx, target, wait)
	case GRPC:
		return DialGRPC(ctx, target, wait)
	case ConnectH2C, ConnectHTTP1:
		return DialConnect(ctx, target, system == ConnectH2C, wait)
	case DRPCTCP:
		return DialDRPCTCP(ctx, target)
	case DRPCWS:
		return DialDRPCWS(ctx, target)
	}
	return nil, fmt.Errorf("bench: no RPC client for %q", system)
}

// --- tether ---

type tetherConn struct {
	c   *client.Client
	svc benchv1.BenchServiceClient
}

// DialTether connects a tether client with default options.
func DialTether(ctx context.Context, rawURL string, wait bool) (Conn, error) {
	if err := checkLoopbackURL(rawURL); err != nil {
		return nil, err
	}
	c, err := client.New(rawURL, client.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		return nil, err
	}
	if wait {
		for st := c.State(); st != client.StateReady; st = c.WaitForStateChange(ctx, st) {
			if st == client.StateClosed || ctx.Err() != nil {
				_ = c.Close()
				return nil, fmt.Errorf("bench: tether connect %s: state %v: %v", rawURL, st, ctx.Err())
			}
		}
	}
	return &tetherConn{c: c, svc: benchv1.NewBenchServiceClient(c)}, nil
}

func (t *tetherConn) Unary(ctx context.Context, req *benchv1.Payload) (*benchv1.Payload, error) {
	return t.svc.Unary(ctx, req)
}

func (t *tetherConn) ServerStream(ctx context.Context, req *benchv1.StreamRequest) (int, error) {
	s, err := t.svc.ServerStream(ctx, req)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	n := 0
	for {
		if _, err := s.Receive(); err != nil {
			if errors.Is(err, io.EOF) {
				return n, nil
			}
			return n, err
		}
		n++
	}
}

func (t *tetherConn) ClientStream(ctx context.Context, msg *benchv1.Payload, count int) (int, error) {
	s, err := t.svc.ClientStream(ctx)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	return sendAll(count, func() error { return s.Send(msg) }, s.CloseAndReceive)
}

// sendAll is the client side of a ClientStream call on every system:
// count sends, then the server's summary. A send that fails usually means
// the server ended the call; its status comes with the response, so that
// error is the one returned when there is one.
func sendAll(count int, send func() error, closeAndRecv func() (*benchv1.UploadSummary, error)) (int, error) {
	for range count {
		if err := send(); err != nil {
			if _, rerr := closeAndRecv(); rerr != nil {
				return 0, rerr
			}
			return 0, err
		}
	}
	sum, err := closeAndRecv()
	return int(sum.GetCount()), err
}

func (t *tetherConn) Bidi(ctx context.Context) (BidiStream, error) {
	s, err := t.svc.Bidi(ctx)
	if err != nil {
		return nil, err
	}
	return tetherBidi{s}, nil
}

func (t *tetherConn) Close() error { return t.c.Close() }

type tetherBidi struct {
	s *client.BidiStream[benchv1.Payload, benchv1.Payload]
}

func (b tetherBidi) Send(m *benchv1.Payload) error   { return b.s.Send(m) }
func (b tetherBidi) Recv() (*benchv1.Payload, error) { return b.s.Receive() }

func (b tetherBidi) Close() error {
	defer b.s.Close()
	if err := b.s.CloseSend(); err != nil {
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

// --- grpc-go ---

type grpcConn struct {
	cc  *grpc.ClientConn
	svc benchv1grpc.BenchServiceClient
}

// DialGRPC connects a grpc-go client, insecure, with default options apart
// from the passthrough resolver (target is an IP:port; tether has no
// resolver either) and no proxy.
func DialGRPC(ctx context.Context, addr string, wait bool) (Conn, error) {
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithNoProxy())
	if err != nil {
		return nil, err
	}
	if wait {
		cc.Connect()
		for st := cc.GetState(); st != connectivity.Ready; st = cc.GetState() {
			if st == connectivity.Shutdown || !cc.WaitForStateChange(ctx, st) {
				_ = cc.Close()
				return nil, fmt.Errorf("bench: grpc connect %s: state %v: %v", addr, st, ctx.Err())
			}
		}
	}
	return &grpcConn{cc: cc, svc: benchv1grpc.NewBenchServiceClient(cc)}, nil
}

func (g *grpcConn) Unary(ctx context.Context, req *benchv1.Payload) (*benchv1.Payload, error) {
	return g.svc.Unary(ctx, req)
}

func (g *grpcConn) ServerStream(ctx context.Context, req *benchv1.StreamRequest) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := g.svc.ServerStream(ctx, req)
	if err != nil {
		return 0, err
	}
	n := 0
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

func (g *grpcConn) ClientStream(ctx context.Context, msg *benchv1.Payload, count int) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := g.svc.ClientStream(ctx)
	if err != nil {
		return 0, err
	}
	return sendAll(count, func() error { return s.Send(msg) }, s.CloseAndRecv)
}

func (g *grpcConn) Bidi(ctx context.Context) (BidiStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	s, err := g.svc.Bidi(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	return grpcBidi{s: s, cancel: cancel}, nil
}

func (g *grpcConn) Close() error { return g.cc.Close() }

type grpcBidi struct {
	s      grpc.BidiStreamingClient[benchv1.Payload, benchv1.Payload]
	cancel context.CancelFunc
}

func (b grpcBidi) Send(m *benchv1.Payload) error   { return b.s.Send(m) }
func (b grpcBidi) Recv() (*benchv1.Payload, error) { return b.s.Recv() }

func (b grpcBidi) Close() error {
	defer b.cancel()
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

// --- raw WebSocket ---

// DialRaw connects a gorilla/websocket client (default 4 KiB buffers, no
// proxy) to a Raw server.
func DialRaw(ctx context.Context, rawURL string) (*websocket.Conn, error) {
	if err := checkLoopbackURL(rawURL); err != nil {
		return nil, err
	}
	ws, _, err := (&websocket.Dialer{}).DialContext(ctx, rawURL, nil)
	return ws, err
}

// RawEcho sends msg as one binary message and reads the echo into buf,
// which it returns resliced.
func RawEcho(ws *websocket.Conn, msg, buf []byte) ([]byte, error) {
	if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
		return nil, err
	}
	return RawRead(ws, buf)
}

// RawStreamURL is the Raw server's streaming ceiling at the same server as
// target, a Raw server's echo URL.
func RawStreamURL(target string) string {
	return strings.TrimSuffix(target, RawPath) + RawStreamPath
}

// RawStream asks a Raw server's stream endpoint (RawStreamURL) for
// req.Count payloads and reads them, decoding each into a new Payload as
// the RPC systems' clients do, with buf as the read buffer. It returns the
// number of payloads received and the read buffer for the next call.
func RawStream(ws *websocket.Conn, req *benchv1.StreamRequest, buf []byte) (int, []byte, error) {
	b, err := proto.Marshal(req)
	if err != nil {
		return 0, buf, err
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		return 0, buf, err
	}
	for n := range int(req.GetCount()) {
		if buf, err = RawRead(ws, buf); err != nil {
			return n, buf, err
		}
		if err := proto.Unmarshal(buf, new(benchv1.Payload)); err != nil {
			return n, buf, err
		}
	}
	return int(req.GetCount()), buf, nil
}

// DialRawUpload connects a gorilla/websocket client to a Raw server's
// upload endpoint (RawUploadURL) with a write buffer that holds a whole
// 64 KiB payload: gorilla cuts a client's message into frames of its write
// buffer, one write each (17 for a 64 KiB payload at the default 4 KiB),
// where its server writes a message as one frame (the raw stream), and
// tether's client writes through a 64 KiB buffer.
func DialRawUpload(ctx context.Context, rawURL string) (*websocket.Conn, error) {
	if err := checkLoopbackURL(rawURL); err != nil {
		return nil, err
	}
	ws, _, err := (&websocket.Dialer{WriteBufferSize: rawUploadWriteBuffer}).DialContext(ctx, rawURL, nil)
	return ws, err
}

// rawUploadWriteBuffer holds a marshalled 64 KiB Payload (65,540 bytes).
const rawUploadWriteBuffer = 66 << 10

// RawUploadURL is the Raw server's upload ceiling at the same server as
// target, a Raw server's echo URL.
func RawUploadURL(target string) string {
	return strings.TrimSuffix(target, RawPath) + RawUploadPath
}

// RawUpload sends a Raw server's upload endpoint (RawUploadURL, dialled
// with DialRawUpload) a
// StreamRequest for count payloads, then msg count times, each marshalled
// and written as a WebSocket message of its own as the RPC systems'
// clients do, and reads the server's UploadSummary with buf as the read
// buffer. It returns the count the server reports and the read buffer.
func RawUpload(ws *websocket.Conn, msg *benchv1.Payload, count int, buf []byte) (int, []byte, error) {
	b, err := proto.Marshal(&benchv1.StreamRequest{Count: uint32(count)})
	if err != nil {
		return 0, buf, err
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		return 0, buf, err
	}
	for range count {
		if b, err = (proto.MarshalOptions{}).MarshalAppend(b[:0], msg); err != nil {
			return 0, buf, err
		}
		if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
			return 0, buf, err
		}
	}
	if buf, err = RawRead(ws, buf); err != nil {
		return 0, buf, err
	}
	sum := new(benchv1.UploadSummary)
	err = proto.Unmarshal(buf, sum)
	return int(sum.GetCount()), buf, err
}

// RawRead reads one message into buf, growing it if needed.
func RawRead(ws *websocket.Conn, buf []byte) ([]byte, error) {
	_, r, err := ws.NextReader()
	if err != nil {
		return nil, err
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// checkLoopback refuses any host:port whose host is not a loopback IP.
func checkLoopback(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("bench: %q is not a loopback address", hostport)
	}
	return nil
}

func checkLoopbackURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	return checkLoopback(u.Host)
}
