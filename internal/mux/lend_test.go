package mux

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// TestLendFirstMessage: with Config.LendFirstMessage a stream's first
// message, on either side, is lent from pooled memory like every later
// one, and ReleaseMsg gives it back at once; without it the first message
// is the caller's own. Every message arrives intact either way.
func TestLendFirstMessage(t *testing.T) {
	for _, lend := range []bool{false, true} {
		t.Run(fmt.Sprintf("lend=%v", lend), func(t *testing.T) {
			type result struct {
				msgs     [][]byte
				heldOnce []bool // the stream held pooled memory for the message
				released bool   // ReleaseMsg let go of every message at once
				err      error
			}
			done := make(chan result, 1)
			cc, _ := pair(t, Config{LendFirstMessage: lend, Accept: func(s *Stream, _ *tetherv1.Open) {
				r := result{released: true}
				for {
					b, err := s.RecvMsg()
					if err == io.EOF {
						break
					}
					if err != nil {
						r.err = err
						break
					}
					r.msgs = append(r.msgs, bytes.Clone(b))
					s.mu.Lock()
					r.heldOnce = append(r.heldOnce, s.held != nil)
					s.mu.Unlock()
					s.ReleaseMsg()
					s.mu.Lock()
					r.released = r.released && s.held == nil
					s.mu.Unlock()
				}
				done <- r
				_ = s.SendMsg(context.Background(), []byte("answer"))
				_ = s.Finish(nil, nil)
			}}, Config{LendFirstMessage: lend})
			want := [][]byte{[]byte("first request"), []byte("second"), []byte("third")}
			s, _, err := cc.Open(context.Background(), &tetherv1.Open{Procedure: "/a/b"}, want[0], false)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range want[1:] {
				if err := s.SendMsg(context.Background(), m); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.CloseSend(context.Background()); err != nil {
				t.Fatal(err)
			}
			r := <-done
			if r.err != nil {
				t.Fatal(r.err)
			}
			if len(r.msgs) != len(want) {
				t.Fatalf("received %d messages, want %d", len(r.msgs), len(want))
			}
			for i := range want {
				if !bytes.Equal(r.msgs[i], want[i]) {
					t.Fatalf("message %d: %q, want %q", i, r.msgs[i], want[i])
				}
			}
			if r.heldOnce[0] != lend {
				t.Fatalf("first message lent from pooled memory: %v, want %v", r.heldOnce[0], lend)
			}
			if !r.heldOnce[1] || !r.heldOnce[2] {
				t.Fatalf("later messages lent: %v, want true", r.heldOnce[1:])
			}
			if !r.released {
				t.Fatal("ReleaseMsg kept the message's memory")
			}
			// The client's side of the option: the answer is lent too.
			b, err := s.RecvMsg()
			if err != nil || string(b) != "answer" {
				t.Fatalf("answer %q, %v", b, err)
			}
			s.mu.Lock()
			lent := s.held != nil
			s.mu.Unlock()
			if lent != lend {
				t.Fatalf("the client's first message lent: %v, want %v", lent, lend)
			}
			if _, err := s.RecvMsg(); err != io.EOF {
				t.Fatalf("after the answer: %v, want io.EOF", err)
			}
		})
	}
}
