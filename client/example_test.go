package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
)

func serveEcho() (url string, stop func()) {
	srv := server.New()
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	hs := httptest.NewServer(srv)
	return "ws" + strings.TrimPrefix(hs.URL, "http"), func() { srv.Close(); hs.Close() }
}

// One client, one WebSocket: every call is multiplexed on it.
func Example() {
	url, stop := serveEcho()
	defer stop()

	c, err := client.New(url)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	echoClient := echov1.NewEchoServiceClient(c)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := echoClient.Say(ctx, &echov1.SayRequest{Text: "hello"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.GetText())

	stream, err := echoClient.Countdown(ctx, &echov1.CountdownRequest{Count: 3})
	if err != nil {
		log.Fatal(err)
	}
	defer stream.Close() // ends the call if the loop stops early
	for {
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			break // the server ended the call successfully
		}
		if err != nil {
			log.Fatal(err) // the call failed: Receive returns the same error again
		}
		fmt.Println(msg.GetValue())
	}
	// Output:
	// hello
	// 3
	// 2
	// 1
}

// A call that cannot be delivered is parked in the dead-letter queue and
// the caller's error says so.
func ExampleWithDeadLetterQueue() {
	store := dlq.NewMemoryStore() // dlq.OpenBolt("tether-dlq.db") for a durable queue
	defer store.Close()
	// Nothing listens on port 1: every connection attempt is refused.
	c, err := client.New("ws://127.0.0.1:1/unreachable",
		client.WithDeadLetterQueue(store),
		client.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = ledgerv1.NewLedgerServiceClient(c).Credit(ctx, &ledgerv1.CreditRequest{Account: "acme", Amount: 5})
	var dl *client.DeadLetterError
	if !errors.As(err, &dl) {
		log.Fatalf("not dead-lettered: %v", err)
	}
	fmt.Println(errors.Is(err, client.ErrDeadLettered), tether.CodeOf(err))

	entry, err := store.Get(context.Background(), dl.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(entry.Procedure)
	// Output:
	// true deadline_exceeded
	// /example.ledger.v1.LedgerService/Credit
}
