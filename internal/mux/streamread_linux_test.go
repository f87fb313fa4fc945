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
	done := make(chan struct{})
	url, conns := parkingServer(t, Config{
		PingInterval: time.Hour,
		PingTimeout:  time.Hour,
		Accept: func(s *Stream, _ *tetherv1.Open) {
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
		},
	})
	go func() {
		for {
			select {
			case <-conns:
			case <-done:
				return
			}
		}
	}()
	t.Cleanup(func() { close(done) })
	return url
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
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/bidi"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		pingPong(t, s, fmt.Sprintf("m%d", i))
	}
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
	s, _, err := cc.Open(context.Background(), &tetherv1.Open{Procedure: "/a/bidi"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
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
