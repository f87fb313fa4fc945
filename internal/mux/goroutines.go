package mux

// Reader goroutines are reused. A new goroutine starts on the smallest
// stack and grows it (a copy of every frame, found through the runtime's
// tables) the first time it reads a WebSocket frame, which goes deep
// (gorilla/websocket, bufio, the pooled read, the runtime poller). A
// connection's set-up paid that for the client's reader, the server's, and
// the server's again when its reader first left the shared poller; the
// server's upgrade-only listener (Go) for the goroutine that reads the
// upgrade request: together a fifth of a set-up's instructions in user
// space (docs/benchmarks/HISTORY.md, "Connection set-up, second pass"). A reader
// goroutine whose loop has returned (the connection parked or ended, or the
// reader handed off and the lone stream's Accept it then ran returned)
// instead waits readerIdle (to twice that) for the next reader to run, of
// any connection, as the handler goroutines do (workers): a busy process
// starts and grows few, an idle one keeps none after twice readerIdle.

import (
	"sync/atomic"
	"time"
)

// readerIdle is how long a reader goroutine waits for the next reader.
const readerIdle = 20 * time.Millisecond

// A readerJob is what a reader goroutine runs: the reader loop of c,
// leaving the shared poller (Conn.unparked, with woke) or going on from
// another goroutine (cont), or else f. A struct, not a closure: a parked
// connection's reader starts again for every call it serves, and a closure
// over c and woke would be an allocation each time.
type readerJob struct {
	c    *Conn
	woke bool
	cont bool // c's reader loop goes on where another goroutine left it (Conn.handOff)
	f    func()
}

// readers runs reader loops on reused goroutines. Made in init: a reader
// loop can start another connection's (closeWith unparks).
var readers *workers[readerJob]

func init() { readers = newWorkers(readerIdle, runReader) }

func runReader(j readerJob) bool {
	if j.cont {
		j.c.readLoop()
	} else if j.c != nil {
		j.c.unparked(j.woke)
	} else {
		j.f()
	}
	return true
}

// goReader runs f, a reader loop, on an idle reader goroutine, whose stack
// has already grown, or on a new one.
func goReader(f func()) { readers.start(readerJob{f: f}) }

// Go runs f on an idle reader goroutine, whose stack has already grown, or
// on a new one, as goReader does: for the server's upgrade-only listener,
// whose goroutine per new connection reads and parses the upgrade request
// on a stack as deep as a reader's. f must not rely on a fresh goroutine.
func Go(f func()) { goReader(f) }

// workers runs jobs of type T on reused goroutines, for readers and for
// handlers (open.go): a goroutine whose job is done waits idle for the
// next job, handed to it through handoff, and ends if none comes; start
// never waits for a goroutine, it starts one when none is idle. Each
// goroutine's job is its owner's (a connection's reader loop, a stream's
// Accept); the goroutine ends after its idle wait, so an idle process keeps
// none.
type workers[T any] struct {
	handoff  chan T // unbuffered: a send succeeds only when a goroutine waits
	idle     time.Duration
	override atomic.Int64 // nanoseconds replacing idle when not zero (tests)
	run      func(T) bool // runs a job; false ends the goroutine instead (tests)
}

func newWorkers[T any](idle time.Duration, run func(T) bool) *workers[T] {
	return &workers[T]{handoff: make(chan T), idle: idle, run: run}
}

// start runs j on an idle goroutine, or on a new one.
func (w *workers[T]) start(j T) {
	select {
	case w.handoff <- j:
	default:
		go w.loop(j)
	}
}

// idleTime is how long a goroutine waits for its next job.
func (w *workers[T]) idleTime() time.Duration {
	if d := w.override.Load(); d != 0 {
		return time.Duration(d)
	}
	return w.idle
}

// loop runs j, then the jobs handed to it, until it has waited at least
// idleTime (at most twice that) for one, or run says to end.
//
// The idle timer is not moved after each job: it is re-armed only once it
// has fired, if a job ran since it was armed. Moving a timer that is in the
// runtime's heap (Reset) to a time that soon makes the runtime scan the
// whole heap when that time comes: with a job every few microseconds and
// a timer per connection in the heap (read deadlines, heartbeats), those
// scans took 6 to 8% of the CPU of a server holding 10,000 connections
// (docs/benchmarks/HISTORY.md, eleventh pass). A fired timer re-armed is added, not moved.
func (w *workers[T]) loop(j T) {
	var idle *time.Timer
	var armed time.Duration // idle's duration
	var zero T
	ran := false // a job ran since idle was armed
	for w.run(j) {
		j = zero // nothing of the last job is kept while waiting
		if d := w.idleTime(); idle == nil {
			idle, armed = time.NewTimer(d), d
		} else if d != armed { // the idle time changed (tests)
			idle.Reset(d)
			armed, ran = d, false
		}
		for {
			select {
			case j = <-w.handoff:
				ran = true
			case <-idle.C:
				if !ran {
					return
				}
				armed, ran = w.idleTime(), false
				idle.Reset(armed)
				continue
			}
			break
		}
	}
	if idle != nil {
		idle.Stop()
	}
}
