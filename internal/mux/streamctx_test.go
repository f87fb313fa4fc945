package mux

import (
	"context"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// TestStreamContextMadeOnFirstUse (issue 15): a server stream's context is
// made only when asked for, so a handler that never uses it costs none; one
// asked for while the stream runs ends with the stream and its cause; one
// asked for after the stream ended is canceled with the cause it ended
// with.
func TestStreamContextMadeOnFirstUse(t *testing.T) {
	type result struct {
		madeBefore bool
		err, cause error
	}
	results := make(chan result, 2)
	ended := make(chan *Stream, 2)
	cc, _ := pair(t, Config{Accept: func(s *Stream, open *tetherv1.Open) {
		s.mu.Lock()
		made := s.ctx != nil
		s.mu.Unlock()
		switch open.GetProcedure() {
		case "/late":
			// Ask only once the client's RESET has ended the stream.
			for !s.Ended() {
				time.Sleep(time.Millisecond)
			}
			ctx := s.Context()
			results <- result{made, ctx.Err(), context.Cause(ctx)}
		case "/early":
			ctx := s.Context()
			<-ctx.Done()
			results <- result{made, ctx.Err(), context.Cause(ctx)}
		case "/unused":
			_ = s.Finish(nil, nil)
			ended <- s
		}
	}}, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A handler that never asks: the call ends without a context.
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/unused"}, []byte("x"), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecvMsg(); err == nil {
		t.Fatal("a message from a handler that sent none")
	}
	ss := <-ended
	ss.mu.Lock()
	made := ss.ctx != nil
	ss.mu.Unlock()
	if made {
		t.Error("a handler that never used its context got one")
	}

	reset := tether.Errorf(tether.CodeAborted, "client gave up")
	for _, proc := range []string{"/early", "/late"} {
		s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: proc}, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		if proc == "/early" {
			time.Sleep(20 * time.Millisecond) // usually asked before the RESET; either order must hold
		}
		s.Reset(reset)
		select {
		case r := <-results:
			if r.madeBefore {
				t.Errorf("%s: a context made before the handler asked", proc)
			}
			if r.err != context.Canceled || tether.CodeOf(r.cause) != tether.CodeAborted {
				t.Errorf("%s: context ended with %v, cause %v; want canceled, the RESET's aborted", proc, r.err, r.cause)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the handler's context did not end 10s after the RESET", proc)
		}
	}
}
