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
