package tethernats_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tetherrpc/tether/client"
	tethernats "github.com/tetherrpc/tether/contrib/nats"
	"github.com/tetherrpc/tether/examples/ledger"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/idempotency"
)

// BenchmarkUnaryDedup measures one keyed unary call (Credit, over a real
// WebSocket on 127.0.0.1) with no deduplication, with the built-in
// in-memory cache, and with the JetStream KV store on an embedded NATS
// node (file storage, as in production). "new" sends a new key each call
// (the handler runs: claim, then complete); "repeat" sends one key again
// (answered from the cache or the store).
//
//	cd contrib/nats && go test -run '^$' -bench BenchmarkUnaryDedup -benchtime 2000x
func BenchmarkUnaryDedup(b *testing.B) {
	_, js := connect(b, startNode(b))
	for _, backend := range []string{"none", "memory", "nats"} {
		for _, mode := range []string{"new", "repeat"} {
			if backend == "none" && mode == "repeat" {
				continue
			}
			b.Run(backend+"/"+mode, func(b *testing.B) {
				var opts []server.Option
				switch backend {
				case "memory":
					opts = append(opts, server.WithInterceptors(idempotency.New()))
				case "nats":
					store, err := tethernats.NewIdempotencyStore(bg, js, tethernats.WithBucket(bucketName()))
					if err != nil {
						b.Fatal(err)
					}
					opts = append(opts, server.WithInterceptors(idempotency.New(idempotency.WithStore(store))))
				}
				srv := server.New(opts...)
				ledgerv1.RegisterLedgerServiceHandler(srv, &ledger.Handler{Book: ledger.NewBook()})
				hs := httptest.NewServer(srv)
				defer func() {
					srv.Close()
					hs.Close()
				}()
				c, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http"))
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				lc := ledgerv1.NewLedgerServiceClient(c)
				ctx := context.Background()
				var n atomic.Int64
				req := &ledgerv1.CreditRequest{Account: "a", Amount: 1}
				key := func() string {
					if mode == "repeat" {
						return "same"
					}
					return fmt.Sprint("k", n.Add(1))
				}
				if _, err := lc.Credit(ctx, req, client.WithIdempotencyKey("same")); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					if _, err := lc.Credit(ctx, req, client.WithIdempotencyKey(key())); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
