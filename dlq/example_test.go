package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/tetherrpc/tether/dlq"
)

// flakyServer stands in for a tether client: it fails until up is set.
type flakyServer struct{ up bool }

func (s *flakyServer) InvokeRaw(ctx context.Context, procedure string, request []byte, md map[string][]string) ([]byte, error) {
	if !s.up {
		return nil, errors.New("unavailable: connection refused")
	}
	fmt.Printf("server got %s with idempotency key %s\n", procedure, md[dlq.IdempotencyKeyHeader][0])
	return []byte("response"), nil
}

func ExampleReplay() {
	ctx := context.Background()
	store := dlq.NewMemoryStore() // not durable; use dlq.OpenBolt in production
	defer store.Close()

	// What the client does with a call that exhausted its retries.
	id, err := store.Put(ctx, &dlq.Entry{
		Procedure:      "/echo.v1.EchoService/Say",
		Request:        []byte{0x0a, 0x02, 'h', 'i'},
		IdempotencyKey: "7d0e6c1a",
		Attempts:       5,
		LastCode:       14, // unavailable
		LastError:      "connection refused",
		FirstAttempt:   time.Now().Add(-time.Minute),
	})
	if err != nil {
		log.Fatal(err)
	}

	server := &flakyServer{}
	if _, err := dlq.Replay(ctx, store, server, id); err != nil {
		e, gerr := store.Get(ctx, id)
		if gerr != nil {
			log.Fatal(gerr)
		}
		fmt.Printf("replay failed; entry kept with %d replay(s): %s\n", e.Replays, e.LastReplayError)
	}

	server.up = true
	res, err := dlq.Replay(ctx, store, server, id)
	if err != nil {
		log.Fatal(err)
	}
	n, err := store.Len(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("replayed: %s; %d entries left\n", res, n)
	// Output:
	// replay failed; entry kept with 1 replay(s): unavailable: connection refused
	// server got /echo.v1.EchoService/Say with idempotency key 7d0e6c1a
	// replayed: response; 0 entries left
}

func ExampleOpenBolt() {
	dir, err := os.MkdirTemp("", "dlq-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "tether-dlq.db")

	store, err := dlq.OpenBolt(path, dlq.WithLockTimeout(2*time.Second))
	if err != nil {
		log.Fatal(err) // errors.Is(err, dlq.ErrLocked) if another process has it open
	}
	ctx := context.Background()
	id, err := store.Put(ctx, &dlq.Entry{Procedure: "/echo.v1.EchoService/Say", Attempts: 3})
	if err != nil {
		log.Fatal(err)
	}
	store.Close() // the entry was fsynced by Put; it is on disk already

	store, err = dlq.OpenBolt(path)
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	entries, err := store.List(ctx, dlq.ListOptions{Procedure: "/echo.v1.EchoService/Say"})
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range entries {
		fmt.Println(e.ID == id, e.ID, e.Procedure, e.Attempts)
	}
	// Output:
	// true 00000000000000000001 /echo.v1.EchoService/Say 3
}
