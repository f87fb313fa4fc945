package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// blockingEcho's Say with text "block" tells started and waits for
// release or the end of its context; other calls are echo's.
type blockingEcho struct {
	echo.Handler
	started, release chan struct{}
}

func newBlockingEcho() *blockingEcho {
	return &blockingEcho{started: make(chan struct{}, 16), release: make(chan struct{})}
}

func (h *blockingEcho) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	if req.GetText() != "block" {
		return h.Handler.Say(ctx, req)
	}
	h.started <- struct{}{}
	select {
	case <-h.release:
		return &echov1.SayResponse{Text: "released"}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// served is a Server running Serve on 127.0.0.1.
type served struct {
	srv    *server.Server
	addr   string
	cancel context.CancelFunc
	done   chan error // Serve's result
}

func serve(t *testing.T, h echov1.EchoServiceHandler, opts ...server.ServeOption) *served {
	t.Helper()
	srv := server.New()
	echov1.RegisterEchoServiceHandler(srv, h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{srv: srv, addr: ln.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(ctx, ln, opts...) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(60 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return s
}

// stop cancels Serve's context and returns its result.
func (s *served) stop(t *testing.T) error {
	t.Helper()
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err // for Cleanup
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("Serve did not return after its context ended")
		return nil
	}
}

func newEchoClient(t *testing.T, url string, opts ...client.Option) echov1.EchoServiceClient {
	t.Helper()
	c, err := client.New(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return echov1.NewEchoServiceClient(c)
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// closedWithin reports how long the server took to close conn, or fails
// the test if it does not within limit. Anything the server sends is read
// and dropped.
func closedWithin(t *testing.T, conn net.Conn, start time.Time, limit time.Duration) time.Duration {
	t.Helper()
	_ = conn.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", limit)
	}
	return time.Since(start)
}

// Issue 16 part 3: Serve's http.Server bounds the upgrade request. A peer
// that trickles its request one byte at a time, and one that sends
// nothing, are disconnected once ReadHeaderTimeout has passed (300 ms here;
// the test allows 10 s). http.ListenAndServe, which the README used to
// show, kept reading such a request for as long as the peer liked.
// Both of Serve's paths: its own upgrade-only listener and an http.Server.
func TestServeCutsSlowHandshakes(t *testing.T) {
	const timeout = 300 * time.Millisecond
	t.Run("upgrade-only", func(t *testing.T) {
		testServeCutsSlowHandshakes(t, serve(t, &echo.Handler{}, server.WithReadHeaderTimeout(timeout)))
	})
	t.Run("http.Server", func(t *testing.T) {
		testServeCutsSlowHandshakes(t, serve(t, &echo.Handler{}, server.WithHTTPServer(func(hs *http.Server) { hs.ReadHeaderTimeout = timeout })))
	})
}

func testServeCutsSlowHandshakes(t *testing.T, s *served) {
	const limit = 10 * time.Second

	t.Run("trickle", func(t *testing.T) {
		conn, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		stop := make(chan struct{})
		trickled := make(chan int)
		go func() {
			// An upgrade request whose headers never end.
			req := "GET / HTTP/1.1\r\nHost: " + s.addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
				"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
				"Sec-WebSocket-Protocol: " + tether.Subprotocol + "\r\nX-Pad: " + strings.Repeat("a", 1<<20)
			n := 0
			defer func() { trickled <- n }()
			for ; n < len(req); n++ {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if _, err := conn.Write([]byte{req[n]}); err != nil {
					return
				}
			}
		}()
		took := closedWithin(t, conn, start, limit)
		close(stop)
		n := <-trickled
		t.Logf("trickling peer disconnected after %v and %d bytes", took.Round(time.Millisecond), n)
	})
	t.Run("silent", func(t *testing.T) {
		conn, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		took := closedWithin(t, conn, time.Now(), limit)
		t.Logf("silent peer disconnected after %v", took.Round(time.Millisecond))
	})

	// The server still serves.
	cli := newEchoClient(t, "ws://"+s.addr)
	if _, err := cli.Say(testContext(t), &echov1.SayRequest{Text: "hi"}); err != nil {
		t.Fatal(err)
	}
	if err := s.stop(t); err != nil {
		t.Fatalf("Serve = %v after a clean drain", err)
	}
}

// The http.Server's read, write and idle timeouts apply to plain HTTP
// requests, not to upgraded WebSocket connections: a connection outlives
// them all, and its calls go on.
func TestServeWebSocketOutlivesHTTPTimeouts(t *testing.T) {
	const timeout = 200 * time.Millisecond
	s := serve(t, &echo.Handler{}, server.WithHTTPServer(func(hs *http.Server) {
		hs.ReadHeaderTimeout, hs.ReadTimeout, hs.WriteTimeout, hs.IdleTimeout = timeout, timeout, timeout, timeout
	}))
	cli := newEchoClient(t, "ws://"+s.addr)
	ctx := testContext(t)
	for range 3 {
		if _, err := cli.Say(ctx, &echov1.SayRequest{Text: "hi"}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * timeout)
	}
	if n := s.srv.Stats().ConnectionsAccepted; n != 1 {
		t.Fatalf("%d connections accepted, want 1: the connection was cut", n)
	}
	// A plain HTTP request gets tether's answer.
	res, err := http.Get("http://" + s.addr)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUpgradeRequired {
		t.Fatalf("plain GET: %s, want 426", res.Status)
	}
}

// When Serve's context ends, a call in flight runs to completion; then
// Serve returns nil.
func TestServeDrainsOnCancel(t *testing.T) {
	h := newBlockingEcho()
	s := serve(t, h)
	cli := newEchoClient(t, "ws://"+s.addr)
	ctx := testContext(t)
	result := make(chan error, 1)
	go func() {
		res, err := cli.Say(ctx, &echov1.SayRequest{Text: "block"})
		if err == nil && res.GetText() != "released" {
			err = errors.New("answer " + res.GetText())
		}
		result <- err
	}()
	<-h.started
	s.cancel()
	select {
	case err := <-s.done:
		t.Fatalf("Serve returned %v while a call was running", err)
	case <-time.After(200 * time.Millisecond):
	}
	// New connections are refused while the server drains.
	if _, err := net.DialTimeout("tcp", s.addr, 5*time.Second); err == nil {
		res, err := http.Get("http://" + s.addr)
		if err == nil {
			res.Body.Close()
			if res.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("request while draining: %s", res.Status)
			}
		}
	}
	close(h.release)
	if err := <-result; err != nil {
		t.Fatalf("call in flight during the drain: %v", err)
	}
	if err := s.stop(t); err != nil {
		t.Fatalf("Serve = %v, want nil after a clean drain", err)
	}
}

// A call that outlasts the shutdown grace is ended, and Serve says so.
func TestServeGraceExpires(t *testing.T) {
	h := newBlockingEcho()
	s := serve(t, h, server.WithShutdownGrace(300*time.Millisecond))
	cli := newEchoClient(t, "ws://"+s.addr)
	result := make(chan error, 1)
	go func() {
		_, err := cli.Say(testContext(t), &echov1.SayRequest{Text: "block"}, client.FailFast())
		result <- err
	}()
	<-h.started
	if err := s.stop(t); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Serve = %v, want an error matching context.DeadlineExceeded", err)
	}
	select {
	case err := <-result:
		if err == nil {
			t.Fatal("the call outlasting the grace succeeded")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the call outlasting the grace did not end")
	}
}

func TestServeTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	s := serve(t, &echo.Handler{}, server.WithServeTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
	cli := newEchoClient(t, "wss://"+s.addr, client.WithTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	res, err := cli.Say(testContext(t), &echov1.SayRequest{Text: "over TLS"})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetText() != "over TLS" {
		t.Fatalf("answer %q", res.GetText())
	}
	if err := s.stop(t); err != nil {
		t.Fatalf("Serve = %v", err)
	}
}

func TestListenAndServe(t *testing.T) {
	srv := server.New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := srv.ListenAndServe(ctx, "127.0.0.1:-1"); err == nil {
		t.Fatal("ListenAndServe on a bad address returned nil")
	}
	done := make(chan error, 1)
	go func() { done <- srv.ListenAndServe(ctx, "127.0.0.1:0") }()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("ListenAndServe = %v after its context ended", err)
	}
}

// selfSigned returns a certificate for 127.0.0.1 and a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
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

// A TLS configuration without a certificate fails Serve at once, after
// draining, and closes the listener.
func TestServeTLSWithoutCertificate(t *testing.T) {
	srv := server.New()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Serve(context.Background(), ln, server.WithServeTLS(&tls.Config{MinVersion: tls.VersionTLS12}))
	if err == nil {
		t.Fatal("Serve without a certificate returned nil")
	}
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(time.Second))
	if _, aerr := ln.Accept(); !errors.Is(aerr, net.ErrClosed) {
		t.Fatalf("Accept after Serve: %v; want net.ErrClosed", aerr)
	}
}
