package mux

import (
	"bytes"
	"context"
	"io"
	"math/bits"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
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

// queuedMemory is what s's queue holds in memory: the buffers its frames
// point into (a slab counted once, in full) and its ring of slots; and the
// payload bytes queued.
func queuedMemory(s *Stream) (held, payload int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	slabs := map[*slab]bool{}
	q := &s.recvQ
	q.each(func(ch chunk) bool {
		payload += len(ch.b)
		switch {
		case ch.slab != nil:
			if !slabs[ch.slab] {
				slabs[ch.slab] = true
				held += cap(ch.slab.buf)
			}
		default:
			held += cap(ch.b) + frame.HeaderSize // a frame keeping its read buffer starts after its header
		}
		return true
	})
	return held + q.slots()*int(unsafe.Sizeof(qslot{})), payload
}

// TestQueuedMemoryWithinCredit: whatever the size of the messages a peer
// sends to a stream that does not read, what the queue holds stays within
// twice the credit, plus one slab, plus the slot ring (whose bound
// TestRecvQueueBoundedBySlowConsumer checks): a small frame never pins the
// large WebSocket message buffer it came in.
func TestQueuedMemoryWithinCredit(t *testing.T) {
	for _, size := range []int{0, 1, 100, 4 << 10, 5000, 33 << 10, 64 << 10, 100 << 10} {
		streams := make(chan *Stream, 1)
		release := make(chan struct{})
		cc, _ := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
			_, _ = s.RecvMsg() // the first read grants the whole window
			streams <- s
			<-release
			s.Reset(context.Canceled)
		}}, Config{})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cs, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("first"), false)
		if err != nil {
			t.Fatal(err)
		}
		s := <-streams
		// Send until the credit is used up: a send that cannot complete
		// within a moment is waiting for credit.
		msg := make([]byte, size)
		for {
			sendCtx, sendCancel := context.WithTimeout(ctx, 300*time.Millisecond)
			err := cs.SendMsg(sendCtx, msg)
			sendCancel()
			if err != nil {
				break
			}
		}
		waitFor(t, 10*time.Second, "the server's window not used up", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.recvWindow < size+FrameOverhead || s.finished
		})
		held, payload := queuedMemory(s)
		limit := 2*DefaultStreamWindow + slabSize + DefaultStreamWindow/FrameOverhead*int(unsafe.Sizeof(qslot{}))
		t.Logf("%6d-byte messages: %7d payload bytes queued, %7d bytes held (limit %d)", size, payload, held, limit)
		if held > limit {
			t.Errorf("%d-byte messages: queue holds %d bytes for %d bytes of payload; want at most %d", size, held, payload, limit)
		}
		close(release)
		cancel()
	}
}

// TestBeyondWindowCloses: a peer that sends a stream more than its credit
// (here 64 KiB to a handler that has not read) is disconnected with 1002,
// so the credit bounds what a stream queues.
func TestBeyondWindowCloses(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	ws, _ := rawPeer(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		select {
		case <-release:
		case <-s.Context().Done():
		}
		s.Reset(context.Canceled)
	}})
	open, _ := proto.Marshal(&tetherv1.Open{Procedure: "/a/b"})
	writeFrames(t, ws, frame.Frame{Type: frame.TypeOpen, StreamID: 1, Payload: open})
	var b []byte
	for range InitialWindow/(1+FrameOverhead) + 1 {
		b = frame.Append(b, frame.Frame{Type: frame.TypeMessage, StreamID: 1, Payload: []byte("x")})
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		t.Fatal(err)
	}
	code, text := awaitClose(ws, 10*time.Second)
	if code != websocket.CloseProtocolError || !strings.Contains(text, "beyond its flow-control window") {
		t.Fatalf("close %d %q; want 1002 '… beyond its flow-control window'", code, text)
	}
}

// TestBeyondWindowWhileReceiving: a peer that overruns its window while the
// handler is receiving (and granting credit back) is closed with 1002; the
// reader reads the window for its error message under the stream's lock
// (the race detector flagged it when it read it after unlocking, found by
// the fault checker's window-overflow attack).
func TestBeyondWindowWhileReceiving(t *testing.T) {
	for i := range 20 {
		// The handler takes 500 messages (about half a window: credit is
		// granted back meanwhile), then stops reading, so three windows'
		// worth always overruns what was granted.
		ws, _ := rawPeer(t, Config{StreamWindow: InitialWindow, Accept: func(s *Stream, _ *tetherv1.Open) {
			for range 500 {
				if _, err := s.RecvMsg(); err != nil {
					return
				}
			}
			<-s.Context().Done()
		}})
		open, _ := proto.Marshal(&tetherv1.Open{Procedure: "/a/b"})
		writeFrames(t, ws, frame.Frame{Type: frame.TypeOpen, StreamID: 1, Payload: open})
		// Three windows' worth, 50 frames per WebSocket message, so that
		// the handler receives and grants while the reader goes on.
		for range 3 * InitialWindow / (64 + FrameOverhead) / 50 {
			var b []byte
			for range 50 {
				b = frame.Append(b, frame.Frame{Type: frame.TypeMessage, StreamID: 1, Payload: make([]byte, 64)})
			}
			if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
				break // closed by the server
			}
		}
		code, text := awaitClose(ws, 10*time.Second)
		if code != websocket.CloseProtocolError || !strings.Contains(text, "beyond its flow-control window") {
			t.Fatalf("iteration %d: close %d %q; want 1002 '… beyond its flow-control window'", i, code, text)
		}
	}
}

// TestRecvQueueSmallReleased (issue 15): the slots inside the queue hold no
// frame once the ring has grown out of them, so that moved frames (and the
// buffers they point into) are not kept alive by stale copies.
func TestRecvQueueSmallReleased(t *testing.T) {
	var q recvQueue
	for i := 0; i < minQueueSlots+1; i++ {
		q.push(chunk{b: make([]byte, 1)})
	}
	if &q.buf[0] == &q.small[0] {
		t.Fatal("the ring did not grow")
	}
	for i, c := range q.small {
		if c.b != nil {
			t.Errorf("small[%d] still holds a frame after the ring grew", i)
		}
	}
	for q.len() > 0 {
		if len(q.pop().b) != 1 {
			t.Fatal("lost a frame")
		}
	}
}

// TestRecvQueueReusesRings: a queue that fills past maxIdleQueueSlots and
// runs empty again, as a stream's does whenever its consumer keeps up with
// a fast sender, takes its rings from the pool instead of regrowing one by
// doubling each time.
func TestRecvQueueReusesRings(t *testing.T) {
	if raceOn {
		t.Skip("the race detector makes sync.Pool drop what is put back")
	}
	var q recvQueue
	cycle := func() {
		for range 300 {
			q.push(chunk{more: true})
		}
		for q.len() > 0 {
			q.pop()
		}
	}
	cycle()
	// Before: eight rings (4 to 512 slots) per cycle.
	if n := testing.AllocsPerRun(100, cycle); n >= 1 {
		t.Fatalf("%.1f allocations per fill and drain of the queue, want none", n)
	}
}

// TestRecvQueueRingsGoBackEmpty: a ring goes back to the pool with no frame
// in it (a pooled ring must not keep received buffers alive), whether the
// queue grew out of it or was reset with frames queued (the stream ended).
func TestRecvQueueRingsGoBackEmpty(t *testing.T) {
	payload := []byte("x")
	var q recvQueue
	for range 8 {
		q.push(chunk{b: payload, more: true})
	}
	grown := q.ring // 8 slots, full
	q.push(chunk{b: payload})
	for i, c := range *grown {
		if c.b != nil {
			t.Fatalf("slot %d of the ring the queue grew out of still holds a frame", i)
		}
	}
	kept := q.ring
	q.reset()
	for i, c := range *kept {
		if c.b != nil {
			t.Fatalf("slot %d of a reset queue's ring still holds a frame", i)
		}
	}
	if q.len() != 0 || q.slots() != 0 || q.ring != nil {
		t.Fatalf("after reset: %d frames, %d slots, ring %v; want an empty queue", q.len(), q.slots(), q.ring != nil)
	}
	q.push(chunk{b: payload})
	if c := q.pop(); &c.b[0] != &payload[0] {
		t.Fatal("a reset queue does not work again")
	}
}

// TestRecvQueueRuns (issue 15): small frames copied into a slab share a
// slot (a run); whatever the mix of small frames, frames of their own and
// empty ones, pushes and pops in any interleaving give back every frame in
// order, with its bytes and its more flag, and each slab's references
// count its frames still queued or held. A seeded random schedule, checked
// against a plain slice.
func TestRecvQueueRuns(t *testing.T) {
	for seed := range int64(40) {
		rng := rand.New(rand.NewPCG(uint64(seed), 0))
		s := &Stream{copiedFirst: true}
		var want []chunk // pushed, not yet popped: b is a private copy
		var held *slab
		maxSlots := 0
		for step := range 2000 {
			if rng.IntN(3) > 0 || len(want) == 0 {
				// Push: mostly small frames, some of their own, some
				// empty, in bursts that fill several slabs.
				var p []byte
				switch k := rng.IntN(20); {
				case k == 0:
					p = nil
				case k == 1:
					p = make([]byte, maxSmall+1+rng.IntN(100))
				case k == 2:
					p = make([]byte, maxSmall)
				default:
					p = make([]byte, 1+rng.IntN(1500))
				}
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
				more := rng.IntN(4) == 0
				if s.smallLocked(len(p)) {
					s.recvQ.pushSmall(s.slabForLocked(runHeader+len(p)), p, more)
				} else {
					s.recvQ.push(chunk{b: append([]byte(nil), p...), more: more})
				}
				want = append(want, chunk{b: p, more: more})
			} else {
				if held != nil {
					s.releaseLocked(held)
					held = nil
				}
				rest, whole := s.recvQ.messageRest()
				wantRest, wantWhole := 0, false
				for _, c := range want {
					wantRest += len(c.b)
					if !c.more {
						wantWhole = true
						break
					}
				}
				if rest != wantRest || whole != wantWhole {
					t.Fatalf("seed %d step %d: messageRest %d, %v; want %d, %v", seed, step, rest, whole, wantRest, wantWhole)
				}
				c := s.recvQ.pop()
				w := want[0]
				want = want[1:]
				if !bytes.Equal(c.b, w.b) || c.more != w.more {
					t.Fatalf("seed %d step %d: popped %d bytes (more %v); want %d bytes (more %v), or other bytes", seed, step, len(c.b), c.more, len(w.b), w.more)
				}
				if c.slab != nil && cap(c.b) != len(c.b) {
					t.Fatalf("seed %d step %d: a frame in a slab has room past its end (cap %d, len %d)", seed, step, cap(c.b), len(c.b))
				}
				held = c.slab
			}
			if s.recvQ.len() != len(want) {
				t.Fatalf("seed %d step %d: len %d; want %d", seed, step, s.recvQ.len(), len(want))
			}
			maxSlots = max(maxSlots, s.recvQ.slots())
			if step%16 != 0 {
				continue
			}
			// Each slab's references: its frames queued, plus the one
			// held.
			refs := map[*slab]int{}
			s.recvQ.each(func(c chunk) bool {
				if c.slab != nil {
					refs[c.slab]++
				}
				return true
			})
			if held != nil {
				refs[held]++
			}
			for sl, n := range refs {
				if sl.refs != n {
					t.Fatalf("seed %d step %d: a slab counts %d references; %d frames point into it", seed, step, sl.refs, n)
				}
			}
		}
		if maxSlots > 1<<10 {
			t.Fatalf("seed %d: %d slots for at most 2000 frames", seed, maxSlots)
		}
	}
}

// TestRecvQueueSmallFramesShareSlots (issue 15): a stream's small frames
// take a slot per slab, not one per frame: a window's worth of 64-byte
// frames, queued while the consumer is away, held 16,384 slots (640 KiB of
// pointers for the collector to scan) and now about one per 16 KiB slab.
func TestRecvQueueSmallFramesShareSlots(t *testing.T) {
	s := &Stream{copiedFirst: true}
	p := make([]byte, 64)
	const frames = DefaultStreamWindow / (64 + FrameOverhead)
	for range frames {
		s.recvQ.pushSmall(s.slabForLocked(runHeader+len(p)), p, false)
	}
	slabs := (frames*(runHeader+len(p)) + slabSize - 1) / slabSize
	if got, bound := s.recvQ.slots(), 2*slabs; got > bound {
		t.Fatalf("%d frames of %d bytes in %d slots; want at most %d (two per slab)", frames, len(p), got, bound)
	}
	for range frames {
		if c := s.recvQ.pop(); len(c.b) != len(p) {
			t.Fatalf("popped %d bytes; want %d", len(c.b), len(p))
		}
	}
	if s.recvQ.len() != 0 {
		t.Fatalf("%d frames left", s.recvQ.len())
	}
}

// TestRecvQueueSlotsAgainstAdversary (issue 15): what a peer can make a
// stream that does not read hold in queue slots, whatever frames it sends
// within its credit. Empty frames cost the least credit (FrameOverhead
// each) and took a slot each (4,096 slots, 160 KiB, for a 64 KiB window);
// in runs they take one or two. The most slots come from alternating a
// one-byte frame with one that keeps its own buffer (at least 2 KiB: half
// the smallest read buffer), each starting a slot.
func TestRecvQueueSlotsAgainstAdversary(t *testing.T) {
	const window = InitialWindow // a handler that has not read has granted no more
	// Each slot but the first is a frame of its own (at least 2,048 bytes
	// of payload), one after such a frame, or one after a slab filled past
	// slabSize-runHeader-maxSmall. The ring is that rounded up to a power
	// of two.
	bound := 2*(window/(2048+FrameOverhead)) + window/(slabSize-runHeader-maxSmall+1) + 3
	bound = 1 << bits.Len(uint(bound-1))
	for _, tc := range []struct {
		name    string
		message []int // payload sizes of the frames of one WebSocket message
	}{
		{"empty frames", make([]int, 256)},
		{"one-byte frames", slices.Repeat([]int{1}, 256)},
		{"a one-byte frame, a 2 KiB one", []int{1, 2048}},
		{"a one-byte frame, a 4 KiB one", []int{1, 4 << 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			streams := make(chan *Stream, 1)
			ws, _ := rawPeer(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
				streams <- s
				<-s.Context().Done()
			}})
			open, _ := proto.Marshal(&tetherv1.Open{Procedure: "/a/b"})
			writeFrames(t, ws, frame.Frame{Type: frame.TypeOpen, StreamID: 1, Payload: open})
			s := <-streams
			credit, frames := window, 0
			for done := false; !done; {
				var fs []frame.Frame
				for _, n := range tc.message {
					if credit < n+FrameOverhead {
						done = true
						break
					}
					credit -= n + FrameOverhead
					fs = append(fs, frame.Frame{Type: frame.TypeMessage, StreamID: 1, Payload: make([]byte, n)})
				}
				if len(fs) > 0 {
					writeFrames(t, ws, fs...)
					frames += len(fs)
				}
			}
			waitFor(t, 10*time.Second, "the frames queued", func() bool {
				live, _, _ := queueStats(s)
				return live == frames
			})
			_, slots, _ := queueStats(s)
			t.Logf("%d frames within a %d-byte window: %d slots (bound %d)", frames, window, slots, bound)
			if slots > bound {
				t.Fatalf("%d frames took %d slots; want at most %d", frames, slots, bound)
			}
		})
	}
}
