package mux

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// An idle connection keeps no context: a call's stream context is not a
// child of the connection's (a child left the connection's context a map of
// children and a done channel, about 0.3 KiB, for the connection's life).
func TestIdleConnHoldsNoContext(t *testing.T) {
	cc, sc := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) { _ = s.Finish(nil, nil) }}, Config{})
	for range 3 {
		s, _, err := cc.Open(context.Background(), &tetherv1.Open{Procedure: "/a/b"}, nil, true)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.RecvMsg(); !errors.Is(err, io.EOF) {
			t.Fatalf("RecvMsg: %v, want io.EOF", err)
		}
	}
	waitFor(t, 5*time.Second, "the server's streams to end", func() bool { return sc.ActiveStreams() == 0 })
	sc.mu.Lock()
	made := sc.ctx != nil
	sc.mu.Unlock()
	if made {
		t.Fatal("the server connection made a context of its own for its calls")
	}
}

// A server stream's context ends with the connection, with the
// connection's error as its cause, as when it was the connection context's
// child.
func TestStreamContextEndsWithConn(t *testing.T) {
	started := make(chan context.Context, 1)
	cc, sc := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		started <- s.Context()
		<-s.Context().Done()
	}}, Config{})
	if _, _, err := cc.Open(context.Background(), &tetherv1.Open{Procedure: "/a/b"}, nil, true); err != nil {
		t.Fatal(err)
	}
	ctx := <-started
	connCtx := sc.Context()
	cause := tether.Errorf(tether.CodeUnavailable, "closed by the test")
	sc.closeWith(cause, 0, "")
	for name, ctx := range map[string]context.Context{"stream": ctx, "connection": connCtx, "connection's, made after the close": sc.Context()} {
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("the %s context did not end with the connection", name)
		}
		if !errors.Is(ctx.Err(), context.Canceled) || context.Cause(ctx) != cause {
			t.Fatalf("the %s context ended with %v (cause %v), want context.Canceled (cause %v)", name, ctx.Err(), context.Cause(ctx), cause)
		}
	}
}

// endRecorder records what OnEnd tells it.
type endRecorder struct {
	causes chan error
}

func (r endRecorder) StreamEnded(cause error) { r.causes <- cause }

// OnEnd tells its notifier once, with the cause, when the stream is reset by
// the peer, when its connection closes, and at once when the stream has
// ended before OnEnd; it makes no context for it.
func TestOnEnd(t *testing.T) {
	streams := make(chan *Stream, 3)
	cc, sc := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		streams <- s
		<-s.Done()
	}}, Config{})
	open := func() (*Stream, *Stream) {
		t.Helper()
		c, _, err := cc.Open(context.Background(), &tetherv1.Open{Procedure: "/a/b"}, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		return c, <-streams
	}
	told := func(r endRecorder, what string) error {
		t.Helper()
		select {
		case err := <-r.causes:
			return err
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the notifier was not told", what)
			return nil
		}
	}

	// Reset by the peer.
	c1, s1 := open()
	r1 := endRecorder{make(chan error, 2)}
	s1.OnEnd(r1)
	c1.Reset(tether.Errorf(tether.CodeCanceled, "canceled by the test"))
	if err := told(r1, "reset"); tether.CodeOf(err) != tether.CodeCanceled {
		t.Errorf("reset: told %v, want canceled", err)
	}
	// Ended before OnEnd: told at once, with the same cause.
	r1b := endRecorder{make(chan error, 2)}
	s1.OnEnd(r1b)
	if err := told(r1b, "after the end"); tether.CodeOf(err) != tether.CodeCanceled {
		t.Errorf("after the end: told %v, want canceled", err)
	}

	// The connection closes.
	_, s2 := open()
	r2 := endRecorder{make(chan error, 2)}
	s2.OnEnd(r2)
	cause := tether.Errorf(tether.CodeUnavailable, "closed by the test")
	sc.closeWith(cause, 0, "")
	if err := told(r2, "connection closed"); err != cause {
		t.Errorf("connection closed: told %v, want %v", err, cause)
	}
	<-s2.Done()
	for _, r := range []endRecorder{r1, r2} {
		select {
		case err := <-r.causes:
			t.Errorf("told a second time (%v)", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	for i, s := range []*Stream{s1, s2} {
		if s.ctxMade.Load() {
			t.Errorf("stream %d: OnEnd made the stream's context", i+1)
		}
	}
}

// RecvMsgCtx stops waiting when its context ends, leaving the stream as it
// was, and returns a message already queued whatever its context says.
func TestRecvMsgCtx(t *testing.T) {
	release := make(chan struct{})
	cc, _ := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		<-release
		_ = s.SendMsg(context.Background(), []byte("late"))
		_ = s.Finish(nil, nil)
	}}, Config{})
	s, _, err := cc.Open(context.Background(), &tetherv1.Open{Procedure: "/a/b"}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := s.RecvMsgCtx(ctx); err != ErrWaitCanceled {
		t.Fatalf("RecvMsgCtx = %v, want ErrWaitCanceled", err)
	}
	close(release)
	waitFor(t, 5*time.Second, "the message to be queued", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.recvQ.len() > 0
	})
	if msg, err := s.RecvMsgCtx(ctx); err != nil || string(msg) != "late" {
		t.Fatalf("RecvMsgCtx = %q, %v after the context ended, with a message queued; want \"late\"", msg, err)
	}
	if _, err := s.RecvMsg(); !errors.Is(err, io.EOF) {
		t.Fatalf("RecvMsg = %v, want io.EOF", err)
	}
}

// A client stream ended by the server's END tells OnEnd's notifier the END's
// error (io.EOF for OK), whether OnEnd came before the END or after it.
func TestOnEndClientEND(t *testing.T) {
	release := make(chan struct{})
	cc, _ := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		<-release
		_ = s.Finish(nil, nil)
	}}, Config{})
	s, _, err := cc.Open(context.Background(), &tetherv1.Open{Procedure: "/a/b"}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	before := endRecorder{make(chan error, 2)}
	s.OnEnd(before)
	close(release)
	for _, r := range []endRecorder{before, {make(chan error, 2)}} {
		if r != before {
			<-s.Done()
			s.OnEnd(r)
		}
		select {
		case err := <-r.causes:
			if err != io.EOF {
				t.Errorf("told %v, want io.EOF", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the client stream's notifier was not told of the END")
		}
	}
}
