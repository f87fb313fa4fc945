package mux

import (
	"context"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// TestLoneStreamRunsOnItsReader (issue 15): the Accept of the connection's
// only running stream runs on the goroutine that read its OPEN (handOff),
// without waiting for a handler goroutine to wake, and another goroutine
// reads on: while that Accept blocks, a second stream is served (on a
// handler goroutine) and the client's PINGs are answered.
func TestLoneStreamRunsOnItsReader(t *testing.T) {
	release := make(chan struct{})
	type ran struct {
		msg   string
		stack string
	}
	accepted := make(chan ran, 2)
	scfg := Config{
		MaxPingRate: 1000, // the client's PINGs below, every 17.5 ms
		Route:       func(string) (any, bool, string) { return nil, true, "" },
		Accept: func(s *Stream, _ *tetherv1.Open) {
			buf := make([]byte, 16<<10)
			stack := string(buf[:runtime.Stack(buf, false)])
			msg, err := s.RecvMsg()
			if err != nil {
				accepted <- ran{"", stack}
				return
			}
			accepted <- ran{string(msg), stack}
			if string(msg) == "first" {
				select {
				case <-release:
				case <-s.Context().Done():
					return
				}
			}
			_ = s.FinishWith(nil, append([]byte("re:"), msg...), nil, nil)
		},
	}
	// The client PINGs every 20 ms and closes after 200 ms without an
	// answer: a server that stopped reading while the first Accept blocks
	// would lose the connection.
	cc, sc := pair(t, scfg, Config{PingInterval: 20 * time.Millisecond, PingTimeout: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	call := func(msg string) *Stream {
		t.Helper()
		s, sent, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/t.S/U"}, []byte(msg), true)
		if err != nil || !sent {
			t.Fatalf("Open %q: sent %v, %v", msg, sent, err)
		}
		return s
	}
	answer := func(s *Stream, want string) {
		t.Helper()
		msg, err := s.RecvMsg()
		if err != nil || string(msg) != "re:"+want {
			t.Fatalf("RecvMsg: %q, %v; want %q", msg, err, "re:"+want)
		}
		if _, err := s.RecvMsg(); err != io.EOF {
			t.Fatalf("end: %v, want io.EOF", err)
		}
	}

	first := call("first")
	if r := <-accepted; r.msg != "first" || !strings.Contains(r.stack, "(*Conn).handOff") {
		t.Fatalf("the lone stream's Accept (%q) did not run on its reader:\n%s", r.msg, r.stack)
	}
	second := call("second")
	if r := <-accepted; r.msg != "second" || strings.Contains(r.stack, "(*Conn).handOff") {
		t.Fatalf("the second stream's Accept (%q) ran on the reader while another stream ran:\n%s", r.msg, r.stack)
	}
	answer(second, "second")
	time.Sleep(300 * time.Millisecond) // PINGs go on while the first Accept blocks
	close(release)
	answer(first, "first")
	select {
	case <-cc.Done():
		t.Fatalf("connection closed: %v", cc.Err())
	case <-sc.Done():
		t.Fatalf("server connection closed: %v", sc.Err())
	default:
	}

	// The reader that took over hands the next lone stream off in turn.
	waitFor(t, 10*time.Second, "the first stream's Accept ended", func() bool {
		sc.mu.Lock()
		defer sc.mu.Unlock()
		return sc.running == 0
	})
	third := call("third")
	if r := <-accepted; r.msg != "third" || !strings.Contains(r.stack, "(*Conn).handOff") {
		t.Fatalf("the next lone stream's Accept (%q) did not run on its reader:\n%s", r.msg, r.stack)
	}
	answer(third, "third")
}

// TestShutdownWaitsForLoneAccept: Shutdown waits for the lone
// stream that runs on the old reader goroutine (running counts it), and it
// returns once that stream has finished.
func TestShutdownWaitsForLoneAccept(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	scfg := Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		started <- struct{}{}
		<-release
		_ = s.Finish(nil, nil)
	}}
	cc, sc := pair(t, scfg, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("x"), true)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	done := make(chan error, 1)
	go func() { done <- sc.Shutdown(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v while the lone Accept still ran", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := st.RecvMsg(); err == nil {
		t.Fatal("the call got a message; want its end")
	}
}

// TestLoneAcceptExactlyOnce: every stream that handleOpen
// accepted gets its Accept run exactly once, and running drops back to 0.
// This holds on each way out of the message loop with c.lone set:
//   - the message ends normally (handOff);
//   - a later frame of the same message is a protocol error (the defer's
//     startHandler);
//   - a second OPEN in the message, then an error;
//   - the peer goes away right after the message (the continuing reader
//     fails, and the handler still runs).
func TestLoneAcceptExactlyOnce(t *testing.T) {
	open, _ := proto.Marshal(&tetherv1.Open{Procedure: "/a/b"})
	op := func(id uint32) frame.Frame { return frame.Frame{Type: frame.TypeOpen, StreamID: id, Payload: open} }
	msg := func(id uint32, more bool) frame.Frame {
		f := frame.Frame{Type: frame.TypeMessage, StreamID: id, Payload: []byte("x")}
		if more {
			f.Flags = frame.FlagMore
		}
		return f
	}
	hc := func(id uint32) frame.Frame { return frame.Frame{Type: frame.TypeHalfClose, StreamID: id} }
	cases := []struct {
		name   string
		frames []frame.Frame
		ids    []uint32 // the streams handleOpen accepts
		close  bool     // the peer closes right after the message
	}{
		{"whole", []frame.Frame{op(1), msg(1, false), hc(1)}, []uint32{1}, false},
		{"half-close mid-message", []frame.Frame{op(1), msg(1, true), hc(1)}, []uint32{1}, false},
		{"second OPEN, then a bad OPEN", []frame.Frame{op(1), op(3), op(2)}, []uint32{1, 3}, false},
		{"peer gone after the message", []frame.Frame{op(1), msg(1, false), hc(1)}, []uint32{1}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for range 20 {
				var mu sync.Mutex
				runs := map[uint32]int{}
				scfg := Config{Accept: func(s *Stream, _ *tetherv1.Open) {
					mu.Lock()
					runs[s.ID()]++
					mu.Unlock()
					for {
						if _, err := s.RecvMsg(); err != nil {
							break
						}
					}
					_ = s.Finish(nil, nil)
				}}
				ws, sc := rawPeer(t, scfg)
				writeFrames(t, ws, tc.frames...)
				if tc.close {
					ws.Close()
				}
				waitFor(t, 10*time.Second, "every accepted stream's Accept", func() bool {
					mu.Lock()
					defer mu.Unlock()
					return len(runs) == len(tc.ids)
				})
				waitFor(t, 10*time.Second, "running back to 0", func() bool {
					sc.mu.Lock()
					defer sc.mu.Unlock()
					return sc.running == 0
				})
				time.Sleep(5 * time.Millisecond)
				mu.Lock()
				for _, id := range tc.ids {
					if runs[id] != 1 {
						t.Errorf("stream %d: Accept ran %d times", id, runs[id])
					}
				}
				mu.Unlock()
				ws.Close()
				sc.Close()
				<-sc.Done()
			}
		})
	}
}
