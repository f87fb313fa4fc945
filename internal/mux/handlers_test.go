package mux

import (
	"bytes"
	"runtime"
	"strconv"
	"testing"
	"time"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// goid returns the calling goroutine's id, from its stack's first line.
func goid() uint64 {
	var buf [64]byte
	b := bytes.TrimPrefix(buf[:runtime.Stack(buf[:], false)], []byte("goroutine "))
	id, _ := strconv.ParseUint(string(b[:bytes.IndexByte(b, ' ')]), 10, 64)
	return id
}

// TestHandlerGoroutinesReused (issue 15): once a stream's Accept returns,
// its goroutine waits for the next stream and runs it, instead of a new
// goroutine per stream; a zero job ends it, and so does waiting
// handlerIdle for nothing.
func TestHandlerGoroutinesReused(t *testing.T) {
	// Handler goroutines of earlier tests end first (a zero job, or their
	// handlerIdle), so that only this test's goroutine can take its jobs.
	for end := time.Now().Add(5 * handlerIdle); time.Now().Before(end); {
		select {
		case handlers.handoff <- acceptJob{}:
		default:
			time.Sleep(time.Millisecond)
		}
	}
	handlers.override.Store(int64(time.Minute))
	t.Cleanup(func() { handlers.override.Store(0) })
	base := runtime.NumGoroutine()
	ran := make(chan uint64, 1)
	c := &Conn{}
	c.cfg.Accept = func(*Stream, *tetherv1.Open) { ran <- goid() }
	startHandler(acceptJob{c: c, s: &Stream{}})
	first := <-ran
	for i := range 5 {
		// A send blocks until a goroutine waits: the one that ran the
		// last stream must, within its minute.
		select {
		case handlers.handoff <- acceptJob{c: c, s: &Stream{}}:
		case <-time.After(10 * time.Second):
			t.Fatalf("stream %d: no handler goroutine waited for it", i+2)
		}
		if g := <-ran; g != first {
			t.Fatalf("stream %d ran on goroutine %d, the first on %d", i+2, g, first)
		}
	}
	select {
	case handlers.handoff <- acceptJob{}:
	case <-time.After(10 * time.Second):
		t.Fatal("no handler goroutine waited for the zero job")
	}

	// Waiting handlerIdle for nothing ends it.
	handlers.override.Store(int64(time.Millisecond))
	startHandler(acceptJob{c: c, s: &Stream{}})
	<-ran
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines 10s after the last stream, %d before", runtime.NumGoroutine(), base)
		}
		time.Sleep(time.Millisecond)
	}
}
