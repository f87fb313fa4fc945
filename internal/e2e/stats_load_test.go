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
	// A deadlock shows as goroutines that never return, or a server that
	// answers nothing afterwards; progress per second is not asserted
	// (a loaded 2-core machine can stall any loop for a second).
	<-ctx.Done()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("callers, Stats pollers or dialers still blocked 30s after the load stopped (%d calls made): deadlock", calls.Load())
	}
	if calls.Load() == 0 {
		t.Fatal("no call completed under load")
	}
	after, cancelAfter := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelAfter()
	if _, err := cli.Say(after, &echov1.SayRequest{}); err != nil {
		t.Fatalf("call after the load: %v", err)
	}
	_ = srv.Stats()
	t.Logf("%d calls", calls.Load())
}
