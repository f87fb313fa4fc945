package idempotency_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/ledger"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/idempotency"
)

// Two servers share a Store: a repeat that lands on the other one gets the
// first call's result, and the credit is applied once. A fleet shares a
// store across processes the same way (contrib/nats).
func ExampleWithStore() {
	store := idempotency.NewMemoryStore(0)
	book := ledger.NewBook()
	for range 2 {
		srv := server.New(server.WithInterceptors(idempotency.New(idempotency.WithStore(store))))
		ledgerv1.RegisterLedgerServiceHandler(srv, &ledger.Handler{Book: book})
		hs := httptest.NewServer(srv)
		c, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http"))
		if err != nil {
			panic(err)
		}
		res, err := ledgerv1.NewLedgerServiceClient(c).Credit(context.Background(), &ledgerv1.CreditRequest{Account: "ada", Amount: 10}, client.WithIdempotencyKey("invoice-7"))
		fmt.Println(res.GetBalance(), err)
		c.Close()
		srv.Close()
		hs.Close()
	}
	fmt.Println("applied:", book.Applied("invoice-7"))
	// Output:
	// 10 <nil>
	// 10 <nil>
	// applied: 1
}
