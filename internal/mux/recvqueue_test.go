package mux

import (
	"context"
	"io"
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
	q := s.recvQ
	for i := 0; i < q.n; i++ {
		ch := q.buf[(q.head+i)&(len(q.buf)-1)]
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
	}
	return held + q.slots()*int(unsafe.Sizeof(chunk{})), payload
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
		limit := 2*DefaultStreamWindow + slabSize + DefaultStreamWindow/FrameOverhead*int(unsafe.Sizeof(chunk{}))
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
