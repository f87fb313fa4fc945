package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
	"github.com/tetherrpc/tether/bench/gen/bench/v1/benchv1grpc"
	"github.com/tetherrpc/tether/server"
)

// The systems compared.
const (
	Tether = "tether"  // tether over WebSocket
	GRPC   = "grpc-go" // grpc-go over HTTP/2, insecure
	Raw    = "raw-ws"  // a gorilla/websocket echo, no RPC layer at all
)

// Paths served over WebSocket.
const (
	TetherPath = "/tether"
	RawPath    = "/echo"
	// RawStreamPath is the Raw server's streaming ceiling (rawStream).
	RawStreamPath = "/stream"
	// RawUploadPath is the Raw server's upload ceiling (rawUpload).
	RawUploadPath = "/upload"
)

// ListenLoopback listens on a free TCP port of ip, which must be an IPv4
// loopback address (127.0.0.0/8): the benchmarks never listen on anything
// else.
func ListenLoopback(ip string) (net.Listener, error) {
	addr := net.ParseIP(ip)
	if addr == nil || addr.To4() == nil || !addr.IsLoopback() {
		return nil, fmt.Errorf("bench: %q is not an IPv4 loopback address", ip)
	}
	return net.Listen("tcp4", net.JoinHostPort(addr.String(), "0"))
}

// LoopbackIPs returns n loopback addresses: 127.0.0.1, 127.0.0.2, ...
// Linux answers on all of 127.0.0.0/8; spreading connections over several
// addresses multiplies the ephemeral ports available to a client.
func LoopbackIPs(n int) []string {
	ips := make([]string, max(n, 1))
	for i := range ips {
		ips[i] = fmt.Sprintf("127.0.0.%d", i+1)
	}
	return ips
}

// Server is a running benchmark server of one system.
type Server struct {
	// System is Raw or one of RPCSystems.
	System string
	// Targets are what clients dial, one per listener: ws:// URLs for
	// Tether, Raw and DRPCWS, http:// base URLs for ConnectH2C and
	// ConnectHTTP1, host:port for GRPC and DRPCTCP.
	Targets []string

	stop func()
}

// Close stops the server and closes its connections.
func (s *Server) Close() { s.stop() }

// Serve starts a server of system on a free port of each loopback ip.
func Serve(system string, ips ...string) (*Server, error) {
	if len(ips) == 0 {
		ips = LoopbackIPs(1)
	}
	var lns []net.Listener
	for _, ip := range ips {
		ln, err := ListenLoopback(ip)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
	}
	s := &Server{System: system}
	switch system {
	case Tether:
		// Every client here connects from 127.0.0.1 (the kernel picks it
		// whichever 127.0.0.x it dials), where a real fleet comes from many
		// addresses: the per-IP bound (default 10,000) is raised to the
		// server-wide one so that the push fleet and large idle runs fit.
		ts := server.New(server.WithLogger(slog.New(slog.DiscardHandler)),
			server.WithMaxConnectionsPerIP(server.DefaultMaxConnections))
		benchv1.RegisterBenchServiceHandler(ts, &TetherHandler{})
		// Serve's own upgrade-only listener, as a deployment that serves
		// tether alone on its port runs it (no net/http server).
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for _, ln := range lns {
			wg.Go(func() {
				if err := ts.Serve(ctx, ln); err != nil {
					slog.Error("bench: serve", "err", err)
				}
			})
		}
		s.stop = func() { _ = ts.Close(); cancel(); wg.Wait() }
		s.Targets = wsURLs(lns, TetherPath)
	case Raw:
		mux := http.NewServeMux()
		mux.HandleFunc(RawPath, rawEcho)
		mux.HandleFunc(RawStreamPath, rawStream)
		mux.HandleFunc(RawUploadPath, rawUpload)
		mux.HandleFunc(RawMuxPath, rawMuxServe)
		s.stop = serveHTTP(mux, lns)
		s.Targets = wsURLs(lns, RawPath)
	case GRPC:
		gs := grpc.NewServer()
		benchv1grpc.RegisterBenchServiceServer(gs, &GRPCHandler{})
		for _, ln := range lns {
			go func() { _ = gs.Serve(ln) }()
			s.Targets = append(s.Targets, ln.Addr().String())
		}
		s.stop = gs.Stop
	case ConnectH2C, ConnectHTTP1:
		s.Targets, s.stop = serveConnect(lns, system == ConnectH2C)
	case DRPCTCP:
		s.Targets, s.stop = serveDRPCTCP(lns)
	case DRPCWS:
		s.Targets, s.stop = serveDRPCWS(lns)
	default:
		for _, l := range lns {
			l.Close()
		}
		return nil, fmt.Errorf("bench: unknown system %q", system)
	}
	return s, nil
}

func wsURLs(lns []net.Listener, path string) []string {
	out := make([]string, len(lns))
	for i, ln := range lns {
		out[i] = "ws://" + ln.Addr().String() + path
	}
	return out
}

func serveHTTP(h http.Handler, lns []net.Listener) (stop func()) {
	return serveHTTPWith(h, lns, nil)
}

// serveHTTPWith serves h on lns with protocols (nil: net/http's default,
// HTTP/1.1 only without TLS) until stop is called.
func serveHTTPWith(h http.Handler, lns []net.Listener, protocols *http.Protocols) (stop func()) {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, Protocols: protocols}
	var wg sync.WaitGroup
	for _, ln := range lns {
		wg.Go(func() {
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				slog.Error("bench: serve", "err", err)
			}
		})
	}
	return func() { _ = hs.Close(); wg.Wait() }
}

// rawUpgrader is gorilla/websocket with its defaults (4 KiB buffers).
var rawUpgrader = websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}

// rawStream answers every WebSocket message, a StreamRequest, with its
// Count payloads of Size bytes, each marshalled and written as a
// WebSocket message of its own: the application's work of the RPC
// systems' ServerStream handlers (a Send marshals its message), without
// an RPC layer, flow control or batching.
func rawStream(w http.ResponseWriter, r *http.Request) {
	ws, err := rawUpgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer ws.Close()
	var buf []byte
	for {
		_, b, err := ws.ReadMessage()
		if err != nil {
			return
		}
		req := new(benchv1.StreamRequest)
		if err := proto.Unmarshal(b, req); err != nil {
			return
		}
		msg := streamPayload(req)
		for range req.GetCount() {
			if buf, err = (proto.MarshalOptions{}).MarshalAppend(buf[:0], msg); err != nil {
				return
			}
			if err := ws.WriteMessage(websocket.BinaryMessage, buf); err != nil {
				return
			}
		}
	}
}

// rawUpload reads a StreamRequest, then its Count WebSocket messages, each
// decoded into a new Payload, and answers with an UploadSummary: the
// application's work of the RPC systems' ClientStream handlers (a Receive
// decodes its message), without an RPC layer or flow control.
func rawUpload(w http.ResponseWriter, r *http.Request) {
	ws, err := rawUpgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer ws.Close()
	var buf []byte
	for {
		if buf, err = RawRead(ws, buf); err != nil {
			return
		}
		req := new(benchv1.StreamRequest)
		if err := proto.Unmarshal(buf, req); err != nil {
			return
		}
		left := req.GetCount()
		sum, err := upload(func() (*benchv1.Payload, error) {
			if left == 0 {
				return nil, io.EOF
			}
			left--
			var err error
			if buf, err = RawRead(ws, buf); err != nil {
				return nil, err
			}
			m := new(benchv1.Payload)
			return m, proto.Unmarshal(buf, m)
		})
		if err != nil {
			return
		}
		b, err := proto.Marshal(sum)
		if err != nil {
			return
		}
		if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
			return
		}
	}
}

// rawEcho answers every WebSocket message with the same bytes: the least
// work a message-oriented server over gorilla/websocket can do per message.
func rawEcho(w http.ResponseWriter, r *http.Request) {
	ws, err := rawUpgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer ws.Close()
	for {
		mt, rd, err := ws.NextReader()
		if err != nil {
			return
		}
		wr, err := ws.NextWriter(mt)
		if err != nil {
			return
		}
		if _, err := io.Copy(wr, rd); err != nil {
			return
		}
		if err := wr.Close(); err != nil {
			return
		}
	}
}
