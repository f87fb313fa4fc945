package e2e

// Hardening tests: every limit of docs/SECURITY.md against a hostile peer.
// Raw peers speak tether frames over gorilla/websocket directly, so that they
// can break the rules the Go client keeps; each test checks that the server
// stays up, that another client's calls keep working, and what the offender
// sees. Everything runs on 127.0.0.1 (and 127.0.0.2 where the kernel allows
// binding it).

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/authz"
	"github.com/tetherrpc/tether/server/idempotency"
	"github.com/tetherrpc/tether/server/ratelimit"
)

// --- helpers (prefixed sec, to stay clear of the other test files) ---

// secServer starts a server with the echo service (or h) on 127.0.0.1 and
// returns it with its ws:// URL.
func secServer(t *testing.T, h echov1.EchoServiceHandler, opts ...server.Option) (*server.Server, string) {
	t.Helper()
	if h == nil {
		h = &echo.Handler{}
	}
	srv := server.New(append([]server.Option{server.WithLogger(discardLogger())}, opts...)...)
	echov1.RegisterEchoServiceHandler(srv, h)
	return srv, newHTTPServer(t, srv)
}

// secClient is a tether client for url, closed at the end of the test.
func secClient(t *testing.T, url string, opts ...client.Option) (*client.Client, echov1.EchoServiceClient) {
	t.Helper()
	c, err := client.New(url, append([]client.Option{client.WithLogger(discardLogger())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, echov1.NewEchoServiceClient(c)
}

// secWitness is a well-behaved client of the server under attack: its calls
// must keep working on its one connection.
type secWitness struct {
	cli  *client.Client
	echo echov1.EchoServiceClient
	n    atomic.Int64
}

func newSecWitness(t *testing.T, url string) *secWitness {
	t.Helper()
	w := &secWitness{}
	w.cli, w.echo = secClient(t, url)
	w.check(t)
	return w
}

// check makes one call; it must succeed.
func (w *secWitness) check(t testing.TB) {
	t.Helper()
	if err := w.call(); err != nil {
		t.Fatalf("witness call: %v", err)
	}
}

func (w *secWitness) call() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	text := fmt.Sprint("witness-", w.n.Add(1))
	res, err := w.echo.Say(ctx, &echov1.SayRequest{Text: text}, client.WithoutRetries())
	if err != nil {
		return err
	}
	if res.GetText() != text {
		return fmt.Errorf("witness got %q, want %q", res.GetText(), text)
	}
	return nil
}

// background calls every 10ms until the returned stop is called (or the
// test ends); stop reports the first failure and how many calls succeeded.
func (w *secWitness) background(t *testing.T) (stop func() (int, error)) {
	done := make(chan struct{})
	result := make(chan struct {
		n   int
		err error
	}, 1)
	go func() {
		n := 0
		var first error
		for {
			select {
			case <-done:
				result <- struct {
					n   int
					err error
				}{n, first}
				return
			case <-time.After(10 * time.Millisecond):
			}
			if err := w.call(); err != nil && first == nil {
				first = err
			} else if err == nil {
				n++
			}
		}
	}()
	var once sync.Once
	var n int
	var err error
	stop = func() (int, error) {
		once.Do(func() {
			close(done)
			r := <-result
			n, err = r.n, r.err
		})
		return n, err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// untouched checks that the witness still works on its first connection.
func (w *secWitness) untouched(t *testing.T) {
	t.Helper()
	w.check(t)
	if st := w.cli.Stats(); st.Connects != 1 || st.State != client.StateReady {
		t.Fatalf("witness connection disturbed: %d connects, state %v", st.Connects, st.State)
	}
}

// secDial opens a raw WebSocket with the tether subprotocol.
func secDial(t testing.TB, url string, hdr http.Header) *websocket.Conn {
	t.Helper()
	ws, resp, err := secDialer().Dial(url, hdr)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	if ws.Subprotocol() != tether.Subprotocol {
		t.Fatalf("server selected subprotocol %q", ws.Subprotocol())
	}
	return ws
}

func secDialer() *websocket.Dialer {
	return &websocket.Dialer{Subprotocols: []string{tether.Subprotocol}, HandshakeTimeout: 5 * time.Second}
}

// secAwaitClose reads until the connection ends and returns the close code
// and reason the server sent; code 0 means no close frame came (err says
// what happened instead).
func secAwaitClose(ws *websocket.Conn, timeout time.Duration) (code int, text string, err error) {
	_ = ws.SetReadDeadline(time.Now().Add(timeout))
	for {
		if _, _, err = ws.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code, ce.Text, nil
			}
			return 0, "", err
		}
	}
}

// secExpectClose fails unless the server closes ws with code within timeout.
func secExpectClose(t *testing.T, ws *websocket.Conn, want int, timeout time.Duration) string {
	t.Helper()
	code, text, err := secAwaitClose(ws, timeout)
	if code != want {
		t.Fatalf("close code %d (%q), err %v; want %d", code, text, err, want)
	}
	return text
}

// Frame builders for raw peers. They panic on encoding errors, which are
// test bugs.

func secMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func secOpen(id uint32, procedure string, md tether.Metadata, timeout time.Duration) []byte {
	open := &tetherv1.Open{Procedure: procedure, TimeoutMicros: uint64(timeout / time.Microsecond)}
	for _, k := range md.Keys() {
		open.Metadata = append(open.Metadata, &tetherv1.MetadataEntry{Key: k, Values: md.Values(k)})
	}
	return frame.Append(nil, frame.Frame{Type: frame.TypeOpen, StreamID: id, Payload: secMarshal(open)})
}

func secMessage(id uint32, m proto.Message) []byte {
	return frame.Append(nil, frame.Frame{Type: frame.TypeMessage, StreamID: id, Payload: secMarshal(m)})
}

func secHalfClose(id uint32) []byte {
	return frame.Append(nil, frame.Frame{Type: frame.TypeHalfClose, StreamID: id})
}

func secWindow(id, n uint32) []byte { return frame.AppendWindow(nil, id, n) }

func secPing(payload uint64, ack bool) []byte {
	var flags uint8
	if ack {
		flags = frame.FlagAck
	}
	p := make([]byte, 8)
	for i := range 8 {
		p[i] = byte(payload >> (56 - 8*i))
	}
	return frame.Append(nil, frame.Frame{Type: frame.TypePing, Flags: flags, Payload: p})
}

func secConcat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func secWrite(t testing.TB, ws *websocket.Conn, msg []byte) {
	t.Helper()
	_ = ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// secEventually polls cond every 10ms until it returns nil or d passes.
func secEventually(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func secConnections(srv *server.Server, want int) func() error {
	return func() error {
		if n := srv.Stats().Connections; n != want {
			return fmt.Errorf("server has %d connections, want %d", n, want)
		}
		return nil
	}
}

func secCountFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(ents)
}

// secRaceEnabled reports whether the test binary was built with -race.
func secRaceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// secLog collects a server's log lines.
type secLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *secLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *secLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *secLog) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// secSelfSigned makes a certificate for 127.0.0.1 signed by its own key
// (the same few lines as examples/tls, which is a main package).
func secSelfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "tether test"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// --- TLS ---

func TestTLS(t *testing.T) {
	cert, pool := secSelfSigned(t)
	srv := server.New(server.WithLogger(discardLogger()))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{
		Handler:           srv,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // refused handshakes are expected here
	}
	served := make(chan error, 1)
	go func() { served <- hs.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		_ = srv.Close()
		_ = hs.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("ServeTLS: %v", err)
		}
	})
	u := "wss://" + ln.Addr().String()
	ctx := testCtx(t)

	_, good := secClient(t, u, client.WithTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	res, err := good.Say(ctx, &echov1.SayRequest{Text: "over tls"})
	if err != nil || res.GetText() != "over tls" {
		t.Fatalf("wss call: %v %v", res, err)
	}

	// Without the CA the handshake fails; the error says why.
	_, bad := secClient(t, u, client.WithBackoff(client.BackoffConfig{Initial: 50 * time.Millisecond}))
	_, err = bad.Say(ctx, &echov1.SayRequest{Text: "x"}, client.FailFast())
	if tether.CodeOf(err) != tether.CodeUnavailable || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("client without the CA: %v; want unavailable naming the certificate", err)
	}
	t.Logf("client without the CA: %v", err)

	// The good client's connection is not affected by the failed handshakes.
	if _, err := good.Say(ctx, &echov1.SayRequest{Text: "again"}); err != nil {
		t.Fatal(err)
	}
}

// --- connection churn ---

// TestConnectKillCycles: 200 times, upgrade a raw connection, maybe open a
// stream, and reset the TCP connection (SO_LINGER 0). Afterwards the server
// holds no connection, no goroutine and no file descriptor for them.
func TestConnectKillCycles(t *testing.T) {
	srv, u := secServer(t, nil)
	addr := strings.TrimPrefix(u, "ws://")
	// Warm up so that lazily created runtime state is in the baseline.
	secKillCycle(t, addr, 0)
	secEventually(t, 5*time.Second, secConnections(srv, 0))
	baseG, baseFD := runtime.NumGoroutine(), secCountFDs(t)

	const cycles = 200
	for i := range cycles {
		secKillCycle(t, addr, i)
	}
	secEventually(t, 5*time.Second, func() error {
		if n := srv.Stats().Connections; n != 0 {
			return fmt.Errorf("server still has %d connections", n)
		}
		if st := srv.Stats(); st.ActiveStreams != 0 {
			return fmt.Errorf("server still has %d streams", st.ActiveStreams)
		}
		if g := runtime.NumGoroutine(); g > baseG+3 {
			return fmt.Errorf("%d goroutines, baseline %d", g, baseG)
		}
		if fd := secCountFDs(t); fd > baseFD+3 {
			return fmt.Errorf("%d open file descriptors, baseline %d", fd, baseFD)
		}
		return nil
	})
	if st := srv.Stats(); st.ConnectionsAccepted != cycles+1 {
		t.Fatalf("server accepted %d connections, want %d", st.ConnectionsAccepted, cycles+1)
	}
	t.Logf("after %d kills: %d goroutines (baseline %d), %d fds (baseline %d)", cycles, runtime.NumGoroutine(), baseG, secCountFDs(t), baseFD)
	w := newSecWitness(t, u)
	w.check(t)
}

// secKillCycle upgrades one raw connection, opens a stream on some of them,
// and resets the connection.
func secKillCycle(t *testing.T, addr string, i int) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tcp := conn.(*net.TCPConn)
	defer func() {
		_ = tcp.SetLinger(0) // close sends RST
		_ = tcp.Close()
	}()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	ws, resp, err := websocket.NewClient(conn, &url.URL{Scheme: "ws", Host: addr, Path: "/"},
		http.Header{"Sec-WebSocket-Protocol": {tether.Subprotocol}}, 1024, 1024)
	if err != nil {
		t.Fatalf("cycle %d: handshake: %v", i, err)
	}
	resp.Body.Close()
	if ws.Subprotocol() != tether.Subprotocol {
		t.Fatalf("cycle %d: subprotocol %q", i, ws.Subprotocol())
	}
	switch i % 4 {
	case 1: // a bidi stream whose handler waits for requests
		secWrite(t, ws, secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), secWindow(1, 1<<20)))
	case 3: // a server stream that is sending when the connection dies
		secWrite(t, ws, secConcat(
			secOpen(1, echov1.EchoServiceCountdownProcedure, nil, 0),
			secWindow(1, 1<<20),
			secMessage(1, &echov1.CountdownRequest{Count: 1_000_000, Payload: make([]byte, 1024)}),
			secHalfClose(1)))
		if _, _, err := ws.ReadMessage(); err != nil { // the handler is running
			t.Fatalf("cycle %d: %v", i, err)
		}
	}
}

// --- floods (internal/mux rate limits) ---

// TestPingFlood: 200 PINGs in one burst against a limit of 10/s (burst 21).
// A server stream keeps the connection's writer busy meanwhile, so the close
// frame is written while the writer is mid-message (under -race, this is the
// concurrent-write check too).
func TestPingFlood(t *testing.T) {
	srv, u := secServer(t, nil, server.WithFloodLimits(10, 1000))
	w := newSecWitness(t, u)
	ws := secDial(t, u, nil)
	defer ws.Close()
	secEventually(t, 5*time.Second, secConnections(srv, 2)) // witness and ws
	secWrite(t, ws, secConcat(
		secOpen(1, echov1.EchoServiceCountdownProcedure, nil, 0),
		secWindow(1, 1<<30),
		secMessage(1, &echov1.CountdownRequest{Count: 1_000_000, Payload: make([]byte, 1024)}),
		secHalfClose(1)))
	if _, _, err := ws.ReadMessage(); err != nil { // the stream is flowing
		t.Fatal(err)
	}
	var burst []byte
	for i := range 200 {
		burst = append(burst, secPing(uint64(i), false)...)
	}
	secWrite(t, ws, burst)
	text := secExpectClose(t, ws, websocket.ClosePolicyViolation, 5*time.Second)
	t.Logf("ping flood: closed with 1008 %q", text)
	secEventually(t, 5*time.Second, secConnections(srv, 1))
	w.untouched(t)
}

func TestIdleFrameFlood(t *testing.T) {
	srv, u := secServer(t, nil)
	w := newSecWitness(t, u)
	ws := secDial(t, u, nil)
	defer ws.Close()
	secEventually(t, 5*time.Second, secConnections(srv, 2)) // witness and ws
	var burst []byte
	for range 5000 {
		burst = frame.Append(burst, frame.Frame{Type: frame.Type(0x42), StreamID: 1})
	}
	secWrite(t, ws, burst)
	text := secExpectClose(t, ws, websocket.ClosePolicyViolation, 5*time.Second)
	t.Logf("idle-frame flood: closed with 1008 %q", text)
	secEventually(t, 5*time.Second, secConnections(srv, 1))
	w.untouched(t)
}

// TestTrickledMessage: a message whose WebSocket fragments arrive one byte
// every 50ms, with WebSocket pings between them, is cut off after
// MaxMessageReadTime.
func TestTrickledMessage(t *testing.T) {
	const limit = 300 * time.Millisecond
	srv, u := secServer(t, nil, server.WithMaxMessageReadTime(limit))
	w := newSecWitness(t, u)
	// A one-byte write buffer: every Write flushes the previous byte as a
	// WebSocket frame of its own.
	d := secDialer()
	d.WriteBufferSize = 1
	ws, _, err := d.Dial(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	secEventually(t, 5*time.Second, secConnections(srv, 2)) // witness and ws
	type closed struct {
		code int
		text string
		err  error
		at   time.Time
	}
	got := make(chan closed, 1)
	go func() {
		code, text, err := secAwaitClose(ws, 10*time.Second)
		got <- closed{code, text, err, time.Now()}
	}()
	mw, err := ws.NextWriter(websocket.BinaryMessage)
	if err != nil {
		t.Fatal(err)
	}
	payload := secPing(1, false)
	start := time.Now()
	var res closed
	func() {
		for i := 0; ; i++ {
			_ = ws.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := mw.Write(payload[i%len(payload) : i%len(payload)+1]); err != nil {
				res = <-got
				return
			}
			_ = ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second))
			select {
			case res = <-got:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if time.Since(start) > 5*time.Second {
				t.Fatal("the server let a message trickle in for 5s")
			}
		}
	}()
	took := res.at.Sub(start)
	if res.code != websocket.ClosePolicyViolation {
		t.Fatalf("close code %d (%q), err %v; want 1008", res.code, res.text, res.err)
	}
	if took < limit-50*time.Millisecond || took > limit+time.Second {
		t.Fatalf("closed %v after the message started; want about %v", took, limit)
	}
	t.Logf("trickled message: closed with 1008 %q after %v", res.text, took.Round(time.Millisecond))
	secEventually(t, 5*time.Second, secConnections(srv, 1))
	w.untouched(t)
}

// TestStalledMessage: a message whose first bytes arrive with its frame's
// header, and whose rest never comes, is cut off after MaxMessageReadTime,
// not after the heartbeat's longer read deadline. The server sets the
// message's deadline on the socket only when the message needs a read of
// it (mux's lazy message deadline): this is that read.
func TestStalledMessage(t *testing.T) {
	const limit = 300 * time.Millisecond
	srv, u := secServer(t, nil, server.WithMaxMessageReadTime(limit))
	w := newSecWitness(t, u)
	ws := secDial(t, u, nil)
	defer ws.Close()
	secEventually(t, 5*time.Second, secConnections(srv, 2)) // witness and ws
	// One masked binary frame announcing 100 bytes; 10 of them sent.
	hdr := []byte{0x82, 0x80 | 100, 1, 2, 3, 4}
	start := time.Now()
	if _, err := ws.UnderlyingConn().Write(append(hdr, make([]byte, 10)...)); err != nil {
		t.Fatal(err)
	}
	code, text, err := secAwaitClose(ws, 10*time.Second)
	took := time.Since(start)
	if code != websocket.ClosePolicyViolation {
		t.Fatalf("close code %d (%q), err %v; want 1008", code, text, err)
	}
	if took < limit-50*time.Millisecond || took > limit+time.Second {
		t.Fatalf("closed %v after the message started; want about %v", took, limit)
	}
	t.Logf("stalled message: closed with 1008 %q after %v", text, took.Round(time.Millisecond))
	secEventually(t, 5*time.Second, secConnections(srv, 1))
	w.untouched(t)
}

// --- WebSocket message rules ---

func TestOversizeMessage(t *testing.T) {
	srv, u := secServer(t, nil)
	w := newSecWitness(t, u)
	ws := secDial(t, u, nil)
	defer ws.Close()
	secEventually(t, 5*time.Second, secConnections(srv, 2)) // witness and ws
	go func() {
		// The server stops reading at the limit; this write may fail.
		_ = ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_ = ws.WriteMessage(websocket.BinaryMessage, make([]byte, 1<<20+1))
	}()
	secExpectClose(t, ws, websocket.CloseMessageTooBig, 5*time.Second)
	secEventually(t, 5*time.Second, secConnections(srv, 1))
	w.untouched(t)
}

func TestTextMessage(t *testing.T) {
	srv, u := secServer(t, nil)
	w := newSecWitness(t, u)
	ws := secDial(t, u, nil)
	defer ws.Close()
	secEventually(t, 5*time.Second, secConnections(srv, 2)) // witness and ws
	if err := ws.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	text := secExpectClose(t, ws, websocket.CloseUnsupportedData, 5*time.Second)
	if text != "tether uses binary messages only" {
		t.Fatalf("close reason %q", text)
	}
	secEventually(t, 5*time.Second, secConnections(srv, 1))
	w.untouched(t)
}

// --- metadata bombs ---

func TestMetadataLimits(t *testing.T) {
	_, u := secServer(t, nil)
	w := newSecWitness(t, u)
	// The client's own header limit is raised: the server's, which it
	// announces in the handshake, is the one that applies.
	cli, ec := secClient(t, u, client.WithMaxHeaderBytes(64<<10))
	ctx := testCtx(t)
	if _, err := ec.Say(ctx, &echov1.SayRequest{Text: "first"}); err != nil {
		t.Fatal(err)
	}

	many := tether.Metadata{}
	for i := range 100 {
		many.Set(fmt.Sprintf("x-key-%03d", i), "v")
	}
	big := tether.Metadata{"x-big": {strings.Repeat("b", 32<<10)}}
	for _, tc := range []struct {
		name string
		md   tether.Metadata
		want string
	}{
		{"100 keys", many, "more than 64 keys"},
		{"32 KiB", big, "exceeds the server's announced limit of 16384"},
	} {
		before := cli.Stats().Retries
		_, err := ec.Say(ctx, &echov1.SayRequest{Text: tc.name}, client.WithHeader(tc.md))
		if tether.CodeOf(err) != tether.CodeResourceExhausted || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s of metadata: %v; want resource_exhausted (%s)", tc.name, err, tc.want)
		}
		retries := cli.Stats().Retries - before
		t.Run(tc.name+" not retried", func(t *testing.T) {
			if retries != 0 {
				t.Fatalf("a call refused for its metadata (%v) was retried %d times: the client's default policy "+
					"for NO_SIDE_EFFECTS methods retries every resource_exhausted, including limits that will refuse it again", err, retries)
			}
		})
	}

	// A client that ignores the announcement: the server refuses the OPEN
	// with RESET resource_exhausted.
	raw := secDial(t, u, nil)
	defer raw.Close()
	secWrite(t, raw, secConcat(secOpen(1, echov1.EchoServiceSayProcedure, big, 0), secMessage(1, &echov1.SayRequest{}), secHalfClose(1)))
	if typ, err := secAwaitEnd(t, raw, 1); typ != frame.TypeReset || tether.CodeOf(err) != tether.CodeResourceExhausted ||
		!strings.Contains(err.Error(), "exceeds the limit of 16384") {
		t.Fatalf("raw OPEN with 32 KiB of metadata: %v %v; want RESET resource_exhausted", typ, err)
	}

	// With the client's default 16 KiB limit the call is refused locally.
	_, ec2 := secClient(t, u)
	_, err := ec2.Say(ctx, &echov1.SayRequest{Text: "big"}, client.WithHeader(big))
	if tether.CodeOf(err) != tether.CodeResourceExhausted {
		t.Fatalf("32 KiB of metadata, default client: %v; want resource_exhausted", err)
	}

	// The same connection goes on.
	if res, err := ec.Say(ctx, &echov1.SayRequest{Text: "after"}); err != nil || res.GetText() != "after" {
		t.Fatalf("call after refusals: %v %v", res, err)
	}
	if n := cli.Stats().Connects; n != 1 {
		t.Fatalf("client reconnected: %d connects", n)
	}
	w.untouched(t)
}

// --- connection limits ---

func TestMaxConnections(t *testing.T) {
	srv, u := secServer(t, nil, server.WithMaxConnections(3))
	w := newSecWitness(t, u) // connection 1
	a, b := secDial(t, u, nil), secDial(t, u, nil)
	defer a.Close()
	defer b.Close()
	// The 101 reaches the client just before the server registers the
	// connection (it counts as pending meanwhile); wait for both.
	secEventually(t, 5*time.Second, secConnections(srv, 3))
	ws, resp, err := secDialer().Dial(u, nil)
	if err == nil {
		ws.Close()
		t.Fatal("4th connection accepted")
	}
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("4th connection: %v %v; want 503 with Retry-After", resp, err)
	}
	w.check(t)
	// A freed slot is usable again.
	a.Close()
	secEventually(t, 5*time.Second, secConnections(srv, 2))
	c := secDial(t, u, nil)
	c.Close()
	w.untouched(t)
}

func TestMaxConnectionsPerIP(t *testing.T) {
	srv, u := secServer(t, nil, server.WithMaxConnectionsPerIP(2))
	a, b := secDial(t, u, nil), secDial(t, u, nil)
	defer a.Close()
	defer b.Close()
	secEventually(t, 5*time.Second, secConnections(srv, 2))
	ws, resp, err := secDialer().Dial(u, nil)
	if err == nil {
		ws.Close()
		t.Fatal("3rd connection from 127.0.0.1 accepted")
	}
	if resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("3rd connection: %v %v; want 429", resp, err)
	}
	// The Go client reports 429 as transient unavailable, with the reason.
	cli, ec := secClient(t, u)
	_, err = ec.Say(testCtx(t), &echov1.SayRequest{}, client.FailFast())
	if tether.CodeOf(err) != tether.CodeUnavailable || !strings.Contains(err.Error(), "429") {
		t.Fatalf("client over the per-IP limit: %v; want unavailable (429)", err)
	}
	_ = cli.Close() // it would take the next free slot

	// Another source address is not limited (if the kernel lets us bind
	// 127.0.0.2, as Linux does for all of 127/8).
	other := secDialer()
	other.NetDialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext
	if ws2, resp, err := other.Dial(u, nil); err != nil {
		if resp != nil {
			t.Fatalf("connection from 127.0.0.2: status %d", resp.StatusCode)
		}
		t.Logf("cannot dial from 127.0.0.2 (%v); skipping that part", err)
	} else {
		secWrite(t, ws2, secPing(7, false))
		secExpectPingAck(t, ws2, 7)
		ws2.Close()
	}
	// Freeing a slot lets 127.0.0.1 in again.
	a.Close()
	secEventually(t, 5*time.Second, secConnections(srv, 1))
	w := newSecWitness(t, u)
	w.check(t)
}

// secExpectPingAck reads until the PING ACK with payload p arrives.
func secExpectPingAck(t *testing.T, ws *websocket.Conn, p uint64) {
	t.Helper()
	want := secPing(p, true)
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("waiting for PING ACK: %v", err)
		}
		for len(msg) > 0 {
			f, rest, err := frame.Parse(msg)
			if err != nil {
				t.Fatalf("server sent a bad frame: %v", err)
			}
			if f.Type == frame.TypePing && string(frame.Append(nil, f)) == string(want) {
				return
			}
			msg = rest
		}
	}
}

// --- slow readers ---

// TestSlowReaderEvicted: a raw client grants a huge window to a fast server
// stream and never reads. The server's socket writes stall, and the write
// timeout drops the connection; another client's calls go on throughout.
func TestSlowReaderEvicted(t *testing.T) {
	srv, u := secServer(t, nil, server.WithWriteTimeout(300*time.Millisecond))
	w := newSecWitness(t, u)
	stop := w.background(t)
	ws := secDial(t, u, nil)
	defer ws.Close()
	secEventually(t, 5*time.Second, secConnections(srv, 2)) // witness and ws
	secWrite(t, ws, secConcat(
		secOpen(1, echov1.EchoServiceCountdownProcedure, nil, 0),
		secWindow(1, 1<<30),
		secMessage(1, &echov1.CountdownRequest{Count: 1_000_000, Payload: make([]byte, 16<<10)}),
		secHalfClose(1)))
	start := time.Now()
	secEventually(t, 5*time.Second, secConnections(srv, 1))
	t.Logf("slow reader dropped after %v", time.Since(start).Round(time.Millisecond))
	time.Sleep(50 * time.Millisecond)
	n, err := stop()
	if err != nil {
		t.Fatalf("witness call during the eviction: %v", err)
	}
	t.Logf("witness made %d calls meanwhile", n)
	w.untouched(t)
}

// --- authentication and authorization ---

// secPrincipalEcho answers Say with the caller's principal.
type secPrincipalEcho struct{ echo.Handler }

func (secPrincipalEcho) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	ci, ok := server.CallInfoFromContext(ctx)
	if !ok {
		return nil, tether.Errorf(tether.CodeInternal, "no call info")
	}
	return &echov1.SayResponse{Text: fmt.Sprint(ci.Peer().Principal)}, nil
}

func TestAuthentication(t *testing.T) {
	auth := server.BearerToken(func(r *http.Request, tok string) (server.Identity, error) {
		switch {
		case tok == "alice-token":
			return server.Identity{Principal: "alice"}, nil
		case strings.HasPrefix(tok, "short-"):
			return server.Identity{Principal: "bob", Expires: time.Now().Add(300 * time.Millisecond)}, nil
		}
		return server.Identity{}, tether.Errorf(tether.CodeUnauthenticated, "unknown token")
	})
	denyCountdown := authz.New(func(ctx context.Context, principal any, procedure string) error {
		if procedure == echov1.EchoServiceCountdownProcedure {
			return errors.New("countdown is not for " + fmt.Sprint(principal))
		}
		return nil
	})
	_, u := secServer(t, &secPrincipalEcho{}, server.WithAuthenticator(auth), server.WithInterceptors(denyCountdown))
	ctx := testCtx(t)

	t.Run("no token", func(t *testing.T) {
		_, ec := secClient(t, u)
		_, err := ec.Say(ctx, &echov1.SayRequest{})
		if tether.CodeOf(err) != tether.CodeUnauthenticated || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "missing bearer token") {
			t.Fatalf("no token: %v; want unauthenticated 401 with the reason", err)
		}
		_, ec = secClient(t, u, client.WithHandshakeHeader(http.Header{"Authorization": {"Bearer wrong"}}))
		if _, err := ec.Say(ctx, &echov1.SayRequest{}); tether.CodeOf(err) != tether.CodeUnauthenticated || !strings.Contains(err.Error(), "unknown token") {
			t.Fatalf("bad token: %v", err)
		}
	})

	t.Run("principal and authz", func(t *testing.T) {
		cli, ec := secClient(t, u, client.WithHandshakeHeader(http.Header{"Authorization": {"Bearer alice-token"}}))
		res, err := ec.Say(ctx, &echov1.SayRequest{})
		if err != nil || res.GetText() != "alice" {
			t.Fatalf("principal: %v %v; want alice", res, err)
		}
		st, err := ec.Countdown(ctx, &echov1.CountdownRequest{Count: 3})
		if err != nil {
			t.Fatal(err)
		}
		_, err = st.Receive()
		st.Close()
		if tether.CodeOf(err) != tether.CodePermissionDenied || !strings.Contains(err.Error(), "not for alice") {
			t.Fatalf("refused procedure: %v; want permission_denied", err)
		}
		if res, err := ec.Say(ctx, &echov1.SayRequest{}); err != nil || res.GetText() != "alice" {
			t.Fatalf("call after the refusal: %v %v", res, err)
		}
		if n := cli.Stats().Connects; n != 1 {
			t.Fatalf("%d connects; the refusal must not cost the connection", n)
		}
	})

	t.Run("expiry", func(t *testing.T) {
		// A raw client sees the close code.
		ws := secDial(t, u, http.Header{"Authorization": {"Bearer short-raw"}})
		defer ws.Close()
		start := time.Now()
		text := secExpectClose(t, ws, websocket.ClosePolicyViolation, 5*time.Second)
		if text != "credentials expired" {
			t.Fatalf("close reason %q", text)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("expired connection closed after %v", d)
		}
		// A client with a header function gets a fresh token per attempt
		// and carries on.
		var tokens atomic.Int64
		cli, ec := secClient(t, u, client.WithHandshakeHeaderFunc(func(context.Context) (http.Header, error) {
			return http.Header{"Authorization": {fmt.Sprint("Bearer short-", tokens.Add(1))}}, nil
		}))
		if res, err := ec.Say(ctx, &echov1.SayRequest{}); err != nil || res.GetText() != "bob" {
			t.Fatalf("first call: %v %v", res, err)
		}
		secEventually(t, 5*time.Second, func() error {
			if n := cli.Stats().Connects; n < 2 {
				return fmt.Errorf("%d connects", n)
			}
			return nil
		})
		if res, err := ec.Say(ctx, &echov1.SayRequest{}); err != nil || res.GetText() != "bob" {
			t.Fatalf("call after the reconnect: %v %v", res, err)
		}
		t.Logf("%d tokens issued, %d connects", tokens.Load(), cli.Stats().Connects)
	})
}

// --- rate limit ---

func TestRateLimit(t *testing.T) {
	rl := ratelimit.New(ratelimit.Limits{PerConnection: 50, ConnectionBurst: 10})
	_, u := secServer(t, nil, server.WithInterceptors(rl))
	w := newSecWitness(t, u) // its own connection, its own bucket
	_, ec := secClient(t, u)
	ctx := testCtx(t)
	if _, err := ec.Say(ctx, &echov1.SayRequest{}); err != nil { // connect
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // refill the bucket
	var ok, limited, other atomic.Int64
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := ec.Say(ctx, &echov1.SayRequest{}, client.WithoutRetries())
			switch {
			case err == nil:
				ok.Add(1)
			case tether.CodeOf(err) == tether.CodeResourceExhausted:
				limited.Add(1)
			default:
				other.Add(1)
				t.Errorf("unexpected error: %v", err)
			}
		}()
	}
	wg.Wait()
	t.Logf("burst of 100: %d ok, %d resource_exhausted", ok.Load(), limited.Load())
	if limited.Load() == 0 || ok.Load() < 10 {
		t.Fatalf("burst of 100: %d ok, %d limited; want at least 10 ok and some limited", ok.Load(), limited.Load())
	}
	w.check(t)
	time.Sleep(300 * time.Millisecond)
	for i := range 5 {
		if _, err := ec.Say(ctx, &echov1.SayRequest{}, client.WithoutRetries()); err != nil {
			t.Fatalf("call %d after the pause: %v", i, err)
		}
	}
	w.untouched(t)
}

// --- rapid reset ---

// secCountingChat records how many Chat handlers run at once.
type secCountingChat struct {
	echo.Handler
	running, peak, entered atomic.Int64
}

func (h *secCountingChat) Chat(ctx context.Context, _ *server.BidiStream[echov1.ChatRequest, echov1.ChatResponse]) error {
	h.entered.Add(1)
	n := h.running.Add(1)
	for {
		p := h.peak.Load()
		if n <= p || h.peak.CompareAndSwap(p, n) {
			break
		}
	}
	<-ctx.Done()
	h.running.Add(-1)
	return ctx.Err()
}

// TestRapidReset: 10,000 streams opened and canceled at once from 20
// goroutines. Handlers of canceled streams count against the concurrency
// limit until they return, so no more than 16 ever run.
func TestRapidReset(t *testing.T) {
	const limit, total, workers = 16, 10_000, 20
	h := &secCountingChat{}
	srv, u := secServer(t, h, server.WithMaxConcurrentStreams(limit))
	cli, ec := secClient(t, u)
	ctx := testCtx(t)
	var failed atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(map[string]int)
	var mu sync.Mutex
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= total {
				st, err := ec.Chat(ctx)
				if err != nil {
					failed.Add(1)
					mu.Lock()
					errs[tether.CodeOf(err).String()]++
					mu.Unlock()
					continue
				}
				st.Close()
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	secEventually(t, 5*time.Second, func() error {
		if n := h.running.Load(); n != 0 {
			return fmt.Errorf("%d handlers still running", n)
		}
		return nil
	})
	t.Logf("%d open+cancel pairs in %v: %d opens failed on the client %v, %d handlers ran (so about %d OPENs were refused by the server or lost), peak %d running, %d client connects (server accepted %d)",
		total, took.Round(time.Millisecond), failed.Load(), errs, h.entered.Load(), total-failed.Load()-h.entered.Load(), h.peak.Load(), cli.Stats().Connects, srv.Stats().ConnectionsAccepted)
	if p := h.peak.Load(); p > limit {
		t.Fatalf("%d handlers ran at once; the limit is %d", p, limit)
	}
	w := newSecWitness(t, u)
	w.check(t)
	_ = srv
}

// TestOverStreamLimitKeepsConnection: a well-behaved client that makes more
// concurrent calls than the server's MaxConcurrentStreams must keep its
// connection and the calls running on it. The Go client now queues calls
// beyond the limit the server announces, so all of them succeed; OPENs
// refused by the limit (from clients that cannot read the announcement, or
// after resets) are covered by TestRapidReset.
func TestOverStreamLimitKeepsConnection(t *testing.T) {
	var logs secLog
	_, u := secServer(t, nil, server.WithMaxConcurrentStreams(16), server.WithLogger(logs.logger()))
	cli, ec := secClient(t, u)
	ctx := testCtx(t)
	if _, err := ec.Say(ctx, &echov1.SayRequest{}); err != nil {
		t.Fatal(err)
	}
	codes := map[tether.Code]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := ec.Say(ctx, &echov1.SayRequest{SleepMillis: 200})
			mu.Lock()
			codes[tether.CodeOf(err)]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("100 calls against a limit of 16: %v", codes)
	if codes[tether.CodeOK] != 100 {
		t.Fatalf("only %d of 100 calls succeeded", codes[tether.CodeOK])
	}
	if n := cli.Stats().Connects; n != 1 {
		t.Fatalf("the server closed a well-behaved client's connection (%d connects; server log: %s): "+
			"each OPEN refused over MaxConcurrentStreams, and the WINDOW, MESSAGE and HALF_CLOSE that follow it, count "+
			"as idle frames (internal/mux/open.go handleOpen and reader.go handle), and the client retries refused unary calls "+
			"transparently up to 10 times within ~100ms, so ~84 calls over the limit pass the default 1,000 idle frames/s",
			n, strings.TrimSpace(secGrep(logs.String(), "flood")))
	}
}

// secSmallSendBufListener accepts connections with a 32 KiB socket send buffer.
type secSmallSendBufListener struct{ *net.TCPListener }

func (l secSmallSendBufListener) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	_ = c.SetWriteBuffer(32 << 10)
	return c, nil
}

// secGrep returns the lines of s that contain sub.
func secGrep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestSilentClientDropped: a client that completes the upgrade and then
// neither reads nor writes (a half-open peer) is dropped by the server's
// heartbeat after interval + timeout, without a close frame.
func TestSilentClientDropped(t *testing.T) {
	const interval, timeout = 100 * time.Millisecond, 200 * time.Millisecond
	srv, u := secServer(t, nil, server.WithHeartbeat(interval, timeout))
	w := newSecWitness(t, u) // answers the server's PINGs
	ws := secDial(t, u, nil)
	defer ws.Close()
	secEventually(t, 5*time.Second, secConnections(srv, 2)) // witness and ws
	start := time.Now()
	secEventually(t, 3*time.Second, secConnections(srv, 1))
	took := time.Since(start)
	t.Logf("silent client dropped after %v (heartbeat %v + %v)", took.Round(time.Millisecond), interval, timeout)
	if took < interval+timeout-50*time.Millisecond {
		t.Fatalf("dropped after %v, before interval+timeout", took)
	}
	// What the silent client finds when it finally reads: the server's
	// PINGs, then the end of the connection without a close frame.
	code, _, err := secAwaitClose(ws, 2*time.Second)
	if code != websocket.CloseAbnormalClosure && err == nil {
		t.Fatalf("silent client: close code %d; want none (1006)", code)
	}
	w.untouched(t)
}

// TestSendQueueOverflow: a client that provokes answers (PINGs, with the
// flood limits lifted) and does not read them fills the server's send queue;
// past WithMaxSendQueueBytes the server drops it, long before the write
// timeout.
func TestSendQueueOverflow(t *testing.T) {
	var logs secLog
	srv := server.New(server.WithFloodLimits(1e9, 1e9), server.WithMaxSendQueueBytes(512<<10), server.WithLogger(logs.logger()))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	// A small fixed send buffer on the server's sockets, so that the queue,
	// not the kernel, holds what the client does not read.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln = secSmallSendBufListener{ln.(*net.TCPListener)}
	hs := httptest.NewUnstartedServer(srv)
	hs.Listener.Close()
	hs.Listener = ln
	hs.Start()
	t.Cleanup(func() {
		_ = srv.Close()
		hs.Close()
	})
	u := "ws" + strings.TrimPrefix(hs.URL, "http")
	w := newSecWitness(t, u)
	ws := secDial(t, u, nil)
	defer ws.Close()
	secEventually(t, 5*time.Second, secConnections(srv, 2)) // witness and ws
	var burst []byte
	for i := range 50_000 { // 900 KB of PINGs, 900 KB of answers
		burst = append(burst, secPing(uint64(i), false)...)
	}
	start := time.Now()
	for range 40 {
		_ = ws.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if ws.WriteMessage(websocket.BinaryMessage, burst) != nil || srv.Stats().Connections == 1 {
			break
		}
	}
	secEventually(t, 5*time.Second, secConnections(srv, 1))
	t.Logf("non-reading client dropped after %v", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(logs.String(), "send queue over 524288 bytes") {
		t.Fatalf("the connection was not closed for its send queue; server log:\n%s", logs.String())
	}
	// The close frame (1008 "send queue overflow") rarely gets through a
	// socket the peer does not read; the peer mostly sees 1006.
	code, text, err := secAwaitClose(ws, 5*time.Second)
	t.Logf("the client sees: code %d %q %v", code, text, err)
	w.untouched(t)
}

// TestTinyMessageFlood: floods of WebSocket messages that carry no tether
// frame at all, empty binary messages and WebSocket pings, should be
// bounded like floods of idle frames (1008).
func TestTinyMessageFlood(t *testing.T) {
	_, u := secServer(t, nil)
	w := newSecWitness(t, u)
	for _, tc := range []struct {
		name string
		send func(ws *websocket.Conn) error
		why  string
	}{
		{"empty binary messages", func(ws *websocket.Conn) error { return ws.WriteMessage(websocket.BinaryMessage, nil) },
			"internal/mux/reader.go readLoop counts only tether frames against MaxIdleFrameRate; a message without frames costs nothing"},
		{"WebSocket pings", func(ws *websocket.Conn) error {
			return ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second))
		}, "mux.New sets no ping handler, so gorilla's default answers every WebSocket ping with a pong (one socket write each), outside MaxPingRate"},
		{"WINDOW frames of 1 byte on a live stream", func(ws *websocket.Conn) error {
			return ws.WriteMessage(websocket.BinaryMessage, secWindow(1, 1))
		}, "a non-zero WINDOW for a live stream is not an idle frame (internal/mux/reader.go handle counts only WINDOW 0); " +
			"a peer may send ~2^31 of them before the credit overflows"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := secDial(t, u, nil)
			defer ws.Close()
			secWrite(t, ws, secOpen(1, echov1.EchoServiceChatProcedure, nil, 0)) // a live stream
			// A reader takes the pongs and looks for the PING ACK or the close.
			type outcome struct {
				code int
				err  error
			}
			done := make(chan outcome, 1)
			go func() {
				_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
				for {
					_, msg, err := ws.ReadMessage()
					if err != nil {
						var ce *websocket.CloseError
						if errors.As(err, &ce) {
							done <- outcome{ce.Code, nil}
						} else {
							done <- outcome{0, err}
						}
						return
					}
					if string(msg) == string(secPing(9, true)) {
						done <- outcome{0, nil}
						return
					}
				}
			}()
			const n = 5000 // 2.5 times the default idle-frame burst
			sent := 0
			for ; sent < n; sent++ {
				_ = ws.SetWriteDeadline(time.Now().Add(2 * time.Second))
				if tc.send(ws) != nil {
					break
				}
			}
			_ = ws.WriteMessage(websocket.BinaryMessage, secPing(9, false))
			res := <-done
			switch {
			case res.code == websocket.ClosePolicyViolation:
				t.Logf("closed with 1008 after %d of %d", sent, n)
			case res.code == 0 && res.err == nil:
				t.Fatalf("%d %s in a burst were all accepted (the server answered a PING after them): %s", sent, tc.name, tc.why)
			default:
				t.Fatalf("after %d %s: close code %d, err %v", sent, tc.name, res.code, res.err)
			}
		})
	}
	w.untouched(t)
}

// TestIdempotencyKeyScope: the idempotency cache must not answer one
// principal's call with another principal's result when their keys collide
// (keys chosen by applications, such as order numbers, are guessable).
func TestIdempotencyKeyScope(t *testing.T) {
	auth := server.BearerToken(func(r *http.Request, tok string) (server.Identity, error) {
		return server.Identity{Principal: tok}, nil // the token names the principal
	})
	_, u := secServer(t, &secPrincipalEcho{}, server.WithAuthenticator(auth), server.WithInterceptors(idempotency.New()))
	ctx := testCtx(t)
	as := func(who string) echov1.EchoServiceClient {
		_, ec := secClient(t, u, client.WithHandshakeHeader(http.Header{"Authorization": {"Bearer " + who}}))
		return ec
	}
	alice, bob := as("alice"), as("bob")
	if res, err := alice.Say(ctx, &echov1.SayRequest{}, client.WithIdempotencyKey("order-1")); err != nil || res.GetText() != "alice" {
		t.Fatalf("alice: %v %v", res, err)
	}
	res, err := bob.Say(ctx, &echov1.SayRequest{}, client.WithIdempotencyKey("order-1"))
	if err != nil {
		t.Fatal(err)
	}
	if res.GetText() != "bob" {
		t.Fatalf("bob's call with alice's idempotency key got alice's cached response %q: server/idempotency keys its "+
			"cache on (procedure, key) only, not on the caller's principal", res.GetText())
	}
}
