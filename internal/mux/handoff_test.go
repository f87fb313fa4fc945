package mux

import (
	"context"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
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
		Route: func(string) (any, bool, string) { return nil, true, "" },
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
