package mux

import (
	"context"
	"io"
	"testing"
	"time"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// queueStats returns how many chunks s has queued and how many slots its
// queue holds. s.mu is taken.
func queueStats(s *Stream) (live, slots int, ended bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recvQ.len(), s.recvQ.slots(), s.recvEnd != nil
}

// TestRecvQueueBoundedBySlowConsumer (issue 10 item 7): a consumer slightly
// slower than its sender, whose queue therefore never empties, must keep
// the queue's slots within a bound derived from the window (every queued
// frame costs at least FrameOverhead of credit), not one per message ever
// received.
func TestRecvQueueBoundedBySlowConsumer(t *testing.T) {
	const window = InitialWindow // the smallest: fewer messages show the growth
	const messages = 30000
	bound := window / FrameOverhead // a power of two already; see recvQueue
	streams := make(chan *Stream, 1)
	held := make(chan struct{})
	cc, _ := pair(t, Config{StreamWindow: window, Accept: func(s *Stream, _ *tetherv1.Open) {
		streams <- s
		<-held
		s.Reset(context.Canceled)
	}}, Config{})
	defer close(held)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() {
		for i := 0; i < messages; i++ {
			if err := cs.SendMsg(ctx, []byte{byte(i)}); err != nil {
				sent <- err
				return
			}
		}
		sent <- cs.CloseSend(ctx)
	}()
	s := <-streams
	maxSlots, got := 0, 0
	for {
		// Slightly slower than the sender: take a message only while at
		// least two are queued, so the queue never runs empty until the end.
		live, slots, ended := queueStats(s)
		maxSlots = max(maxSlots, slots)
		if live < 2 && !ended {
			if ctx.Err() != nil {
				t.Fatalf("stalled after %d messages", got)
			}
			time.Sleep(100 * time.Microsecond)
			continue
		}
		if _, err := s.RecvMsg(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("after %d messages: %v", got, err)
		}
		got++
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if got != messages {
		t.Fatalf("received %d messages; want %d", got, messages)
	}
	t.Logf("%d one-byte messages through a %d-byte window: at most %d queue slots (bound %d)", messages, window, maxSlots, bound)
	if maxSlots > bound {
		t.Fatalf("receive queue grew to %d slots for a %d-byte window; want at most %d (window / FrameOverhead)", maxSlots, window, bound)
	}
}
