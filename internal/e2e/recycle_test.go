package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/internal/faultproxy"
	"github.com/tetherrpc/tether/server"
)

// keyRecorder is echo's handler whose Say records the idempotency key each
// request carried: one key with two payloads would be one call's key sent
// with another call's request.
type keyRecorder struct {
	echo.Handler
	mu      sync.Mutex
	payload map[string]string
	mixed   []string
}

func (h *keyRecorder) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	if ci, ok := server.CallInfoFromContext(ctx); ok {
		if key := ci.RequestHeader().Get(tether.MetadataIdempotencyKey); key != "" {
			h.mu.Lock()
			if p, seen := h.payload[key]; seen && p != string(req.GetPayload()) {
				h.mixed = append(h.mixed, key)
			}
			h.payload[key] = string(req.GetPayload())
			h.mu.Unlock()
		}
	}
	return h.Handler.Say(ctx, req)
}

// TestRecycledUnaryCallsKeepApart: a unary call's memory (its options, its
// Call, its idempotency key and its first stream) is reused by later calls
// once the call has returned and its connection no longer uses the stream
// (client.unaryCall, mux.Stream.SetRecycler). Under a seeded schedule of
// connection cuts, deadlines that end calls at every point, and handlers
// that answer late, every call that succeeds gets its own response, and no
// key reaches the server with two requests.
func TestRecycledUnaryCallsKeepApart(t *testing.T) {
	h := &keyRecorder{payload: map[string]string{}}
	var proxy *faultproxy.Proxy
	e := newEnv(t, envConfig{
		handler: h,
		srvOpts: []server.Option{server.WithLogger(discardLogger())},
		cliOpts: []client.Option{
			client.WithLogger(discardLogger()),
			client.WithBackoff(client.BackoffConfig{Initial: time.Millisecond, Max: 10 * time.Millisecond}),
		},
		dialURL: throughProxy(t, &proxy),
	})
	seed := time.Now().UnixNano()
	t.Logf("schedule seed %d", seed)

	stop := make(chan struct{})
	var cuts atomic.Int32
	cutterDone := make(chan struct{})
	go func() {
		defer close(cutterDone)
		rng := rand.New(rand.NewPCG(uint64(seed), 0))
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(10+rng.IntN(60)) * time.Millisecond):
				proxy.CutAll()
				cuts.Add(1)
			}
		}
	}()

	// Say as a method with side effects: every call carries a new key.
	keyed := &client.Method{Spec: tether.Spec{Procedure: echov1.EchoServiceSayProcedure, StreamType: tether.StreamTypeUnary}}
	const workers = 8
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(1500 * time.Millisecond)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(seed), uint64(w+1)))
			for i := 0; time.Now().Before(end); i++ {
				payload := fmt.Appendf(nil, "w%d-c%d-", w, i)
				payload = append(payload, bytes.Repeat([]byte{byte(rng.IntN(256))}, rng.IntN(200))...)
				req := &echov1.SayRequest{Text: fmt.Sprintf("%d/%d", w, i), Payload: payload}
				if rng.IntN(3) == 0 {
					req.SleepMillis = uint32(1 + rng.IntN(3))
				}
				timeout := 5 * time.Second
				if rng.IntN(3) == 0 {
					timeout = time.Duration(200+rng.IntN(4000)) * time.Microsecond
				}
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				res := &echov1.SayResponse{}
				var err error
				if rng.IntN(2) == 0 {
					err = e.cli.Invoke(ctx, keyed, req, res)
				} else {
					res, err = e.echo.Say(ctx, req)
				}
				cancel()
				if err != nil {
					failed.Add(1)
					continue
				}
				ok.Add(1)
				if res.GetText() != req.GetText() || !bytes.Equal(res.GetPayload(), payload) {
					t.Errorf("call %d/%d got another call's response: text %q, payload %q", w, i, res.GetText(), res.GetPayload())
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-cutterDone
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.mixed) > 0 {
		t.Errorf("%d idempotency keys came with two different requests, first %q", len(h.mixed), h.mixed[0])
	}
	t.Logf("%d calls answered, %d failed, %d cuts, %d keys", ok.Load(), failed.Load(), cuts.Load(), len(h.payload))
	if ok.Load() < 100 || failed.Load() == 0 || cuts.Load() == 0 {
		t.Errorf("the schedule did not exercise both outcomes: %d answered, %d failed, %d cuts", ok.Load(), failed.Load(), cuts.Load())
	}
}
