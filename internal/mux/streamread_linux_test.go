package mux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// streamEchoServer serves streams that answer each message with itself,
// except "hold", after which the stream answers nothing more until the test
// ends, and returns its URL.
func streamEchoServer(t *testing.T) string {
	t.Helper()
	url, _ := streamEchoServerConns(t, nil)
	return url
}

// streamEchoServerConns is streamEchoServer that also hands each server
// connection to conns (if not nil), and each stream its handler runs to
// streams (if not nil), as they come.
func streamEchoServerConns(t *testing.T, streams chan<- *Stream) (string, <-chan *Conn) {
	t.Helper()
	done := make(chan struct{})
	url, conns := quietServer(t, func(s *Stream, _ *tetherv1.Open) {
		if streams != nil {
			streams <- s
		}
		for {
			msg, err := s.RecvMsg()
			if errors.Is(err, io.EOF) {
				_ = s.FinishWith(nil, nil, nil, nil)
				return
			}
			if err != nil {
				return
			}
			if string(msg) == "hold" {
				<-done
				return
			}
			if err := s.SendMsg(context.Background(), msg); err != nil {
				return
			}
		}
	})
	out := make(chan *Conn, 16)
	go func() {
		for {
			select {
			case c := <-conns:
				select {
				case out <- c:
				default:
				}
			case <-done:
				return
			}
		}
	}()
	t.Cleanup(func() { close(done) })
	return url, out
}

// pingPongs makes n round trips of distinct messages on s.
func pingPongs(t *testing.T, s *Stream, n int) {
	t.Helper()
	for i := range n {
		pingPong(t, s, fmt.Sprintf("m%d", i))
	}
}

// pingPong sends body on s and returns what comes back.
func pingPong(t *testing.T, s *Stream, body string) {
	t.Helper()
	if err := s.SendMsg(context.Background(), []byte(body)); err != nil {
		t.Fatal(err)
	}
	got, err := s.RecvMsg()
	if err != nil || string(got) != body {
		t.Fatalf("echo of %q: %q, %v", body, got, err)
	}
}

// TestStreamReceiverReadsItself (issue 15): on a client connection whose
// only stream's messages are answered one at a time (a bidi ping-pong), the
// reader steps aside after feeding the waiting receiver, and the receiver's
// next RecvMsg reads the connection itself instead of being woken.
func TestStreamReceiverReadsItself(t *testing.T) {
	needLending(t)
	cc := trackedClient(t, streamEchoServer(t), Config{})
	ctx := context.Background()
	s := openBidi(t, cc)
	pingPongs(t, s, 300)
	if n := cc.ownReads.Load(); n == 0 {
		t.Fatalf("the receiver read no message itself in 300 round trips")
	} else {
		t.Logf("%d of 300 messages read by the receiver itself", n)
	}
	if err := s.CloseSend(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecvMsg(); !errors.Is(err, io.EOF) {
		t.Fatalf("after CloseSend: %v, want io.EOF", err)
	}
	// The connection goes on serving calls and streams as before.
	if got, err := unaryCall(ctx, cc, "after"); err != nil || got != "after" {
		t.Fatalf("call after the stream: %q, %v", got, err)
	}
}

// readerOfStream waits until the receiver of s reads the connection itself
// (readFor, armed), and fails the test if it never does.
func readerOfStream(t *testing.T, cc *Conn, s *Stream) {
	t.Helper()
	waitFor(t, 5*time.Second, "the receiver to read the connection", func() bool {
		return callerArmed(cc) && cc.readingFor.Load() == s
	})
	time.Sleep(20 * time.Millisecond) // in its wait for the socket
}

// warmedStream opens a stream on cc and makes round trips on it until the
// connection's reader has stepped aside, failing the test if it never does.
func warmedStream(t *testing.T, cc *Conn) *Stream {
	t.Helper()
	s := openBidi(t, cc)
	for i := 0; cc.parkState.Load() != 1; i++ {
		if i == 200 {
			t.Fatal("the reader never stepped aside")
		}
		pingPong(t, s, "warm-up")
	}
	return s
}

// TestStreamReceiverCutByReset: a receiver reading the connection itself
// for a message that does not come returns at once when another goroutine
// resets its stream (as a client's context.AfterFunc does when the call's
// context ends), with no heartbeat or byte to wake it; the connection
// serves on.
func TestStreamReceiverCutByReset(t *testing.T) {
	needLending(t)
	cc := trackedClient(t, streamEchoServer(t), Config{}) // PingInterval: an hour
	s := warmedStream(t, cc)
	if err := s.SendMsg(context.Background(), []byte("hold")); err != nil {
		t.Fatal(err)
	}
	type result struct {
		err error
		at  time.Time
	}
	res := make(chan result, 1)
	go func() {
		_, err := s.RecvMsg()
		res <- result{err, time.Now()}
	}()
	readerOfStream(t, cc, s)
	t0 := time.Now()
	s.Reset(tether.Errorf(tether.CodeCanceled, "given up"))
	select {
	case r := <-res:
		if tether.CodeOf(r.err) != tether.CodeCanceled {
			t.Fatalf("RecvMsg after Reset: %v, want canceled", r.err)
		}
		if d := r.at.Sub(t0); d > 500*time.Millisecond {
			t.Fatalf("RecvMsg returned %v after the Reset", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RecvMsg still waits 5 s after its stream was reset")
	}
	if got, err := unaryCall(context.Background(), cc, "next"); err != nil || got != "next" {
		t.Fatalf("call after the reset: %q, %v", got, err)
	}
}

// TestStreamReceiverConnectionCloses: a receiver reading the connection
// itself returns when the connection closes under it.
func TestStreamReceiverConnectionCloses(t *testing.T) {
	needLending(t)
	cc := trackedClient(t, streamEchoServer(t), Config{})
	s := warmedStream(t, cc)
	if err := s.SendMsg(context.Background(), []byte("hold")); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := s.RecvMsg()
		res <- err
	}()
	readerOfStream(t, cc, s)
	cc.Close()
	select {
	case err := <-res:
		if err == nil {
			t.Fatal("RecvMsg returned a message after the close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RecvMsg still waits 5 s after the connection closed")
	}
}

// echoPair dials a streamEchoServer and returns the client connection and
// the server's.
func echoPair(t *testing.T) (cc, sc *Conn) {
	t.Helper()
	url, conns := streamEchoServerConns(t, nil)
	cc = trackedClient(t, url, Config{})
	return cc, <-conns
}

// openBidi opens a stream on cc, for a streamEchoServer.
func openBidi(t *testing.T, cc *Conn) *Stream {
	t.Helper()
	s, _, err := cc.Open(context.Background(), &tetherv1.Open{Procedure: "/a/bidi"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// warmedBoth opens a stream on cc and makes round trips on it, a
// millisecond apart, until the handler on sc, cc's server side, reads the
// connection itself waiting for the next message, and fails the test if it
// never does.
func warmedBoth(t *testing.T, cc, sc *Conn) *Stream {
	t.Helper()
	s := openBidi(t, cc)
	for i := 0; ; i++ {
		pingPong(t, s, "warm-up")
		time.Sleep(time.Millisecond) // the handler's next RecvMsg
		if callerArmed(sc) && sc.readingFor.Load() != nil {
			return s
		}
		if i == 200 {
			t.Fatal("the handler never read the connection itself")
		}
	}
}

// TestHandlerReadsItself (issue 15): on a server connection whose only
// stream's messages are answered one at a time, the reader steps aside
// after feeding the waiting handler, and the handler's next RecvMsg reads
// the connection itself (its reads follow the client's masked frames).
func TestHandlerReadsItself(t *testing.T) {
	needLending(t)
	cc, sc := echoPair(t)
	s := openBidi(t, cc)
	pingPongs(t, s, 300)
	if n := sc.ownReads.Load(); n == 0 {
		t.Fatal("the handler read no message itself in 300 round trips")
	} else {
		t.Logf("%d of 300 messages read by the handler itself, %d by the client's receiver", n, cc.ownReads.Load())
	}
	if err := s.CloseSend(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecvMsg(); !errors.Is(err, io.EOF) {
		t.Fatalf("after CloseSend: %v, want io.EOF", err)
	}
	if got, err := unaryCall(context.Background(), cc, "after"); err != nil || got != "after" {
		t.Fatalf("call after the stream: %q, %v", got, err)
	}
}

// TestHandlerCutByReset: a handler reading the connection itself for a
// message that does not come returns from RecvMsg at once when another
// goroutine of the server resets its stream (a deadline, a shutdown's
// cancel), and the client learns of the reset.
func TestHandlerCutByReset(t *testing.T) {
	needLending(t)
	streams := make(chan *Stream, 4)
	done := make(chan struct{})
	defer close(done)
	recvErr := make(chan error, 1)
	url, conns := quietServer(t, func(s *Stream, _ *tetherv1.Open) {
		streams <- s
		for {
			msg, err := s.RecvMsg()
			if errors.Is(err, io.EOF) { // the unary call after the reset
				_ = s.FinishWith(nil, nil, nil, nil)
				return
			}
			if err != nil {
				recvErr <- err
				return
			}
			if err := s.SendMsg(context.Background(), msg); err != nil {
				return
			}
		}
	})
	cc := trackedClient(t, url, Config{})
	sc := <-conns
	cs := warmedBoth(t, cc, sc)
	ss := <-streams
	if sc.readingFor.Load() != ss {
		t.Fatal("another stream's receiver reads the connection")
	}
	time.Sleep(20 * time.Millisecond)
	t0 := time.Now()
	ss.Reset(tether.Errorf(tether.CodeDeadlineExceeded, "too late"))
	select {
	case err := <-recvErr:
		if tether.CodeOf(err) != tether.CodeDeadlineExceeded {
			t.Fatalf("handler's RecvMsg after Reset: %v", err)
		}
		if d := time.Since(t0); d > 500*time.Millisecond {
			t.Fatalf("the handler's RecvMsg returned %v after the Reset", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's RecvMsg still waits 5 s after its stream was reset")
	}
	if _, err := cs.RecvMsg(); tether.CodeOf(err) != tether.CodeDeadlineExceeded {
		t.Fatalf("client's RecvMsg after the server's reset: %v", err)
	}
	if got, err := unaryCall(context.Background(), cc, "next"); err != nil || got != "next" {
		t.Fatalf("call after the reset: %q, %v", got, err)
	}
}

// TestHandlerReadingSeesNewStreams: while a handler reads the connection
// itself, an OPEN of another stream starts that stream's handler on a
// goroutine of its own (not on the reading handler), and both are served.
func TestHandlerReadingSeesNewStreams(t *testing.T) {
	needLending(t)
	url, conns := streamEchoServerConns(t, nil)
	cc := trackedClient(t, url, Config{})
	sc := <-conns
	s1 := warmedBoth(t, cc, sc)
	s2 := openBidi(t, cc)
	for i := range 20 {
		pingPong(t, s2, fmt.Sprintf("two-%d", i))
		pingPong(t, s1, fmt.Sprintf("one-%d", i))
	}
	for _, s := range []*Stream{s1, s2} {
		if err := s.CloseSend(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RecvMsg(); !errors.Is(err, io.EOF) {
			t.Fatalf("after CloseSend: %v, want io.EOF", err)
		}
	}
}

// TestHandlerReadingConnectionCloses: a handler reading the connection
// itself returns from RecvMsg when the server closes the connection.
func TestHandlerReadingConnectionCloses(t *testing.T) {
	needLending(t)
	streams := make(chan *Stream, 1)
	url, conns := streamEchoServerConns(t, streams)
	cc := trackedClient(t, url, Config{})
	sc := <-conns
	warmedBoth(t, cc, sc)
	ss := <-streams
	sc.Close()
	select {
	case <-ss.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's stream still open 5 s after the close")
	}
	select {
	case <-sc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the connection not done 5 s after its close")
	}
}

// TestQuietSpellsParkAfterHandlerReads (review): a stream whose messages come
// more than parkAfter apart. The server's connection parks in every gap, as
// it did before handlers read for themselves: in the gaps after a message
// its handler read (handBack), too. Count the gaps in which it has neither
// its socket in the poller (parkState 1) nor a handler reading it
// (readingFor): a reader goroutine then blocks in readOne through the gap.
func TestQuietSpellsParkAfterHandlerReads(t *testing.T) {
	needLending(t)
	cc, sc := echoPair(t)
	s := openBidi(t, cc)
	parked, handler, blocked := 0, 0, 0
	for i := range 40 {
		pingPong(t, s, fmt.Sprintf("m%d", i))
		time.Sleep(25 * time.Millisecond) // > parkAfter (10 ms)
		switch {
		case sc.parkState.Load() == 1:
			parked++
		case sc.readingFor.Load() != nil:
			handler++
		default:
			blocked++
		}
	}
	t.Logf("gaps: %d parked in the poller, %d read by the handler, %d with a reader goroutine blocked", parked, handler, blocked)
	if blocked > 4 {
		t.Errorf("%d of 40 idle gaps kept a reader goroutine blocked instead of parking", blocked)
	}
}

// TestResumableStreamsDoNotStepAside (review): a resumable stream's receiver
// never reads the connection itself (mayRead), so it must not count as
// waiting (Conn.fed): the reader would step aside for it, and every step
// aside cost a poller registration and a new reader goroutine, for nothing.
func TestResumableStreamsDoNotStepAside(t *testing.T) {
	needLending(t)
	url, conns := streamEchoServerConns(t, nil)
	cc := trackedClient(t, url, Config{})
	sc := <-conns
	s, _, err := cc.Open(context.Background(), &tetherv1.Open{Procedure: "/a/bidi", Resume: &tetherv1.Resume{Token: []byte("0123456789abcdef")}}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if !s.resumable {
		t.Fatal("client stream not resumable")
	}
	pingPong(t, s, "warm")
	poller.mu.Lock()
	g0 := poller.gen
	poller.mu.Unlock()
	c0, s0 := cc.ownReads.Load(), sc.ownReads.Load()
	const n = 300
	for i := range n {
		pingPong(t, s, fmt.Sprintf("m%d", i))
	}
	poller.mu.Lock()
	g1 := poller.gen
	poller.mu.Unlock()
	t.Logf("%d round trips on a resumable stream: %d poller registrations, own reads client %d server %d", n, g1-g0, cc.ownReads.Load()-c0, sc.ownReads.Load()-s0)
	if g1-g0 > n/10 {
		t.Errorf("%d poller registrations in %d round trips of a stream whose receivers never read the connection", g1-g0, n)
	}
}
