package tethernats_test

import (
	"context"
	"log"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	tethernats "github.com/tetherrpc/tether/contrib/nats"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/idempotency"
)

// Every replica of a service opens the same bucket: a repeat that lands on
// another replica is answered from the first call's result.
func ExampleNewIdempotencyStore() {
	ctx := context.Background()
	nc, err := nats.Connect("nats://127.0.0.1:4222", nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	store, err := tethernats.NewIdempotencyStore(ctx, js, tethernats.WithReplicas(3))
	if err != nil {
		log.Fatal(err)
	}
	srv := server.New(server.WithInterceptors(idempotency.New(idempotency.WithStore(store))))
	defer srv.Close()
	// Register handlers and serve srv as usual.
}
