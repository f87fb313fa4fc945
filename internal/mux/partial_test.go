package mux

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// sendPartial sends n bytes of a message on s, as fragments with MORE, and
// never its last fragment, within the flow-control credit.
func sendPartial(ctx context.Context, s *Stream, n int) error {
	part := make([]byte, 16<<10)
	for n > 0 {
		k := min(n, len(part))
		if ok, err := s.takeFrameCredit(ctx, k+FrameOverhead); err != nil {
			return err
		} else if !ok {
			return errors.New("16 KiB fragments need a window of 32 KiB or more")
		}
		err := s.c.write(ctx, s, func(b []byte) []byte {
			b = frame.AppendHeader(b, frame.TypeMessage, frame.FlagMore, s.id, k)
			return append(b, part[:k]...)
		})
		if err != nil {
			return s.sendError(err)
		}
		n -= k
	}
	return nil
}

// heapInUse is the live heap. Two collections: the first moves what the
// large-buffer pools hold (bigbuf.go) to their victim caches, the second
// drops it; a pool is a process-wide cache of free buffers that the
// collector empties, not memory a connection holds.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestPartialMessagesBoundedPerConnection (issue 10 item 8): a peer that
// starts large messages on many streams and never finishes them must not
// make the receiver hold more than the connection's budget for partial
// messages (credit is returned as fragments are assembled, so the window
// does not bound them): the streams that would take it over are reset
// with resource_exhausted, and the connection goes on.
func TestPartialMessagesBoundedPerConnection(t *testing.T) {
	const (
		streams = 16
		maxMsg  = 1 << 20
		each    = maxMsg - 1 // just under the message limit
		window  = InitialWindow
	)
	budget := 4 * maxMsg // the default: four times MaxMessageSize
	type result struct {
		s   *Stream
		err error
	}
	accepted := make(chan *Stream, streams)
	ended := make(chan result, streams)
	cc, sc := pair(t, Config{MaxMessageSize: maxMsg, StreamWindow: window, Accept: func(s *Stream, _ *tetherv1.Open) {
		accepted <- s
		var err error
		for err == nil {
			_, err = s.RecvMsg()
		}
		ended <- result{s, err}
	}}, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before := heapInUse()
	var wg sync.WaitGroup
	client := make([]*Stream, streams)
	for i := range client {
		s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		client[i] = s
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = sendPartial(ctx, s, each) // fails once the stream is reset
		}()
	}
	wg.Wait()
	server := make([]*Stream, 0, streams)
	for range streams {
		server = append(server, <-accepted)
	}
	// Wait until every server stream has assembled all it was sent, or
	// has ended.
	waitFor(t, time.Minute, "server streams still assembling", func() bool {
		for _, s := range server {
			s.mu.Lock()
			busy := !s.finished && len(s.assembly) < each
			s.mu.Unlock()
			if busy {
				return false
			}
		}
		return true
	})
	grown := int64(heapInUse()) - int64(before)
	limit := int64(budget + streams*2*window + 2<<20)
	t.Logf("%d streams with %d bytes of an unfinished message each: heap grew by %.1f MiB (budget %d MiB)", streams, each, float64(grown)/(1<<20), budget>>20)
	if grown > limit {
		t.Errorf("heap grew by %.1f MiB; want at most %.1f MiB (the connection's partial-message budget plus the windows)", float64(grown)/(1<<20), float64(limit)/(1<<20))
	}
	reset := 0
	for len(ended) > 0 {
		r := <-ended
		if tether.CodeOf(r.err) != tether.CodeResourceExhausted {
			t.Errorf("stream %d ended with %v; want resource_exhausted", r.s.ID(), r.err)
		}
		reset++
	}
	if want := streams - budget/each; reset < want {
		t.Errorf("%d streams reset; want at least %d", reset, want)
	}
	if err := cc.Err(); err != nil {
		t.Fatalf("connection closed: %v", err)
	}
	_ = sc
}

// TestLargeMessageWithinPartialBudget: a single message of the largest
// size still arrives whole, with the default limits.
func TestLargeMessageWithinPartialBudget(t *testing.T) {
	for _, size := range []int{4 << 20, DefaultMaxMessageSize} {
		got := make(chan []byte, 1)
		cc, _ := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
			m, err := s.RecvMsg()
			if err != nil {
				t.Error(err)
			}
			got <- m
			_ = s.Finish(nil, nil)
		}}, Config{})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		msg := bytes.Repeat([]byte("0123456789abcdef"), size/16)
		if err := s.SendMsg(ctx, msg); err != nil {
			t.Fatalf("%d-byte message: %v", size, err)
		}
		if m := <-got; !bytes.Equal(m, msg) {
			t.Fatalf("%d-byte message arrived as %d bytes", size, len(m))
		}
		cancel()
	}
}
