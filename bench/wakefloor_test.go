package bench

import (
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkWakeFloor measures what bidi c=64's wake-ups cost with nothing
// else: 64 pairs of goroutines in one process, each a ping-pong over two
// channels, so that each side of each round trip is woken once, as a bidi
// stream's receiver is on each end of a connection. No network, no
// framing, no protobuf: the scheduler's floor for one blocking receive a
// side, against which docs/BENCHMARKS.md ("What the misses would take")
// sets tether's CPU per bidi round trip. One op is one round trip.
func BenchmarkWakeFloor(b *testing.B) {
	const pairs = 64
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	for range pairs {
		ping, pong := make(chan int, 1), make(chan int, 1)
		wg.Add(2)
		go func() { // the handler: Receive, then Send
			defer wg.Done()
			for v := range ping {
				pong <- v
			}
			close(pong)
		}()
		go func() { // the caller: Send, then Receive
			defer wg.Done()
			for left.Add(-1) >= 0 {
				ping <- 1
				<-pong
			}
			close(ping)
		}()
	}
	wg.Wait()
}
