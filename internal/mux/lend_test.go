package mux

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
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

// TestTryRecvMsgFragmentsInRun (review of issue 15's twelfth pass):
// TryRecvMsg (resume.go) must see a message's fragments inside a run
// (recvqueue.go). It scanned the ring as one frame per slot, so a queue
// holding only a message's first fragments (MORE), in one run, was taken
// for a whole message, and TryRecvMsg called RecvMsg, which blocked until
// the rest arrived. It must return (nil, false) at once.
func TestTryRecvMsgFragmentsInRun(t *testing.T) {
	for _, lend := range []bool{true, false} {
		streams := make(chan *Stream, 1)
		ws, _ := rawPeer(t, Config{LendFirstMessage: lend, Accept: func(s *Stream, _ *tetherv1.Open) {
			streams <- s
			<-s.Context().Done()
		}})
		open, _ := proto.Marshal(&tetherv1.Open{Procedure: "/a/b"})
		writeFrames(t, ws, frame.Frame{Type: frame.TypeOpen, StreamID: 1, Payload: open})
		s := <-streams
		writeFrames(t, ws,
			frame.Frame{Type: frame.TypeMessage, StreamID: 1, Flags: frame.FlagMore, Payload: []byte("0123456789")},
			frame.Frame{Type: frame.TypeMessage, StreamID: 1, Flags: frame.FlagMore, Payload: []byte("abcdefghij")},
		)
		waitFor(t, 5*time.Second, "two fragments queued", func() bool {
			live, _, _ := queueStats(s)
			return live == 2
		})
		type res struct {
			b  []byte
			ok bool
		}
		got := make(chan res, 1)
		go func() {
			b, ok, _ := s.TryRecvMsg()
			got <- res{b, ok}
		}()
		select {
		case r := <-got:
			if r.ok {
				t.Errorf("lend %v: TryRecvMsg returned a message (%q) with only two MORE fragments queued", lend, r.b)
			}
		case <-time.After(2 * time.Second):
			t.Errorf("lend %v: TryRecvMsg blocked with only MORE fragments queued (it took a run's slot for a whole message and called RecvMsg)", lend)
			// Let it return: the message's last fragment.
			writeFrames(t, ws, frame.Frame{Type: frame.TypeMessage, StreamID: 1, Payload: []byte("!")})
			<-got
		}
	}
}

// TestFirstMessageAfterEmptyFragmentIsKept (review of issue 15's twelfth
// pass): without LendFirstMessage a stream's first message is the
// caller's to keep (RecvMsg's doc, slab.go), even when it starts with an
// empty fragment. handleMessage took any empty payload for the stream's
// first, so the message's next (small) fragment went into a pooled slab
// (pushSmall) and, the empty fragment leaving no assembly buffer, RecvMsg
// returned it in place, lent: the next RecvMsg gave the slab back to
// slabPool, and any stream's next small frames overwrote what the caller
// kept.
func TestFirstMessageAfterEmptyFragmentIsKept(t *testing.T) {
	type res struct {
		msg  []byte
		lent bool
	}
	got := make(chan res, 1)
	ws, _ := rawPeer(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		m, err := s.RecvMsg()
		if err != nil {
			got <- res{}
			return
		}
		s.mu.Lock()
		lent := s.held != nil
		if lent {
			// What RecvMsg's next call does first: the slab goes back to
			// slabPool, where the next small frame of any stream takes it.
			s.releaseLocked(s.held)
			s.held = nil
			if sl := slabPool.Get().(*slab); sl != nil {
				sl.buf = append(sl.buf[:0], bytes.Repeat([]byte{'Z'}, 64)...)
				slabPool.Put(sl)
			}
		}
		s.mu.Unlock()
		got <- res{m, lent}
		<-s.Context().Done()
	}})
	open, _ := proto.Marshal(&tetherv1.Open{Procedure: "/a/b"})
	want := []byte("the first message, the caller's to keep")
	writeFrames(t, ws,
		frame.Frame{Type: frame.TypeOpen, StreamID: 1, Payload: open},
		frame.Frame{Type: frame.TypeMessage, StreamID: 1, Flags: frame.FlagMore},
		frame.Frame{Type: frame.TypeMessage, StreamID: 1, Payload: want},
	)
	r := <-got
	if r.lent {
		t.Errorf("the first message (no LendFirstMessage) was returned in a pooled slab (s.held set): the caller may keep it")
	}
	if !bytes.Equal(r.msg, want) {
		t.Errorf("the first message kept by the caller now reads %q; want %q", r.msg, want)
	}
}
