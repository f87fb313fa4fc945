package mux

// Reader goroutines are reused. A new goroutine starts on the smallest
// stack and grows it (a copy of every frame, found through the runtime's
// tables) the first time it reads a WebSocket frame, which goes deep
// (gorilla/websocket, bufio, the pooled read, the runtime poller). A
// connection's set-up paid that for the client's reader, the server's, and
// the server's again when its reader first left the shared poller; the
// server's upgrade-only listener (Go) for the goroutine that reads the
// upgrade request: together a fifth of a set-up's instructions in user
// space (docs/BENCHMARKS.md, "Connection set-up, second pass"). A reader
// goroutine whose loop has returned (the connection parked or ended)
// instead waits readerIdle for the next reader to run, of any connection,
// as the handler goroutines do (runHandlers): a busy process starts and
// grows few, an idle one keeps none after readerIdle.

import (
	"sync/atomic"
	"time"
)

// readerIdle is how long a reader goroutine waits for the next reader.
const readerIdle = 20 * time.Millisecond

// readerIdleOverride replaces readerIdle when not zero (tests).
var readerIdleOverride atomic.Int64

func readerIdleTime() time.Duration {
	if d := readerIdleOverride.Load(); d != 0 {
		return time.Duration(d)
	}
	return readerIdle
}

// idleReaders hands a reader loop to a waiting goroutine: unbuffered, so a
// send succeeds only when one is waiting.
var idleReaders = make(chan func())

// goReader runs f, a reader loop, on an idle reader goroutine, whose stack
// has already grown, or on a new one.
func goReader(f func()) {
	select {
	case idleReaders <- f:
	default:
		go runReaders(f)
	}
}

// runReaders runs f, then the reader loops handed to it, until it has
// waited readerIdle for one.
func runReaders(f func()) {
	var idle *time.Timer
	for {
		f()
		f = nil // nothing of the last connection is kept while waiting
		if d := readerIdleTime(); idle == nil {
			idle = time.NewTimer(d)
		} else {
			idle.Reset(d)
		}
		select {
		case f = <-idleReaders:
		case <-idle.C:
			return
		}
	}
}

// Go runs f on an idle reader goroutine, whose stack has already grown, or
// on a new one, as goReader does: for the server's upgrade-only listener,
// whose goroutine per new connection reads and parses the upgrade request
// on a stack as deep as a reader's. f must not rely on a fresh goroutine.
func Go(f func()) { goReader(f) }
