package mux

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// writerRunning reports whether c's writer goroutine is running.
func writerRunning(c *Conn) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.wrunning
}

// TestUnaryWritesInline (issue 15): a unary call alone on its connection
// leaves in one write made by the calling goroutine, and the handler's answer
// by the handler's goroutine: neither side starts (or wakes) its writer
// goroutine. The call still completes, with its response.
func TestUnaryWritesInline(t *testing.T) {
	serverWriter := make(chan bool, 1)
	scfg := Config{
		StreamWindow: InitialWindow, // no deferred WINDOW grant: the handler writes only its answer
		Route:        func(string) (any, bool, string) { return nil, true, "" },
		Accept: func(s *Stream, _ *tetherv1.Open) {
			msg, err := s.RecvMsg()
			if err != nil {
				serverWriter <- true
				return
			}
			_ = s.FinishWith(nil, append([]byte("re:"), msg...), nil, nil)
			serverWriter <- writerRunning(s.c)
		},
	}
	cc, _ := pair(t, scfg, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, sent, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/t.S/U"}, []byte("hi"), true)
	if err != nil || !sent {
		t.Fatalf("Open: sent %v, %v", sent, err)
	}
	if writerRunning(cc) {
		t.Error("client: the writer goroutine was started for a unary call alone on its connection")
	}
	msg, err := s.RecvMsg()
	if err != nil || string(msg) != "re:hi" {
		t.Fatalf("RecvMsg: %q, %v", msg, err)
	}
	if _, err := s.RecvMsg(); err != io.EOF {
		t.Fatalf("end: %v, want io.EOF", err)
	}
	if <-serverWriter {
		t.Error("server: the writer goroutine was started for the answer of a call alone on its connection")
	}
}

// TestConcurrentCallsUseWriter (issue 15): with another stream open on the
// connection, a unary call's frames go to the writer goroutine, which
// batches the frames of concurrent calls into shared writes.
func TestConcurrentCallsUseWriter(t *testing.T) {
	scfg := Config{
		Route: func(p string) (any, bool, string) { return nil, p == "/t.S/U", "" },
		Accept: func(s *Stream, _ *tetherv1.Open) {
			msg, err := s.RecvMsg()
			if err != nil {
				return
			}
			_ = s.FinishWith(nil, msg, nil, nil)
		},
	}
	cc, _ := pair(t, scfg, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A streaming call stays open (no message, no HALF_CLOSE): its OPEN
	// starts the writer goroutine, which then lingers; wait until it has
	// exited so that only the unary call below can start it again.
	bidi, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/t.S/B"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	defer bidi.Reset(io.EOF)
	waitFor(t, 10*time.Second, "the writer goroutine to exit", func() bool { return !writerRunning(cc) })
	s, sent, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/t.S/U"}, []byte("x"), true)
	if err != nil || !sent {
		t.Fatalf("Open: sent %v, %v", sent, err)
	}
	if !writerRunning(cc) {
		t.Error("a unary call beside another stream was written inline, not by the writer goroutine")
	}
	if msg, err := s.RecvMsg(); err != nil || string(msg) != "x" {
		t.Fatalf("RecvMsg: %q, %v", msg, err)
	}
}

// TestSingleRequestNoWindow (issue 15): a handler of a procedure that takes
// one request, reading a request that has arrived whole, sends no WINDOW
// frame (before, it granted the rest of its window on its first read unless
// the HALF_CLOSE had already been handled, which cost a write per call);
// a request larger than the initial window still flows, the window being
// granted when the handler has to wait for it.
func TestSingleRequestNoWindow(t *testing.T) {
	type result struct {
		msgLen int
		err    error
		wrote  int // bytes the server queued or wrote before answering
	}
	results := make(chan result, 1)
	scfg := Config{
		Route: func(string) (any, bool, string) { return nil, true, "" },
		Accept: func(s *Stream, _ *tetherv1.Open) {
			if s.ID() == 1 { // the first call's request fits the initial window
				// Wait until the whole request is queued, so that the
				// handler's read does not race the reader.
				deadline := time.Now().Add(10 * time.Second)
				for time.Now().Before(deadline) {
					s.mu.Lock()
					queued := s.recvQ.len() > 0 && !s.midMessage
					s.mu.Unlock()
					if queued {
						break
					}
					time.Sleep(time.Millisecond)
				}
			}
			msg, err := s.RecvMsg()
			results <- result{len(msg), err, s.c.QueuedBytes() + int(s.c.BytesOut())}
			_ = s.FinishWith(nil, []byte("ok"), nil, nil)
		},
	}
	cc, _ := pair(t, scfg, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A request that fits the initial window, not half-closed: the
	// handler's read finds it whole and grants nothing.
	s, sent, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/t.S/U"}, []byte("small"), false)
	if err != nil || !sent {
		t.Fatalf("Open: sent %v, %v", sent, err)
	}
	r := <-results
	if r.err != nil || r.msgLen != 5 {
		t.Fatalf("handler read %d bytes, %v", r.msgLen, r.err)
	}
	if r.wrote != 0 {
		t.Errorf("the server wrote %d bytes before its answer (a WINDOW frame), want none", r.wrote)
	}
	if _, err := s.RecvMsg(); err != nil {
		t.Fatal(err)
	}

	// A request over the initial window: the server grants credit when
	// its handler waits, and the request arrives whole.
	big := make([]byte, 3*InitialWindow)
	s2, sent, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/t.S/U"}, big, true)
	if err != nil || sent {
		t.Fatalf("Open: sent %v, %v", sent, err)
	}
	errc := make(chan error, 1)
	go func() {
		if err := s2.SendMsg(ctx, big); err != nil {
			errc <- err
			return
		}
		errc <- s2.CloseSend(ctx)
	}()
	r = <-results
	if r.err != nil || r.msgLen != len(big) {
		t.Fatalf("handler read %d bytes, %v; want %d", r.msgLen, r.err, len(big))
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestSlowWriteStopsInline (issue 15): after a socket write that took over
// slowWrite (a full socket: the peer is not reading), a lone unary call's
// frames go to the writer goroutine, so that the caller is not held by the
// socket.
func TestSlowWriteStopsInline(t *testing.T) {
	scfg := Config{
		Route: func(string) (any, bool, string) { return nil, true, "" },
		Accept: func(s *Stream, _ *tetherv1.Open) {
			if msg, err := s.RecvMsg(); err == nil {
				_ = s.FinishWith(nil, msg, nil, nil)
			}
		},
	}
	cc, _ := pair(t, scfg, Config{})
	cc.wmu.Lock()
	cc.wslow = true // as writeBatch leaves it after a slow write
	cc.wmu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, sent, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/t.S/U"}, []byte("x"), true)
	if err != nil || !sent {
		t.Fatalf("Open: sent %v, %v", sent, err)
	}
	if !writerRunning(cc) {
		t.Error("a unary call was written inline after a slow write")
	}
	if msg, err := s.RecvMsg(); err != nil || string(msg) != "x" {
		t.Fatalf("RecvMsg: %q, %v", msg, err)
	}
}

// TestAnswersWriteInline (issue 15): on a stream alone on its connection, a
// message that answers one the peer sent (a bidi ping-pong) is written by
// the sending goroutine, with no hand-off to the writer goroutine; messages
// sent back to back go to the writer goroutine, which batches them: only
// the first of a burst is written inline.
func TestAnswersWriteInline(t *testing.T) {
	const rounds, burst = 5, 8
	handled := make(chan [2]uint32, 1)
	scfg := Config{
		PingInterval: time.Hour,
		PingTimeout:  time.Hour,
		StreamWindow: InitialWindow, // no WINDOW grant between messages
		Route:        func(string) (any, bool, string) { return nil, false, "" },
		Accept: func(s *Stream, _ *tetherv1.Open) {
			reply := &tetherv1.Open{Procedure: "re"}
			var counts [2]uint32
			for range rounds { // ping-pong
				if _, err := s.RecvMsg(); err != nil {
					return
				}
				before := s.c.inlines.Load()
				if err := s.SendProto(context.Background(), reply); err != nil {
					return
				}
				counts[0] += s.c.inlines.Load() - before
			}
			if _, err := s.RecvMsg(); err != nil {
				return
			}
			before := s.c.inlines.Load()
			for range burst { // one request, a burst of answers
				if err := s.SendProto(context.Background(), reply); err != nil {
					return
				}
			}
			counts[1] = s.c.inlines.Load() - before
			handled <- counts
			_ = s.Finish(nil, nil)
		},
	}
	cc, _ := pair(t, scfg, Config{PingInterval: time.Hour, PingTimeout: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/t.S/B"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	for range rounds {
		if err := s.SendMsg(ctx, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RecvMsg(); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SendMsg(ctx, []byte("go")); err != nil {
		t.Fatal(err)
	}
	for range burst {
		if _, err := s.RecvMsg(); err != nil {
			t.Fatal(err)
		}
	}
	counts := <-handled
	if counts[0] != rounds {
		t.Errorf("%d of %d answers in a ping-pong were written inline", counts[0], rounds)
	}
	if counts[1] > 1 {
		t.Errorf("%d of a burst of %d messages were written inline; want only the first (the rest batched by the writer)", counts[1], burst)
	}
}

// TestMarshalPanicReleasesQueue (review): a panic while a message is built
// into the writer's queue (marshalled under its lock) goes on to the
// sender, and the connection's other streams still write: the queue's lock
// is released and the half-built frame dropped.
func TestMarshalPanicReleasesQueue(t *testing.T) {
	cc, _ := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		msg, err := s.RecvMsg()
		if err != nil {
			return
		}
		_ = s.FinishWith(nil, msg, nil, nil)
	}}, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/t.S/B"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the panic in fn did not reach the sender")
			}
		}()
		_ = cc.write(ctx, nil, func(b []byte) []byte {
			b = append(b, "half a frame"...)
			panic("message changed while it was marshalled")
		})
	}()
	s.Reset(tether.Errorf(tether.CodeCanceled, "done"))
	// Another call on the connection goes through.
	u, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/t.S/U"}, []byte("hi"), true)
	if err != nil {
		t.Fatal(err)
	}
	if msg, err := u.RecvMsg(); err != nil || string(msg) != "hi" {
		t.Fatalf("a call after the panic: %q, %v", msg, err)
	}
}

// TestWriterExitsAfterFramesQueuedAtLinger (issue 15): the writer's linger
// timer is re-armed only after it fired (writeLoop). When it fires as
// frames are being queued, the writer writes them and must still exit once
// idle again: a timer left fired and not re-armed would keep the writer
// (and its buffers) for the connection's life.
func TestWriterExitsAfterFramesQueuedAtLinger(t *testing.T) {
	cc, _ := pair(t, Config{}, Config{})
	ping := func(b []byte) []byte {
		return frame.Append(b, frame.Frame{Type: frame.TypePing, Payload: make([]byte, frame.PingPayloadSize)})
	}
	written := func() bool {
		cc.wmu.Lock()
		defer cc.wmu.Unlock()
		return len(cc.wbuf) == 0 && !cc.wbusy
	}
	cc.writeUrgent(ping) // starts the writer, which writes and arms its timer
	waitFor(t, 5*time.Second, "the writer to write the first PING", written)
	cc.writeUrgent(ping) // a batch after the timer was armed: its first firing re-arms it
	waitFor(t, 5*time.Second, "the writer to write the second PING", written)
	// The second firing, with nothing written since the first, finds the
	// queue held; a frame is queued before the writer can look at it.
	time.Sleep(writerLinger * 3 / 2)
	cc.wmu.Lock()
	time.Sleep(writerLinger * 3 / 2)
	cc.wbuf = ping(cc.wbuf)
	cc.kickLocked()
	cc.wmu.Unlock()
	waitFor(t, 5*time.Second, "the writer to exit once idle again", func() bool { return !writerRunning(cc) })
}

// TestWriterLingers: a writer that wrote one batch exits between
// writerLinger and twice that afterwards.
func TestWriterLingers(t *testing.T) {
	cc, _ := pair(t, Config{}, Config{})
	start := time.Now()
	cc.writeUrgent(func(b []byte) []byte {
		return frame.Append(b, frame.Frame{Type: frame.TypePing, Payload: make([]byte, frame.PingPayloadSize)})
	})
	waitFor(t, 5*time.Second, "the writer to exit", func() bool { return !writerRunning(cc) })
	if took := time.Since(start); took < writerLinger {
		t.Errorf("the writer exited %v after its batch; want at least %v", took, writerLinger)
	}
}
