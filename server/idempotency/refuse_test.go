package idempotency

import (
	"context"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/server"
)

// A call refused because the cache (or the store) is full of running calls
// is refused as unprocessed: a caller without retries is retried
// transparently, and its call runs once the running call made room.
func TestFullRefusalRetriedTransparently(t *testing.T) {
	for name, mk := range map[string]func() *Interceptor{
		"cache": func() *Interceptor { return New(WithMaxEntries(1)) },
		"store": func() *Interceptor { return New(WithStore(NewMemoryStore(1))) },
	} {
		t.Run(name, func(t *testing.T) {
			g := newGated()
			var attempts, refused atomic.Int32 // of key "two"
			count := server.UnaryInterceptorFunc(func(next server.UnaryFunc) server.UnaryFunc {
				return func(ctx context.Context, req proto.Message) (proto.Message, error) {
					ci, _ := server.CallInfoFromContext(ctx)
					if ci.RequestHeader().Get(tether.MetadataIdempotencyKey) != "two" {
						return next(ctx, req)
					}
					attempts.Add(1)
					res, err := next(ctx, req)
					if tether.CodeOf(err) == tether.CodeUnavailable {
						refused.Add(1)
					}
					return res, err
				}
			})
			lc := serve(t, g, []server.Option{server.WithInterceptors(count, mk())})
			first := goCredit(lc, "slow", "one")
			waitFor(t, "the first call to run", func() bool { return g.runsOf("one") == 1 })
			second := goCredit(lc, "a", "two") // WithoutRetries
			waitFor(t, "the second call to be refused", func() bool { return refused.Load() >= 1 })
			close(g.release)
			if r := <-first; r.err != nil {
				t.Fatal(r.err)
			}
			if r := <-second; r.err != nil {
				t.Fatalf("second call: %v (after %d attempts), want a transparent retry", r.err, attempts.Load())
			}
			if n, a := g.runsOf("two"), attempts.Load(); n != 1 || a < 2 {
				t.Fatalf("handler ran %d times in %d attempts; want once, after a refusal", n, a)
			}
		})
	}
}
