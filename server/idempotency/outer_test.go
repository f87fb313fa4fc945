package idempotency

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/ledger"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
)

// An outer interceptor (outside idempotency) sets a per-call header before
// next: the repeat must keep its own value, not get the first call's.
func TestOuterInterceptorHeadersNotReplayed(t *testing.T) {
	var n atomic.Int64
	reqID := server.UnaryInterceptorFunc(func(next server.UnaryFunc) server.UnaryFunc {
		return func(ctx context.Context, req proto.Message) (proto.Message, error) {
			ci, _ := server.CallInfoFromContext(ctx)
			ci.ResponseHeader().Set("x-request-id", strconv.FormatInt(n.Add(1), 10))
			return next(ctx, req)
		}
	})
	lc := serve(t, &ledger.Handler{Book: ledger.NewBook()}, []server.Option{server.WithInterceptors(reqID, New())})
	var got []string
	for range 2 {
		var hdr tether.Metadata
		if _, err := lc.Credit(context.Background(), &ledgerv1.CreditRequest{Account: "a", Amount: 1},
			client.WithIdempotencyKey("k"), client.WithResponseHeader(&hdr)); err != nil {
			t.Fatal(err)
		}
		got = append(got, hdr.Get("x-request-id"))
	}
	if got[0] == got[1] {
		t.Fatalf("repeat's x-request-id %q overwritten with the first call's %q", got[1], got[0])
	}
}
