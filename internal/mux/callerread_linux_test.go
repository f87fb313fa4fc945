package mux

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/gorilla/websocket"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/faultproxy"
)

// trackedDialer dials as package client dials ws://: TrackedReads under
// gorilla's smallest read buffer.
func trackedDialer() *websocket.Dialer {
	return &websocket.Dialer{
		ReadBufferSize: ReadBufferSize,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return TrackedReads(conn), nil
		},
	}
}

// trackedClient dials url as package client dials ws:// (TrackedReads under
// gorilla's smallest read buffer) and returns a client Conn made with ccfg
// (no heartbeats if it sets none), closed when the test ends.
func trackedClient(t *testing.T, url string, ccfg Config) *Conn {
	t.Helper()
	d := trackedDialer()
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

// stepAsideWarmUp makes calls one after another on cc until its reader has
// stepped aside into the shared poller (stepAside: two replies in a row,
// less than parkAfter apart, each leaving no stream), and fails the test if
// it never does.
func stepAsideWarmUp(t *testing.T, cc *Conn) {
	t.Helper()
	for range 100 {
		if cc.parkState.Load() == 1 {
			return
		}
		if _, err := unaryCall(context.Background(), cc, "warm-up"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the reader to step aside", func() bool { return cc.parkState.Load() == 1 })
}

// quietServer is a parkingServer whose connections send no heartbeat (an
// hour's interval) and run accept for each stream.
func quietServer(t *testing.T, accept func(*Stream, *tetherv1.Open)) (string, chan *Conn) {
	t.Helper()
	return parkingServer(t, Config{PingInterval: time.Hour, PingTimeout: time.Hour, Accept: accept})
}

// echoServer serves calls that answer their request (after delay, if any),
// without heartbeats, and returns its URL.
func echoServer(t *testing.T, delay func(body string) time.Duration) string {
	t.Helper()
	done := make(chan struct{})
	url, conns := quietServer(t, func(s *Stream, _ *tetherv1.Open) {
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

// slowEchoServer is echoServer whose calls of body "slow" wait d before
// they answer.
func slowEchoServer(t *testing.T, d time.Duration) string {
	return echoServer(t, func(body string) time.Duration {
		if body == "slow" {
			return d
		}
		return 0
	})
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
	url := slowEchoServer(t, 2*time.Second)
	cc := trackedClient(t, url, Config{PingInterval: 300 * time.Millisecond, PingTimeout: 300 * time.Millisecond})
	stepAsideWarmUp(t, cc)
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
	url := slowEchoServer(t, 3*time.Second)
	cc := trackedClient(t, url, Config{})
	stepAsideWarmUp(t, cc)
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

// proxiedClient connects a client with 200 ms heartbeats to an echoServer
// at url through a proxy that can stall the link, and makes calls until
// its reader has stepped aside.
func proxiedClient(t *testing.T) (cc *Conn, px *faultproxy.Proxy, url string) {
	t.Helper()
	url = echoServer(t, nil)
	px, err := faultproxy.New(strings.TrimPrefix(url, "ws://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	cc = trackedClient(t, "ws://"+px.Addr(), Config{PingInterval: 200 * time.Millisecond, PingTimeout: 200 * time.Millisecond})
	stepAsideWarmUp(t, cc)
	return cc, px, url
}

// TestCallerReadDeadline: a caller waiting for the socket meets the
// heartbeat's read deadline as the reader would: once the link goes silent
// (a proxy stalls it), the connection closes within the silence, and the
// call fails.
func TestCallerReadDeadline(t *testing.T) {
	needLending(t)
	cc, px, _ := proxiedClient(t)
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

// gorillaBuffered returns what gorilla/websocket's own read buffer holds
// (v1.5.3's unexported Conn.br, read by reflection: a test of the invariant
// TrackedReads exists for, against the pinned version).
func gorillaBuffered(ws *websocket.Conn) int {
	f := reflect.ValueOf(ws).Elem().FieldByName("br")
	return (*(**bufio.Reader)(unsafe.Pointer(f.UnsafeAddr()))).Buffered()
}

// rawUpgradeServer accepts one TCP connection on 127.0.0.1, reads the upgrade
// request and calls serve with the connection and the 101 response to send
// (serve sends it, with whatever follows, as it likes). The connection
// stays open until the test ends.
func rawUpgradeServer(t *testing.T, serve func(conn net.Conn, resp []byte)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		close(done)
		ln.Close()
	})
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		req, err := http.ReadRequest(bufio.NewReader(conn))
		if err != nil {
			return
		}
		sum := sha1.Sum([]byte(req.Header.Get("Sec-Websocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
			base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n"
		serve(conn, []byte(resp))
		<-done
	}()
	return "ws://" + ln.Addr().String()
}

// TestTrackedReadsLeaveGorillaEmpty: through TrackedReads, gorilla's own
// read buffer holds nothing once a message is read to its end, and the
// tracker stands at a frame's start, whatever the server's writes: the
// 101 and every frame in one write, or cut into small writes; control
// frames before and inside a message; each length encoding; a payload large
// enough for the direct read (Read with len(p) >= pooledReadSize).
func TestTrackedReadsLeaveGorillaEmpty(t *testing.T) {
	msgs := [][]byte{
		[]byte("hello"),
		append(bytes.Repeat([]byte{1}, 126), bytes.Repeat([]byte{2}, 300)...),
		bytes.Repeat([]byte{3}, 70000),
		bytes.Repeat([]byte{4}, 5000),
		{},
	}
	stream := slices.Concat(
		wsFrame(true, 2, msgs[0]),
		wsFrame(true, 9, []byte("ping")),
		wsFrame(false, 2, msgs[1][:126]),
		wsFrame(true, 10, nil),
		wsFrame(true, 0, msgs[1][126:]),
		wsFrame(true, 2, msgs[2]),
		wsFrame(true, 2, msgs[3]),
		wsFrame(true, 2, msgs[4]),
	)
	for _, chunk := range []int{0, 3, 1000} { // 0: everything in one write
		url := rawUpgradeServer(t, func(conn net.Conn, resp []byte) {
			b := slices.Concat(resp, stream)
			if chunk == 0 {
				_, _ = conn.Write(b)
				return
			}
			for len(b) > 0 {
				n := min(chunk, len(b))
				if _, err := conn.Write(b[:n]); err != nil {
					return
				}
				b = b[n:]
			}
		})
		d := trackedDialer()
		ws, _, err := d.Dial(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		pc := ws.NetConn().(*pooledConn)
		for i, want := range msgs {
			_, r, err := ws.NextReader()
			if err != nil {
				t.Fatalf("writes of %d: message %d: %v", chunk, i, err)
			}
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("writes of %d: message %d: %d bytes, %v", chunk, i, len(got), err)
			}
			if n := gorillaBuffered(ws); n != 0 {
				t.Fatalf("writes of %d: after message %d gorilla's buffer holds %d bytes", chunk, i, n)
			}
			if !pc.track.atFrameStart() {
				t.Fatalf("writes of %d: after message %d the tracker is not at a frame's start (state %d)", chunk, i, pc.track.state)
			}
		}
		if !pc.quiet() {
			t.Fatalf("writes of %d: everything read, and the connection is not quiet", chunk)
		}
		ws.Close()
	}
}

// callResult is what a unary call run on its own goroutine returned, and when.
type callResult struct {
	reply string
	err   error
	at    time.Time
}

func callAsync(ctx context.Context, cc *Conn, body string) chan callResult {
	res := make(chan callResult, 1)
	go func() {
		reply, err := unaryCall(ctx, cc, body)
		res <- callResult{reply, err, time.Now()}
	}()
	return res
}

// callerArmed reports whether a caller reads cc (readFor, between its arming
// and its disarm).
func callerArmed(cc *Conn) bool {
	cc.cutMu.Lock()
	defer cc.cutMu.Unlock()
	return cc.cutArmed
}

// TestCallerCanceledWithoutHeartbeat: with no heartbeat to wake it (an
// hour's interval), a caller waiting for the socket returns at once when its
// context ends (the context.AfterFunc cut; in TestCallerReadCanceled the
// answers to the client's PINGs would wake it within its bound anyway).
func TestCallerCanceledWithoutHeartbeat(t *testing.T) {
	needLending(t)
	url := slowEchoServer(t, 3*time.Second)
	cc := trackedClient(t, url, Config{}) // PingInterval: an hour
	stepAsideWarmUp(t, cc)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := callAsync(ctx, cc, "slow")
	waitFor(t, 5*time.Second, "the caller to read the connection", func() bool { return callerArmed(cc) })
	time.Sleep(20 * time.Millisecond) // in its wait for the socket
	t0 := time.Now()
	cancel()
	r := <-res
	if d := r.at.Sub(t0); !errors.Is(r.err, ErrWaitCanceled) || d > 500*time.Millisecond {
		t.Fatalf("canceled call: %q, %v after %v; want ErrWaitCanceled at once", r.reply, r.err, d)
	}
	if got, err := unaryCall(context.Background(), cc, "next"); err != nil || got != "next" {
		t.Fatalf("call after the cancel: %q, %v", got, err)
	}
}

// TestCallerCutByCloseWithoutEcho: a caller waiting for the socket
// returns at once when the connection closes, even when the peer sends
// nothing more (stalled): closeWith cuts its wait (in
// TestCallerReadConnectionCloses the peer's echo of the close frame would
// wake it anyway).
func TestCallerCutByCloseWithoutEcho(t *testing.T) {
	needLending(t)
	url := slowEchoServer(t, 3*time.Second)
	px, err := faultproxy.New(strings.TrimPrefix(url, "ws://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	cc := trackedClient(t, "ws://"+px.Addr(), Config{})
	stepAsideWarmUp(t, cc)
	res := callAsync(context.Background(), cc, "slow")
	waitFor(t, 5*time.Second, "the caller to read the connection", func() bool { return callerArmed(cc) })
	px.Stall() // no close frame comes back to wake the caller
	t0 := time.Now()
	cc.closeWith(errors.New("closed by the test"), websocket.CloseGoingAway, "")
	r := <-res
	if d := r.at.Sub(t0); r.err == nil || d > 500*time.Millisecond {
		t.Fatalf("call on a closed connection: %q, %v after %v; want an error at once (not at closeLinger)", r.reply, r.err, d)
	}
}

// writeBetweenBatches writes b on sc's socket between the frames its writer writes.
func writeBetweenBatches(t *testing.T, sc *Conn, b []byte) {
	t.Helper()
	for {
		sc.wmu.Lock()
		if !sc.wbusy {
			_, err := sc.ws.NetConn().Write(b)
			sc.wmu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			return
		}
		sc.wmu.Unlock()
		time.Sleep(time.Millisecond)
	}
}

// TestStaleCutKeepsCallerCancelable: the context.AfterFunc of an earlier
// call, started when that call's context ended and run only after its
// disarm, finds the next caller armed and cuts it while the next caller is
// handling a message (here, deterministically, from the pong handler,
// inside readOne). touch then moves the deadline back and ctx.Err() and
// isClosed() say nothing; when the cut also disarmed, the next caller's own
// context could no longer cut its wait (found by review). The caller must
// stop reading after such a cut (wasCut), and its cancel must still work.
func TestStaleCutKeepsCallerCancelable(t *testing.T) {
	needLending(t)
	release := make(chan struct{})
	var once sync.Once
	rel := func() { once.Do(func() { close(release) }) }
	got := make(chan struct{}, 1)
	url, conns := quietServer(t, func(s *Stream, _ *tetherv1.Open) {
		msg, err := s.RecvMsg()
		if err != nil {
			return
		}
		if string(msg) == "slow" {
			got <- struct{}{}
			<-release
		}
		_ = s.FinishWith(nil, msg, nil, nil)
	})
	cc := trackedClient(t, url, Config{})
	sc := <-conns
	t.Cleanup(func() {
		sc.Close()
		<-sc.Done()
	})
	t.Cleanup(rel) // runs first
	stepAsideWarmUp(t, cc)
	// The stale cut: cutCaller, as the late AfterFunc runs it, from inside
	// the next caller's readOne (gorilla's pong handler).
	cc.ws.SetPongHandler(func(string) error { cc.cutCaller(); return nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := callAsync(ctx, cc, "slow")
	<-got
	waitFor(t, 5*time.Second, "the caller to read the connection", func() bool { return callerArmed(cc) })
	reads := cc.ownReads.Load()
	// A pong and an empty binary message in one write: a whole message
	// for the caller (messageEnd), the pong handled inside its readOne.
	writeBetweenBatches(t, sc, slices.Concat(wsFrame(true, 10, nil), wsFrame(true, 2, nil)))
	waitFor(t, 5*time.Second, "the caller to read the message", func() bool { return cc.ownReads.Load() > reads })
	time.Sleep(20 * time.Millisecond) // back in its wait for the socket
	t0 := time.Now()
	cancel()
	select {
	case r := <-res:
		if d := r.at.Sub(t0); !errors.Is(r.err, ErrWaitCanceled) || d > 500*time.Millisecond {
			t.Fatalf("canceled call: %q, %v after %v", r.reply, r.err, d)
		}
	case <-time.After(2 * time.Second):
		rel()
		r := <-res
		t.Fatalf("after a stale cut the caller ignored its own context for 2 s; it returned only once the reply came: %q, %v", r.reply, r.err)
	}
}

// TestCanceledCallsDoNotRenewDeadline: once the peer goes silent (a stalled
// proxy: no FIN, no RST), the connection closes within about the
// heartbeat's silence (PingInterval + PingTimeout = 400 ms here) although the
// application keeps making calls that time out. A canceled caller's
// handBack that starts a reader goroutine (readOn) must not let it renew the
// read deadline with nothing received: when clients parked after quiet
// spells, each later call took the socket again and the deadline never came
// (found by review); now it would be one renewal.
//
// alone: handBack starts a reader goroutine after every cut (a stream is
// left: the caller's own). beside_a_busy_one: also once another client
// connection lent after this one's last message (mayLend).
func TestCanceledCallsDoNotRenewDeadline(t *testing.T) {
	for _, busy := range []bool{false, true} {
		name := "alone"
		if busy {
			name = "beside_a_busy_one"
		}
		t.Run(name, func(t *testing.T) {
			needLending(t)
			cc, px, url := proxiedClient(t)
			if busy {
				other := trackedClient(t, url, Config{})
				stop := make(chan struct{})
				var wg sync.WaitGroup
				t.Cleanup(func() { close(stop); wg.Wait() })
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
						if _, err := unaryCall(context.Background(), other, "busy"); err != nil {
							return
						}
					}
				})
			}
			px.Stall()
			t0 := time.Now()
			calls := 0
			for time.Since(t0) < 3*time.Second {
				select {
				case <-cc.Done():
					if d := time.Since(t0); d > 1500*time.Millisecond {
						t.Fatalf("closed %v after the peer went silent (silence 400 ms), after %d canceled calls", d, calls)
					}
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				_, _ = unaryCall(ctx, cc, "into the void")
				cancel()
				calls++
				time.Sleep(50 * time.Millisecond)
			}
			t.Fatalf("the peer has been silent for %v (silence 400 ms) and the connection is still open: %d canceled calls renewed its read deadline", time.Since(t0), calls)
		})
	}
}

// TestTrackedReadsBareLineFeeds: a server whose handshake response ends its
// lines with bare line feeds (Go's HTTP reader accepts them; the tracker
// looks for CRLFCRLF) leaves the tracker lost in the response: the
// connection must then not park (parker stops the tracking), and its
// messages are read as before.
func TestTrackedReadsBareLineFeeds(t *testing.T) {
	url := rawUpgradeServer(t, func(conn net.Conn, resp []byte) {
		resp = bytes.ReplaceAll(resp, []byte("\r\n"), []byte("\n"))
		_, _ = conn.Write(slices.Concat(resp, wsFrame(true, 2, []byte("a\r\n\r\nb")), wsFrame(true, 2, []byte("c"))))
	})
	d := trackedDialer()
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if parker(ws.NetConn()) != nil {
		t.Fatal("a connection whose tracker is lost in the handshake can park")
	}
	for _, want := range []string{"a\r\n\r\nb", "c"} {
		if _, m, err := ws.ReadMessage(); err != nil || string(m) != want {
			t.Fatalf("read %q, %v; want %q", m, err, want)
		}
	}
}

// TestSpacedCallsDoNotTakeTheSocket: once calls are made now and then (30 ms
// apart, past parkAfter), their callers stop taking the socket: a reply that
// came after a quiet spell is not handed back to the poller, and a reader
// goroutine reads the next one (found by review: handBack lacked stepAside's
// quiet-spell gate, so one burst of calls made every later call pay for the
// take and the hand-back).
func TestSpacedCallsDoNotTakeTheSocket(t *testing.T) {
	needLending(t)
	cc := trackedClient(t, echoServer(t, nil), Config{})
	stepAsideWarmUp(t, cc)
	before := cc.ownReads.Load()
	const n = 20
	for range n {
		time.Sleep(30 * time.Millisecond)
		if _, err := unaryCall(context.Background(), cc, "spaced"); err != nil {
			t.Fatal(err)
		}
	}
	if reads := cc.ownReads.Load() - before; reads > 2 {
		t.Errorf("callers took the socket for %d of %d calls made 30 ms apart", reads, n)
	}
}
