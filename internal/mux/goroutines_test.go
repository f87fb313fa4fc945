package mux

import (
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// goroutineID is the calling goroutine's number, from its stack trace.
func goroutineID() int {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	id, _ := strconv.Atoi(strings.Fields(string(buf))[1])
	return id
}

// goroutineIDs returns the numbers of all goroutines, and of those that
// wait in a reused goroutine (workers) for a job.
func goroutineIDs() (all, idle []int) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		f := strings.Fields(g)
		if len(f) < 3 || f[0] != "goroutine" {
			continue
		}
		id, _ := strconv.Atoi(f[1])
		all = append(all, id)
		if strings.Contains(g, "mux.(*workers[...]).loop") && strings.HasPrefix(f[2], "[select") {
			idle = append(idle, id)
		}
	}
	return all, idle
}

// A reader goroutine whose loop returned runs the next reader loop, of any
// connection, instead of a new goroutine starting (and growing its stack
// again); it ends once it has waited readerIdle for none.
func TestReaderGoroutineReused(t *testing.T) {
	readers.override.Store(int64(time.Minute))
	t.Cleanup(func() { readers.override.Store(0) })
	ids := make(chan int, 1)
	goReader(func() { ids <- goroutineID() })
	first := <-ids
	var all []int
	waitFor(t, 10*time.Second, "the reader goroutine to wait for the next reader", func() bool {
		var idle []int
		all, idle = goroutineIDs()
		for _, id := range idle {
			if id == first {
				return true
			}
		}
		return false
	})
	// A new goroutine would have a number above every one that exists.
	newest := 0
	for _, id := range all {
		newest = max(newest, id)
	}
	goReader(func() { ids <- goroutineID() })
	if second := <-ids; second > newest {
		t.Fatalf("the second reader ran on a new goroutine (%d), not on an idle one (%d was)", second, first)
	}
	// Idle reader goroutines end after readerIdle without a reader: each
	// one handed a reader with the short idle time ends soon after.
	readers.override.Store(int64(time.Millisecond))
	waitFor(t, 10*time.Second, "the idle reader goroutines to end", func() bool {
		if _, idle := goroutineIDs(); len(idle) > 0 {
			goReader(func() {}) // an idle one runs it, then waits 1 ms
			time.Sleep(10 * time.Millisecond)
			return false
		}
		return true
	})
}
