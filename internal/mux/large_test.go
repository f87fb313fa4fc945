package mux

import (
	"bytes"
	"context"
	"math"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// fill returns n bytes that depend on seed, so that a message mixed up with
// another (or overwritten by a recycled buffer) shows.
func fill(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestFragmentedMessageAssembledOnce (issue 15): a message whose fragments
// are all queued when the receiver takes the first is assembled in one
// buffer of its own size. Before, the buffer was made for the first
// fragment and regrown (doubled, and copied) for the last: a 40,000-byte
// message of 32 KiB and 7,232 bytes took 64 KiB, two allocations and two
// copies.
func TestFragmentedMessageAssembledOnce(t *testing.T) {
	type got struct {
		msg []byte
		err error
	}
	msgs := make(chan got, 1)
	// Earlier tests leave large buffers in the pools (bigbuf.go), and a
	// pooled buffer may be up to twice the message: empty them, so that
	// the buffer is made for this message.
	drainBigPools()
	ws, _ := rawPeer(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		// Both fragments come in one WebSocket message, but the reader
		// queues them one after the other: wait until both are queued,
		// the case this test is about (a receiver that takes the first
		// before the second is queued sizes the buffer by doubling).
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			s.mu.Lock()
			n := s.recvQ.len()
			s.mu.Unlock()
			if n >= 2 {
				break
			}
		}
		m, err := s.RecvMsg()
		msgs <- got{m, err}
		_ = s.Finish(nil, nil)
	}})
	open, _ := proto.Marshal(&tetherv1.Open{Procedure: "/a/b"})
	msg := fill(1, 40000)
	writeFrames(t, ws,
		frame.Frame{Type: frame.TypeOpen, StreamID: 1, Payload: open},
		frame.Frame{Type: frame.TypeMessage, Flags: frame.FlagMore, StreamID: 1, Payload: msg[:32<<10]},
		frame.Frame{Type: frame.TypeMessage, StreamID: 1, Payload: msg[32<<10:]},
	)
	select {
	case g := <-msgs:
		if g.err != nil {
			t.Fatal(g.err)
		}
		if !bytes.Equal(g.msg, msg) {
			t.Fatalf("message of %d bytes arrived as %d different bytes", len(msg), len(g.msg))
		}
		// The runtime rounds a large allocation up to 8 KiB pages.
		if c := cap(g.msg); c > len(msg)+8<<10 {
			t.Errorf("assembled in a buffer of %d bytes for a message of %d; want it sized to the message", c, len(msg))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no message after 30s")
	}
}

// TestSendMsgFragmentsLeaveTogether (issue 15): the fragments of a message
// that the sender's credit covers are queued together, so that they leave
// in one WebSocket message: a message a little over 64 KiB no longer goes
// out as a frame and then a 9-byte sliver in a write of its own (and the
// receiver can size the buffer from what is queued). And a backlog of
// large frames leaves in WebSocket messages of at most maxWriteMessage
// (before, up to 1 MiB), so that the receiver, which reads a whole
// message before it handles its frames, starts on the first message (and
// grants credit back for it) before the backlog has crossed.
func TestSendMsgFragmentsLeaveTogether(t *testing.T) {
	const msgs = 100
	type result struct{ splits, largest int }
	split := make(chan result, 1)
	cc := rawServer(t, Config{}, func(ws *websocket.Conn) {
		if _, _, err := ws.ReadMessage(); err != nil { // OPEN
			return
		}
		var b []byte
		b = frame.AppendWindow(b, 1, 1<<30)
		if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
			return
		}
		// Not reading for a while lets the sender's queue fill up (it
		// makes a backlog likely; the assertions do not depend on it).
		time.Sleep(200 * time.Millisecond)
		var m messageTally
		largest := 0
		for m.seen < msgs {
			n, ok := m.read(t, ws)
			if !ok {
				return
			}
			largest = max(largest, n)
		}
		split <- result{m.splits, largest} // splits: a message's fragments in two WebSocket messages
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	})
	msg := sendMessages(t, cc, msgs, 64<<10+9)
	select {
	case r := <-split:
		if r.splits > 0 {
			t.Errorf("%d of %d messages of %d bytes left in two WebSocket messages; want their fragments together", r.splits, msgs, len(msg))
		}
		if r.largest > maxWriteMessage {
			t.Errorf("a WebSocket message of %d bytes; want at most %d", r.largest, maxWriteMessage)
		}
	case <-time.After(time.Minute):
		t.Fatal("the peer did not receive every message")
	}
}

// TestLargeMessagesPooledBuffers (issue 15): large messages are marshalled,
// copied in and assembled in pooled buffers (bigbuf.go), recycled once the
// caller is done with a message (its next RecvMsg). Every message arrives
// whole and unchanged, whatever its size and fragmentation, and a stream's
// first message, which the caller may keep, is never recycled.
func TestLargeMessagesPooledBuffers(t *testing.T) {
	sizes := []int{40000, 64<<10 + 9, 64 << 10, 200000, 33000, 3 << 20, 64<<10 + 9, 100, 70000, 1 << 20}
	cc, _ := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		if _, err := s.RecvMsg(); err != nil {
			return
		}
		for i, n := range sizes {
			for j := range 3 {
				m := &wrapperspb.BytesValue{Value: fill(uint64(10*i+j), n)}
				if err := s.SendProto(s.Context(), m); err != nil {
					return
				}
			}
		}
		_ = s.Finish(nil, nil)
	}}, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("go"), true)
	if err != nil {
		t.Fatal(err)
	}
	var first []byte
	for i, n := range sizes {
		for j := range 3 {
			b, err := s.RecvMsg()
			if err != nil {
				t.Fatalf("message %d.%d: %v", i, j, err)
			}
			if first == nil {
				first = b // kept without a copy, as a unary caller does
			}
			var m wrapperspb.BytesValue
			if err := proto.Unmarshal(b, &m); err != nil {
				t.Fatalf("message %d.%d: %v", i, j, err)
			}
			if !bytes.Equal(m.Value, fill(uint64(10*i+j), n)) {
				t.Fatalf("message %d.%d of %d bytes arrived changed", i, j, n)
			}
		}
	}
	if _, err := s.RecvMsg(); err == nil {
		t.Fatal("a message after the last")
	}
	var m wrapperspb.BytesValue
	if err := proto.Unmarshal(first, &m); err != nil || !bytes.Equal(m.Value, fill(0, sizes[0])) {
		t.Fatalf("the stream's first message changed after later messages (%v)", err)
	}
}

// TestLargeFramesReuseBuffers (issue 15): a stream of large messages, each
// one frame in a WebSocket message of its own, allocates no buffer per
// message on receipt once warm: a large frame is copied into a pooled
// buffer and the read buffer is reused. Before, a frame at least half its
// read buffer kept that buffer, so the next message was read into a new
// one, grown by doubling from 4 KiB.
func TestLargeFramesReuseBuffers(t *testing.T) {
	const (
		size = 60000
		warm = 20
		msgs = 300
	)
	msg := fill(7, size)
	wsMsg := frame.Append(nil, frame.Frame{Type: frame.TypeMessage, StreamID: 1, Payload: msg})
	cc := rawServer(t, Config{}, func(ws *websocket.Conn) {
		credit := InitialWindow
		// take reads the client's frames (the first time, at least its
		// OPEN) until credit covers one message.
		opened := false
		take := func() bool {
			for !opened || credit < size+FrameOverhead {
				opened = true
				_, m, err := ws.ReadMessage()
				if err != nil {
					return false
				}
				for len(m) > 0 {
					f, rest, err := frame.Parse(m)
					if err != nil {
						return false
					}
					if f.Type == frame.TypeWindow {
						credit += int(frame.WindowIncrement(f))
					}
					m = rest
				}
			}
			return true
		}
		for range warm + msgs {
			if !take() {
				return
			}
			credit -= size + FrameOverhead
			if ws.WriteMessage(websocket.BinaryMessage, wsMsg) != nil {
				return
			}
		}
		_ = ws.WriteMessage(websocket.BinaryMessage, frame.Append(nil, frame.Frame{Type: frame.TypeEnd, StreamID: 1, Payload: okEnd}))
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("go"), true)
	if err != nil {
		t.Fatal(err)
	}
	var before runtime.MemStats
	for i := range warm + msgs {
		if i == warm {
			runtime.ReadMemStats(&before)
		}
		b, err := s.RecvMsg()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(b, msg) {
			t.Fatalf("message %d arrived changed", i)
		}
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	// The peer runs here too; a sync.Pool loses its buffers at every
	// other garbage collection, so some allocation remains.
	per := float64(after.TotalAlloc-before.TotalAlloc) / msgs
	t.Logf("%.0f bytes allocated per %d-byte message", per, size)
	if raceOn {
		return // the race detector's sync.Pool drops buffers at random
	}
	if per > size/2 {
		t.Errorf("%.0f bytes allocated per %d-byte message; want well under one message's size", per, size)
	}
}

// TestFirstFragmentBecomesAssemblyBuffer (issue 15): the first fragment of
// a message a little over one frame is copied in with room for the rest,
// and its buffer becomes the one the message is assembled in, so the
// receiver copies only the sliver that follows (before: a second 64 KiB
// copy per message).
func TestFirstFragmentBecomesAssemblyBuffer(t *testing.T) {
	_, sc := pair(t, Config{}, Config{})
	s := sc.newStream(2, nil)
	s.copiedFirst = true // past the stream's first payload, copied on its own
	msg := fill(3, 64<<10+9)
	s.mu.Lock()
	defer s.mu.Unlock()
	first, fsl := s.copyInLocked(msg[:64<<10], adoptRoom)
	s.recvQ.push(chunk{b: first, more: true, slab: fsl})
	last := append([]byte(nil), msg[64<<10:]...)
	s.recvQ.push(chunk{b: last})
	ch := s.recvQ.pop()
	kept, err := s.assembleLocked(ch)
	if err != nil || !kept {
		t.Fatalf("first fragment: kept %v, %v; want it kept as the message's buffer", kept, err)
	}
	if kept, err := s.assembleLocked(s.recvQ.pop()); err != nil || kept {
		t.Fatalf("last fragment: kept %v, %v", kept, err)
	}
	if !bytes.Equal(s.assembly, msg) {
		t.Fatal("message assembled wrong")
	}
	if &s.assembly[0] != &first[0] {
		t.Error("the message was assembled in a new buffer; want the first fragment's")
	}
	if got := sc.partialBytes.Load(); got != int64(cap(first)) {
		t.Errorf("partial bytes %d; want the buffer's capacity %d", got, cap(first))
	}
	s.dropAssemblyLocked()
	if got := sc.partialBytes.Load(); got != 0 {
		t.Errorf("partial bytes %d after the message was dropped; want 0", got)
	}
}

// TestBigBuffersWithinTwice: a pooled buffer is never more than twice what
// was asked for, whatever the pool holds, so that a queued large frame's
// buffer stays within twice its payload (TestQueuedMemoryWithinCredit's
// bound, which a fresh pool would not exercise).
func TestBigBuffersWithinTwice(t *testing.T) {
	for _, c := range []int{33 << 10, 100 << 10, 255 << 10, 1 << 20} {
		putBig(&slab{buf: make([]byte, 0, c)})
	}
	for _, n := range []int{minBig, 40000, 64<<10 + 9, 70000, 130000, 600000} {
		for range 4 {
			sl := getBig(n)
			if c := cap(sl.buf); c < n || c > 2*n {
				t.Errorf("getBig(%d): capacity %d; want %d to %d", n, c, n, 2*n)
			}
			putBig(sl)
		}
	}
	// A large frame copied in with room for the rest of its message
	// (copyInLocked): still within twice its payload.
	s := &Stream{copiedFirst: true}
	for _, n := range []int{minBig, 40000, 64 << 10} {
		for range 4 {
			b, sl := s.copyInLocked(make([]byte, n), adoptRoom)
			if c := cap(b); c > 2*n {
				t.Errorf("a %d-byte frame copied in with room: capacity %d; want at most %d", n, c, 2*n)
			}
			putBig(sl)
		}
	}
}

// TestBigPoolsReuseFittingBuffers: a pooled buffer too small for a request
// does not keep the request from the buffers that fit. With one pool per
// power of two, a 64 KiB buffer (a 64 KiB frame's) sat in the pool that a
// 72 KiB request (a 64 KiB first fragment with room for the rest of its
// message) looked in first; the request put it back where the next one
// found it again, and allocated: an upload of 64 KiB messages allocated a
// new buffer for most of its messages while the collector left the pools
// alone. Above 1 MiB, where a class spans a power of two, a buffer too
// small for a request is dropped rather than put back, so that the class
// fills with buffers its requests can use.
func TestBigPoolsReuseFittingBuffers(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // a collection empties the pools
	// One P: a sync.Pool keeps a buffer per P first, and which P a put
	// lands on would decide what the next get finds.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	drainBigPools()
	defer drainBigPools()
	sizes := []int{64 << 10, 72 << 10, 40 << 10, 100 << 10, 1<<20 + 8<<10, 3 << 20}
	for _, c := range sizes {
		putBig(&slab{buf: make([]byte, 0, c)})
	}
	// Requests that each of those buffers fits within twice: after the
	// first round every one is served from the pools.
	reqs := []struct{ n, limit int }{
		{64<<10 + 8<<10, 128 << 10}, // a first fragment of 64 KiB with room (readMessage)
		{64 << 10, 128 << 10},       // a 64 KiB frame
		{40000, 80000},
		{65540, 131080}, // a marshalled 64 KiB message (sendLargeProto)
		{1<<20 + 100, 2<<20 + 200},
		{3 << 20, 6 << 20},
		// Two sizes in one power of two above 1 MiB: the smaller's
		// buffer must not turn the larger's requests into allocations.
		{1_200_000, 2_400_000},
		{1_500_000, 3_000_000},
	}
	// Every capacity a pool can hold is in the class that takes it back.
	for c := minBig; c <= 16<<20; c += bigPage * (1 + c/(256<<10)) {
		k := bigClass(c)
		if k < 0 || k >= len(bigPools) {
			t.Fatalf("bigClass(%d) = %d, outside the %d pools", c, k, len(bigPools))
		}
	}
	if k := bigClass(32 << 20); k != -1 {
		t.Errorf("bigClass(32 MiB) = %d; want -1 (not pooled)", k)
	}
	round := func() {
		for _, r := range reqs {
			sl := getBigWithin(r.n, r.limit)
			if c := cap(sl.buf); c < r.n || c > r.limit {
				t.Fatalf("getBigWithin(%d, %d): capacity %d", r.n, r.limit, c)
			}
			putBig(sl)
		}
	}
	round()
	if raceOn {
		return // the race detector's sync.Pool drops buffers at random (.ci/run runs this without it)
	}
	if a := testing.AllocsPerRun(50, round); a != 0 {
		t.Errorf("%.1f allocations per round of %d requests that pooled buffers fit; want 0", a, len(reqs))
	}
}

// TestSmallFramesLeaveInBoundedMessages (issue 15): a backlog of small
// frames leaves in WebSocket messages of at most maxSmallWriteMessage
// (before, up to the stream's window in one message), so that the
// receiver, which reads a whole message before it hands any frame to the
// consumer, starts on the first frames while the rest cross. Every message
// still arrives, in order.
func TestSmallFramesLeaveInBoundedMessages(t *testing.T) {
	const msgs, size = 2000, 1024
	type result struct{ largest, wsMessages int }
	got := make(chan result, 1)
	cc := rawServer(t, Config{}, func(ws *websocket.Conn) {
		seen, largest, n := 0, 0, 0
		for seen < msgs {
			_, m, err := ws.ReadMessage()
			if err != nil {
				return
			}
			largest, n = max(largest, len(m)), n+1
			if n == 1 { // the OPEN, maybe with the first window's messages
				if err := ws.WriteMessage(websocket.BinaryMessage, frame.AppendWindow(nil, 1, 1<<30)); err != nil {
					return
				}
				// Not reading for a while lets the sender's queue fill
				// up (it makes a backlog likely; the assertions do not
				// depend on it).
				time.Sleep(200 * time.Millisecond)
			}
			for len(m) > 0 {
				f, rest, err := frame.Parse(m)
				if err != nil {
					t.Error(err)
					return
				}
				if f.Type == frame.TypeMessage {
					if len(f.Payload) != size || f.Payload[0] != byte(seen) {
						t.Errorf("message %d: %d bytes, first %d", seen, len(f.Payload), f.Payload[0])
					}
					seen++
				}
				m = rest
			}
		}
		got <- result{largest, n}
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, size)
	for i := range msgs {
		msg[0] = byte(i)
		if err := s.SendMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case r := <-got:
		if r.largest > maxSmallWriteMessage {
			t.Errorf("a WebSocket message of %d bytes (%d messages for %d frames of %d bytes); want at most %d", r.largest, r.wsMessages, msgs, size, maxSmallWriteMessage)
		}
	case <-ctx.Done():
		t.Fatal("the peer did not receive every message")
	}
}

// drainBigPools empties the pools of large buffers (bigbuf.go), so that a
// test sees the buffers its own traffic makes.
func drainBigPools() {
	for i := range bigPools {
		for bigPools[i].Get() != nil {
		}
	}
}

// TestPartialBudgetHoldsItsMessages: MaxPartialBytes holds as many messages
// of MaxMessageSize as it holds multiples of it, one of them when it is as
// small as it may be, whatever the pool holds and whether or not the size
// is a whole number of pages. The budget is charged a buffer's capacity:
// given pooled buffers of 5.5 MiB (a pooled buffer may be up to twice the
// message), two streams' 3 MiB messages took 11 MiB of a 12 MiB budget and
// the third was reset with resource_exhausted, a lone 3 MiB message passed
// a 3 MiB budget the same way, and four messages of 10,000,000 bytes each
// rounded up to a page did not fit 40,000,000.
func TestPartialBudgetHoldsItsMessages(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // a collection empties the pools
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))  // the puts and the gets on one P
	for _, tc := range []struct {
		size, budget, pooled int // budget 0: the default, 4 × size
	}{
		{3 << 20, 3 << 20, 11 << 19},
		{3 << 20, 12 << 20, 11 << 19},
		{10_000_000, 0, 0},
		{3<<20 + 1000, 0, 0},
	} {
		_, sc := pair(t, Config{MaxMessageSize: tc.size, MaxPartialBytes: tc.budget}, Config{})
		n := max(tc.budget, 4*tc.size) / tc.size
		msg := fill(5, tc.size)
		drainBigPools()
		for range n {
			if tc.pooled > 0 {
				putBig(&slab{buf: make([]byte, 0, tc.pooled)}) // within twice the message
			}
		}
		if tc.budget > 0 {
			n = tc.budget / tc.size
		}
		for i := range n {
			s := sc.newStream(uint32(2*i+2), nil)
			s.mu.Lock()
			for off := 0; off < tc.size; off += frame.MaxPayload {
				end := min(off+frame.MaxPayload, tc.size)
				s.recvQ.push(chunk{b: msg[off:end], more: end < tc.size})
			}
			for s.recvQ.len() > 0 {
				if _, err := s.assembleLocked(s.recvQ.pop()); err != nil {
					s.mu.Unlock()
					t.Fatalf("%d-byte messages, budget %d: message %d of %d: %v", tc.size, sc.cfg.MaxPartialBytes, i+1, n, err)
				}
			}
			if !bytes.Equal(s.assembly, msg) {
				t.Fatal("message assembled wrong")
			}
			s.mu.Unlock()
		}
		drainBigPools()
	}
}

// TestFirstFragmentAdoptedWithinBudget: a message's first fragment, read
// into a buffer with room for the rest (copyInLocked), becomes the message's
// buffer only if that buffer is within a page of the message and the budget
// holds it; else the message is assembled in a buffer of its size. A
// 65 KiB message under a 65 KiB budget was reset with resource_exhausted for
// its 72 KiB first fragment, and the fourth of four 64 KiB messages in
// fragments of 60 and 4 KiB under the default budget (4 × 64 KiB), after
// three adopted 68 KiB buffers.
func TestFirstFragmentAdoptedWithinBudget(t *testing.T) {
	for _, tc := range []struct{ size, budget, first, streams int }{
		{65 << 10, 65 << 10, frame.MaxPayload, 1},
		{64 << 10, 0, 60 << 10, 4},
	} {
		_, sc := pair(t, Config{MaxMessageSize: tc.size, MaxPartialBytes: tc.budget}, Config{})
		msg := fill(7, tc.size)
		for i := range tc.streams {
			s := sc.newStream(uint32(2*i+2), nil)
			s.mu.Lock()
			s.copiedFirst = true // past the stream's first payload, copied on its own
			b, sl := s.copyInLocked(msg[:tc.first], adoptRoom)
			s.recvQ.push(chunk{b: b, more: true, slab: sl})
			s.recvQ.push(chunk{b: msg[tc.first:]})
			for s.recvQ.len() > 0 {
				ch := s.recvQ.pop()
				kept, err := s.assembleLocked(ch)
				if err != nil {
					s.mu.Unlock()
					t.Fatalf("%d-byte messages, budget %d: message %d of %d: %v", tc.size, sc.cfg.MaxPartialBytes, i+1, tc.streams, err)
				}
				if !kept {
					s.releaseLocked(ch.slab)
				}
			}
			if !bytes.Equal(s.assembly, msg) {
				t.Fatal("message assembled wrong")
			}
			s.mu.Unlock()
		}
	}
}

// TestMaxPartialBytesPageSlackSaturates: the last page's slack added to
// MaxPartialBytes (MaxMessageSize not whole pages) does not overflow a
// budget of math.MaxInt, the natural way to say unbounded: it wrapped to a
// negative budget, and every message to be assembled was refused.
func TestMaxPartialBytesPageSlackSaturates(t *testing.T) {
	c := Config{MaxMessageSize: 100000, MaxPartialBytes: math.MaxInt}
	c.withDefaults()
	if c.MaxPartialBytes != math.MaxInt {
		t.Errorf("MaxPartialBytes %d; want math.MaxInt", c.MaxPartialBytes)
	}
	c = Config{MaxMessageSize: 100000}
	c.withDefaults()
	if want := 4*100000 + 4*(106496-100000); c.MaxPartialBytes != want {
		t.Errorf("default MaxPartialBytes %d for messages of 100,000 bytes (106,496 in pages); want %d", c.MaxPartialBytes, want)
	}
}
