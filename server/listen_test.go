package server_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// upgradeRequest is a WebSocket upgrade request offering tether.v1, with
// extra header lines.
func upgradeRequest(addr, extra string) string {
	return "GET /tether HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"Sec-WebSocket-Protocol: " + tether.Subprotocol + "\r\n" + extra + "\r\n"
}

// sendRaw dials addr, writes req and gives the reads 10 s; the connection
// is closed when the test ends.
func sendRaw(t *testing.T, addr, req string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	return conn
}

// rawExchange sends req on a new connection to addr and returns the
// response, after checking that the server closes the connection once it
// has answered (within 10 s; the upgrade-only listener keeps no HTTP
// connection alive).
func rawExchange(t *testing.T, addr, req string) *http.Response {
	t.Helper()
	conn := sendRaw(t, addr, req)
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	res.Body = io.NopCloser(strings.NewReader(string(body)))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the answer: %v, want EOF (the server closes the connection)", err)
	}
	return res
}

func readBody(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Serve without an HTTP handler answers what is not a tether upgrade as
// ServeHTTP does, then closes the connection: 426 to a plain request, 400
// to a malformed one and to a client that does not offer tether.v1, 431 to
// headers over DefaultMaxRequestHeaderBytes, 401 from the authenticator.
// An upgrade still works on the same server.
func TestServeUpgradeOnlyAnswers(t *testing.T) {
	srv := server.New(server.WithAuthenticator(func(r *http.Request) (server.Identity, error) {
		if r.Header.Get("Authorization") == "panic" {
			panic("authenticator bug")
		}
		if r.Header.Get("Authorization") == "no" {
			return server.Identity{}, tether.Errorf(tether.CodeUnauthenticated, "bad token")
		}
		return server.Identity{Principal: "p"}, nil
	}))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	}()

	res := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: "+addr+"\r\n\r\n")
	if res.StatusCode != http.StatusUpgradeRequired || res.Header.Get("Upgrade") != "websocket" || !strings.Contains(readBody(t, res), tether.Subprotocol) {
		t.Errorf("plain GET: %s, Upgrade %q", res.Status, res.Header.Get("Upgrade"))
	}
	if !res.Close {
		t.Error("plain GET: no Connection: close")
	}
	if res := rawExchange(t, addr, "NOT HTTP\r\n\r\n"); res.StatusCode != http.StatusBadRequest {
		t.Errorf("malformed request: %s, want 400", res.Status)
	}
	noProto := strings.Replace(upgradeRequest(addr, ""), "Sec-WebSocket-Protocol: "+tether.Subprotocol, "Sec-WebSocket-Protocol: other", 1)
	if res := rawExchange(t, addr, noProto); res.StatusCode != http.StatusBadRequest {
		t.Errorf("no tether.v1: %s, want 400", res.Status)
	}
	if res := rawExchange(t, addr, upgradeRequest(addr, "Authorization: no\r\n")); res.StatusCode != http.StatusUnauthorized || !strings.Contains(readBody(t, res), "bad token") {
		t.Errorf("refused credentials: %s, want 401", res.Status)
	}
	big := upgradeRequest(addr, "X-Pad: "+strings.Repeat("a", server.DefaultMaxRequestHeaderBytes+8192)+"\r\n")
	if res := rawExchange(t, addr, big); res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversized header: %s, want 431", res.Status)
	}

	// A client that sends bytes before the 101 is refused (RFC 6455
	// section 4.1), and a panic in the authenticator ends only its
	// connection (as net/http recovers it): either closes the connection
	// without an answer.
	for what, req := range map[string]string{
		"bytes before the 101": upgradeRequest(addr, "") + "early",
		"authenticator panic":  upgradeRequest(addr, "Authorization: panic\r\n"),
	} {
		conn := sendRaw(t, addr, req)
		if b, err := io.ReadAll(conn); err != nil || len(b) != 0 {
			t.Errorf("%s: read %q, %v; want the connection closed", what, b, err)
		}
	}

	cli := newEchoClient(t, "ws://"+addr)
	if _, err := cli.Say(testContext(t), &echov1.SayRequest{Text: "hi"}); err != nil {
		t.Fatal(err)
	}
	st := srv.Stats()
	if st.ConnectionsAccepted != 1 {
		t.Errorf("%d connections accepted, want 1", st.ConnectionsAccepted)
	}
}

// When Serve's context ends, the upgrade-only listener closes its listener
// and the connections still sending their request (none admitted yet):
// Serve does not wait for their read-header timeout.
func TestServeUpgradeOnlyShutdownWhileAccepting(t *testing.T) {
	s := serve(t, &echo.Handler{})
	cli := newEchoClient(t, "ws://"+s.addr)
	if _, err := cli.Say(testContext(t), &echov1.SayRequest{Text: "hi"}); err != nil {
		t.Fatal(err)
	}
	// Half a request, and nothing at all: both are reading.
	half, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	if _, err := io.WriteString(half, "GET / HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	silent, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// Wait until the server has accepted both (an answered request on a
	// third connection comes after them in the accept queue).
	if res := rawExchange(t, s.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); res.StatusCode != http.StatusUpgradeRequired {
		t.Fatalf("plain GET: %s", res.Status)
	}
	start := time.Now()
	if err := s.stop(t); err != nil {
		t.Fatalf("Serve = %v", err)
	}
	if took := time.Since(start); took >= server.DefaultReadHeaderTimeout {
		t.Errorf("Serve took %v to return: it waited for the requests", took)
	}
	for _, c := range []net.Conn{half, silent} {
		closedWithin(t, c, time.Now(), 10*time.Second)
	}
	if c, err := net.Dial("tcp", s.addr); err == nil {
		c.Close()
		t.Error("the listener still accepts after Serve returned")
	}
}
