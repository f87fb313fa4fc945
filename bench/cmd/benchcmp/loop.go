package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether/bench"
)

// runLoop is the -loop mode: calls unary calls of system against target
// over conns connections, concurrency at a time (spread evenly over the
// connections), and prints the time per call.
// It runs nothing else (no warm-up, no stats), so that a count taken of the
// whole process (bench/percall.sh runs it under perf stat) is the calls'.
// Dialing and closing are in the count: a few system calls in all.
func runLoop(system, target string, calls, concurrency, conns int) error {
	ctx := context.Background()
	if system == bench.Raw {
		if conns != 1 {
			return fmt.Errorf("the raw echo runs on one connection")
		}
		return rawLoop(ctx, target, calls, concurrency)
	}
	cs := make([]bench.Conn, min(conns, concurrency))
	for i := range cs {
		c, err := bench.Dial(ctx, system, target, true)
		if err != nil {
			return err
		}
		defer c.Close()
		cs[i] = c
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	t0 := time.Now()
	for w := range concurrency {
		n := calls / concurrency
		if w < calls%concurrency {
			n++
		}
		c := cs[w%len(cs)]
		wg.Go(func() {
			req := payload(bench.PayloadSize)
			for range n {
				if _, err := c.Unary(ctx, req); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	report(fmt.Sprintf("unary calls of %s, %d at a time over %d connections", system, concurrency, len(cs)), calls, time.Since(t0))
	return nil
}

// rawLoop is runLoop's raw gorilla/websocket echo: a 16-byte message and
// its echo, one at a time.
func rawLoop(ctx context.Context, target string, n, concurrency int) error {
	if concurrency != 1 {
		return fmt.Errorf("the raw echo runs one message at a time")
	}
	ws, err := bench.DialRaw(ctx, target)
	if err != nil {
		return err
	}
	defer ws.Close()
	msg := make([]byte, bench.PayloadSize)
	t0 := time.Now()
	for range n {
		if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
			return err
		}
		if _, _, err := ws.ReadMessage(); err != nil {
			return err
		}
	}
	report("raw echo round trips, 1 at a time", n, time.Since(t0))
	return nil
}

func report(what string, n int, el time.Duration) {
	fmt.Printf("%d %s: %v, %.1f µs each, %.0f/s\n", n, what, el.Round(time.Millisecond), float64(el.Microseconds())/float64(n), float64(n)/el.Seconds())
}
