package e2e

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// TestClientQueuesAtServerStreamLimit: the server announces its
// MaxConcurrentStreams in the handshake, and the Go client queues calls
// beyond it instead of sending OPENs the server would refuse. 64 concurrent
// calls against a limit of 4 all succeed, none is retried, and the server
// never runs more than 4.
func TestClientQueuesAtServerStreamLimit(t *testing.T) {
	h := &countingEcho{}
	_, u := secServer(t, h, server.WithMaxConcurrentStreams(4))
	c, ec := secClient(t, u)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := ec.Say(ctx, &echov1.SayRequest{Text: "x", SleepMillis: 5}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if r := c.Stats().Retries; r != 0 {
		t.Errorf("%d retries: calls were sent beyond the server's announced limit and refused", r)
	}
	if p := h.peak.Load(); p > 4 {
		t.Errorf("server ran %d handlers at once; limit 4", p)
	}
}

// countingEcho is the echo service whose Say records how many run at once.
type countingEcho struct {
	echo.Handler
	running, peak atomic.Int32
}

func (h *countingEcho) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	n := h.running.Add(1)
	defer h.running.Add(-1)
	for p := h.peak.Load(); n > p && !h.peak.CompareAndSwap(p, n); p = h.peak.Load() {
	}
	return h.Handler.Say(ctx, req)
}
