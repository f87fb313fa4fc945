package idempotency_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/idempotency"
)

// payments applies each credit once forever: the idempotency key is stored
// in the same transaction as the effect (here one lock over both maps; in a
// database, one transaction with a unique index on the key).
type payments struct {
	ledgerv1.UnimplementedLedgerServiceHandler
	mu       sync.Mutex
	balances map[string]int64
	applied  map[string]int64 // idempotency key -> the balance it answered
}

func (p *payments) Credit(ctx context.Context, req *ledgerv1.CreditRequest) (*ledgerv1.CreditResponse, error) {
	key := idempotency.KeyFromContext(ctx)
	if key == "" {
		return nil, tether.Errorf(tether.CodeInvalidArgument, "an idempotency key is required")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if balance, ok := p.applied[key]; ok {
		return &ledgerv1.CreditResponse{Balance: balance}, nil // a repeat: answer what was stored
	}
	p.balances[req.GetAccount()] += req.GetAmount()
	p.applied[key] = p.balances[req.GetAccount()]
	return &ledgerv1.CreditResponse{Balance: p.balances[req.GetAccount()]}, nil
}

// The interceptor deduplicates within its TTL in one process; a handler that
// stores the key with its effect stays exactly-once after a restart, which
// forgets the interceptor's cache.
func ExampleKeyFromContext() {
	store := &payments{balances: map[string]int64{}, applied: map[string]int64{}}
	credit := func() {
		srv := server.New(server.WithInterceptors(idempotency.New())) // a new process: an empty cache
		ledgerv1.RegisterLedgerServiceHandler(srv, store)
		hs := httptest.NewServer(srv)
		defer hs.Close()
		defer srv.Close()
		c, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http"))
		if err != nil {
			fmt.Println(err)
			return
		}
		defer c.Close()
		res, err := ledgerv1.NewLedgerServiceClient(c).Credit(context.Background(),
			&ledgerv1.CreditRequest{Account: "alice", Amount: 5}, client.WithIdempotencyKey("order-7"))
		fmt.Println(res.GetBalance(), err)
	}
	credit()
	credit() // the same logical call after a restart
	// Output:
	// 5 <nil>
	// 5 <nil>
}
