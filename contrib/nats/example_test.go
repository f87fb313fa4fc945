package tethernats_test

import (
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tetherrpc/tether/client"
	tethernats "github.com/tetherrpc/tether/contrib/nats"
	"github.com/tetherrpc/tether/contrib/nats/natsembed"
	"github.com/tetherrpc/tether/examples/ledger"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/idempotency"
)

// Two replicas of a service share one bucket: a repeat that lands on the
// other replica is answered from the first call's result. (Production
// connects to a NATS cluster, with WithReplicas(3); here an embedded node
// stands in for it.)
func ExampleNewIdempotencyStore() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "tether-nats")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ns, err := natsembed.Start(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()

	nc, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	store, err := tethernats.NewIdempotencyStore(ctx, js)
	if err != nil {
		log.Fatal(err)
	}

	book := ledger.NewBook() // the replicas' shared database
	var urls []string
	for range 2 {
		srv := server.New(server.WithInterceptors(idempotency.New(idempotency.WithStore(store))))
		ledgerv1.RegisterLedgerServiceHandler(srv, &ledger.Handler{Book: book})
		hs := httptest.NewServer(srv)
		defer func() { srv.Close(); hs.Close() }()
		urls = append(urls, "ws"+strings.TrimPrefix(hs.URL, "http"))
	}
	for _, url := range urls {
		c, err := client.New(url)
		if err != nil {
			log.Fatal(err)
		}
		res, err := ledgerv1.NewLedgerServiceClient(c).Credit(ctx, &ledgerv1.CreditRequest{Account: "ada", Amount: 10}, client.WithIdempotencyKey("invoice-7"))
		c.Close()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("balance:", res.GetBalance())
	}
	fmt.Println("applied:", book.Applied("invoice-7"))
	// Output:
	// balance: 10
	// balance: 10
	// applied: 1
}
