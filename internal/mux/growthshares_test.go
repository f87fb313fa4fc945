package mux

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// TestGrowthSharesAccounting (from the twentieth pass's review): uploads
// of several sizes, six at a time, that end every way (read to EOF, the
// handler returns early with messages queued, the handler resets, the
// client resets) on one connection with a small growth budget: a stream's
// growth stays within the budget, no peer is disconnected for sending
// beyond its window (the give-back never leaves a sender more credit than
// the window), and once all have ended the connection's growth and shares
// (and the count of streams holding it) are back to 0.
func TestGrowthSharesAccounting(t *testing.T) {
	const budget = 4 * DefaultStreamWindow
	var mu sync.Mutex
	var bad []string
	scfg := Config{MaxWindowGrowth: budget, Accept: func(s *Stream, _ *tetherv1.Open) {
		r := rand.New(rand.NewPCG(uint64(s.id), 7))
		mode := r.IntN(4)
		limit := 1 << 30
		if mode == 1 || mode == 2 {
			limit = r.IntN(200)
		}
		for i := 0; i < limit; i++ {
			if r.IntN(50) == 0 {
				time.Sleep(time.Duration(r.IntN(3)) * time.Millisecond)
			}
			if _, err := s.RecvMsg(); err != nil {
				break
			}
			s.mu.Lock()
			g := s.grown
			s.mu.Unlock()
			if g < 0 || g > budget {
				mu.Lock()
				bad = append(bad, "grown out of range")
				mu.Unlock()
			}
		}
		if mode == 2 {
			s.Reset(tether.Errorf(tether.CodeCanceled, "test"))
			return
		}
		_ = s.Finish(nil, nil)
	}}
	cc, sc := pair(t, scfg, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var maxShares, maxGrowth int64
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
			mu.Lock()
			maxShares = max(maxShares, int64(sc.growthHolders.Load()))
			maxGrowth = max(maxGrowth, sc.windowGrowth.Load())
			mu.Unlock()
		}
	}()
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 11))
			for range 4 {
				s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, nil, false)
				if err != nil {
					t.Error(err)
					return
				}
				size := []int{1 << 10, 16 << 10, 64 << 10, 200 << 10}[r.IntN(4)]
				msg := make([]byte, size)
				n := 50 + r.IntN(250)
				reset := r.IntN(5) == 0
				for i := range n {
					if reset && i == n/2 {
						break
					}
					if err := s.SendMsg(ctx, msg); err != nil {
						break
					}
				}
				if reset {
					s.Reset(tether.Errorf(tether.CodeCanceled, "test"))
					continue
				}
				_ = s.CloseSend(ctx)
				_, _ = s.RecvMsg()
			}
		})
	}
	wg.Wait()
	close(stop)
	mu.Lock()
	t.Logf("max growthHolders %d, max windowGrowth %d of %d", maxShares, maxGrowth, budget)
	mu.Unlock()
	if sc.isClosed() || cc.isClosed() {
		t.Fatalf("a connection closed: %v / %v", sc.err, cc.err)
	}
	waitFor(t, 30*time.Second, "growth and shares back to 0", func() bool {
		return sc.windowGrowth.Load() == 0 && sc.growthHolders.Load() == 0
	})
	if len(bad) > 0 {
		t.Fatal(bad[0])
	}
}
