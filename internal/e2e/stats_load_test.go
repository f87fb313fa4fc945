package e2e

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
)

// TestStatsUnderLoad: Server.Stats polled while calls run and connections
// come and go must not deadlock (lock order between the server and its
// connections: the reader once asked the server's lock while holding its
// connection's).
func TestStatsUnderLoad(t *testing.T) {
	srv, u := secServer(t, nil)
	_, cli := secClient(t, u)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var calls atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if _, err := cli.Say(ctx, &echov1.SayRequest{}); err == nil {
					calls.Add(1)
				}
			}
		}()
	}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				_ = srv.Stats()
			}
		}()
	}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				ws, _, err := secDialer().Dial(u, nil)
				if err == nil {
					ws.Close()
				}
			}
		}()
	}
	last := int64(-1)
	for ctx.Err() == nil {
		time.Sleep(time.Second)
		n := calls.Load()
		if n == last {
			t.Fatalf("no call completed in 1s after %d calls: deadlock", n)
		}
		last = n
	}
	wg.Wait()
	t.Logf("%d calls", calls.Load())
}
