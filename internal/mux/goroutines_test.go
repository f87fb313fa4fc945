package mux

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// goroutineID is the calling goroutine's number, from its stack trace.
func goroutineID() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	return strings.Fields(string(buf))[1]
}

// idleReaderGoroutines counts the reader goroutines waiting for a reader.
func idleReaderGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "mux.runReaders") && strings.Contains(g, "[select") {
			n++
		}
	}
	return n
}

// A reader goroutine whose loop returned runs the next reader loop, of any
// connection, instead of a new goroutine starting (and growing its stack
// again); it ends once it has waited readerIdle for none.
func TestReaderGoroutineReused(t *testing.T) {
	readerIdleOverride.Store(int64(time.Minute))
	t.Cleanup(func() { readerIdleOverride.Store(0) })
	ids := make(chan string, 1)
	goReader(func() { ids <- goroutineID() })
	first := <-ids
	waitFor(t, 10*time.Second, "the reader goroutine to wait for the next reader", func() bool { return idleReaderGoroutines() == 1 })
	goReader(func() { ids <- goroutineID() })
	if second := <-ids; second != first {
		t.Fatalf("the second reader ran on goroutine %s, not on the idle goroutine %s", second, first)
	}
	// A reader goroutine ends after readerIdle without a reader.
	readerIdleOverride.Store(int64(time.Millisecond))
	waitFor(t, 10*time.Second, "the idle reader goroutine to be waiting", func() bool { return idleReaderGoroutines() == 1 })
	goReader(func() {}) // runs on it, and it waits again with the short idle time
	waitFor(t, 10*time.Second, "the idle reader goroutine to end", func() bool { return idleReaderGoroutines() == 0 })
}
