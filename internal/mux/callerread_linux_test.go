package mux

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/faultproxy"
)

// trackedClient dials url as package client dials ws:// (TrackedReads under
// gorilla's smallest read buffer) and returns a client Conn made with ccfg
// (no heartbeats if it sets none), closed when the test ends.
func trackedClient(t *testing.T, url string, ccfg Config) *Conn {
	t.Helper()
	d := websocket.Dialer{
		ReadBufferSize: ReadBufferSize,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return TrackedReads(conn), nil
		},
	}
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ccfg.PingInterval == 0 {
		ccfg.PingInterval, ccfg.PingTimeout = time.Hour, time.Hour
	}
	cc := New(ws, RoleClient, ccfg)
	t.Cleanup(func() {
		cc.Close()
		<-cc.Done()
	})
	return cc
}

// echoServer serves calls that answer their request (after delay, if any),
// without heartbeats, and returns its URL.
func echoServer(t *testing.T, delay func(body string) time.Duration) string {
	t.Helper()
	done := make(chan struct{})
	url, conns := parkingServer(t, Config{
		PingInterval: time.Hour,
		PingTimeout:  time.Hour,
		Accept: func(s *Stream, _ *tetherv1.Open) {
			msg, err := s.RecvMsg()
			if err != nil {
				return
			}
			if delay != nil {
				select {
				case <-time.After(delay(string(msg))):
				case <-done: // the test is over
				}
			}
			_ = s.FinishWith(nil, msg, nil, nil)
		},
	})
	go func() {
		for {
			select {
			case <-conns: // each closes with its client
			case <-done:
				return
			}
		}
	}()
	t.Cleanup(func() { close(done) })
	return url
}

// unaryCall makes a unary call of body on cc as package client does
// (RecvReply for the reply and the end) and returns the reply.
func unaryCall(ctx context.Context, cc *Conn, body string) (string, error) {
	s, sent, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte(body), true)
	if err != nil {
		return "", err
	}
	defer s.Reset(context.Canceled)
	if !sent { // too large for the OPEN's message
		if err := s.SendMsg(ctx, []byte(body)); err != nil {
			return "", err
		}
		if err := s.CloseSend(ctx); err != nil {
			return "", err
		}
	}
	m, err := s.RecvReply(ctx)
	if err != nil {
		return "", err
	}
	reply := string(m)
	if _, err := s.RecvReply(ctx); !errors.Is(err, io.EOF) {
		return reply, err
	}
	return reply, nil
}

// TestCallerReadsOwnReply (issue 15): a client connection with no stream has
// no reader goroutine (its reader steps aside into the shared poller), and a
// unary caller reads its own reply instead of being woken by one.
func TestCallerReadsOwnReply(t *testing.T) {
	needLending(t)
	cc := trackedClient(t, echoServer(t, nil), Config{})
	ctx := context.Background()
	for i := range 50 {
		body := strings.Repeat("x", 1+i*7)
		if got, err := unaryCall(ctx, cc, body); err != nil || got != body {
			t.Fatalf("call %d: %q, %v", i, got, err)
		}
	}
	// Most, but not every one on a loaded machine: a reply may come
	// before its caller looks, and the poller's reader takes it.
	if n := cc.ownReads.Load(); n < 10 {
		t.Fatalf("callers read %d of the 50 replies themselves, want most", n)
	}
	waitFor(t, 5*time.Second, "the reader to step aside", func() bool { return cc.parkState.Load() == 1 })
}

// TestCallerReadsManyConnections: calls on several connections at once, where
// a reader that steps aside may queue a caller's reply just before the caller
// takes the socket, never wait for more bytes (found by benchcmp: a call
// waited for the next heartbeat). Each call's reply must come well within a
// second.
func TestCallerReadsManyConnections(t *testing.T) {
	needLending(t)
	url := echoServer(t, nil)
	const conns, calls = 4, 2000
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		cc := trackedClient(t, url, Config{})
		wg.Go(func() {
			for j := range calls {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				t0 := time.Now()
				body := string(rune('a'+i)) + strings.Repeat("y", j%40)
				got, err := unaryCall(ctx, cc, body)
				cancel()
				if err != nil || got != body {
					errs <- err
					return
				}
				if d := time.Since(t0); d > 2*time.Second {
					errs <- errors.New("a call waited " + d.String() + " for a reply already there")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestCallerReadCanceled: a caller waiting for the socket (the server holds
// the reply) returns at once when its context ends, and the connection reads
// on: the next call is answered, and the read deadline is the heartbeat's
// again, not the past the cut left.
func TestCallerReadCanceled(t *testing.T) {
	needLending(t)
	url := echoServer(t, func(body string) time.Duration {
		if body == "slow" {
			return 2 * time.Second
		}
		return 0
	})
	cc := trackedClient(t, url, Config{PingInterval: 300 * time.Millisecond, PingTimeout: 300 * time.Millisecond})
	if _, err := unaryCall(context.Background(), cc, "warm-up"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the reader to step aside", func() bool { return cc.parkState.Load() == 1 })
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		t0 := time.Now()
		_, err := unaryCall(ctx, cc, "slow")
		if !errors.Is(err, ErrWaitCanceled) {
			t.Fatalf("canceled call: %v", err)
		}
		if d := time.Since(t0); d > time.Second {
			t.Fatalf("canceled call returned after %v", d)
		}
		if got, err := unaryCall(context.Background(), cc, "next"); err != nil || got != "next" {
			t.Fatalf("call after the cancel: %q, %v", got, err)
		}
	}
	// The slow replies come and go; the connection stays up past several
	// heartbeat silences (the client's PINGs keep it alive, and no passed
	// deadline was left on the socket).
	time.Sleep(2500 * time.Millisecond)
	if cc.isClosed() {
		t.Fatalf("connection closed: %v", cc.err)
	}
	if got, err := unaryCall(context.Background(), cc, "last"); err != nil || got != "last" {
		t.Fatalf("last call: %q, %v", got, err)
	}
}

// TestCallerReadConnectionCloses: a caller waiting for the socket returns
// with the connection's error as soon as the connection closes, not when the
// peer's close frame or the linger's deadline ends the drain.
func TestCallerReadConnectionCloses(t *testing.T) {
	needLending(t)
	url := echoServer(t, func(body string) time.Duration {
		if body == "slow" {
			return 3 * time.Second
		}
		return 0
	})
	cc := trackedClient(t, url, Config{})
	if _, err := unaryCall(context.Background(), cc, "warm-up"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the reader to step aside", func() bool { return cc.parkState.Load() == 1 })
	reads := cc.ownReads.Load()
	time.AfterFunc(100*time.Millisecond, func() { cc.closeWith(errors.New("closed by the test"), websocket.CloseGoingAway, "") })
	t0 := time.Now()
	_, err := unaryCall(context.Background(), cc, "slow")
	if err == nil {
		t.Fatal("call succeeded on a closed connection")
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("call returned %v after the close", d)
	}
	if cc.ownReads.Load() != reads {
		t.Fatal("the caller read a message after the close")
	}
}

// TestCallerReadDeadline: a caller waiting for the socket meets the
// heartbeat's read deadline as the reader would: once the link goes silent
// (a proxy stalls it), the connection closes within the silence, and the
// call fails.
func TestCallerReadDeadline(t *testing.T) {
	needLending(t)
	url := echoServer(t, nil)
	px, err := faultproxy.New(strings.TrimPrefix(url, "ws://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	cc := trackedClient(t, "ws://"+px.Addr(), Config{PingInterval: 200 * time.Millisecond, PingTimeout: 200 * time.Millisecond})
	if _, err := unaryCall(context.Background(), cc, "warm-up"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the reader to step aside", func() bool { return cc.parkState.Load() == 1 })
	px.Stall()
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := unaryCall(ctx, cc, "stalled"); err == nil {
		t.Fatal("stalled call succeeded")
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Fatalf("stalled call failed after %v, want about the heartbeat's silence (400 ms)", d)
	}
	if !cc.isClosed() {
		t.Fatal("connection still open after the silence")
	}
}

// TestCallerReadLargeReply: a reply too large to arrive whole in the
// caller's buffer goes to a reader goroutine, which reads it as it comes;
// the caller gets it whole, and the next small call is read by its caller
// again.
func TestCallerReadLargeReply(t *testing.T) {
	needLending(t)
	cc := trackedClient(t, echoServer(t, nil), Config{})
	for i, n := range []int{10, 5000, 70 << 10, 10, 300 << 10, 10} {
		body := strings.Repeat(string(rune('a'+i)), n)
		got, err := unaryCall(context.Background(), cc, body)
		if err != nil || got != body {
			t.Fatalf("call of %d bytes: %d bytes, %v", n, len(got), err)
		}
	}
	// The small calls' callers read again (most of them: on a loaded
	// machine a reply may come before its caller looks, and the poller's
	// reader takes it).
	reads := cc.ownReads.Load()
	for range 20 {
		if _, err := unaryCall(context.Background(), cc, "small"); err != nil {
			t.Fatal(err)
		}
	}
	if cc.ownReads.Load() == reads {
		t.Fatal("none of the small calls after large ones was read by its caller")
	}
}
