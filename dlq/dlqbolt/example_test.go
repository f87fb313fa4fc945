package dlqbolt_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/dlq/dlqbolt"
)

func ExampleOpen() {
	dir, err := os.MkdirTemp("", "dlq-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "tether-dlq.db")

	store, err := dlqbolt.Open(path, dlqbolt.WithLockTimeout(2*time.Second))
	if err != nil {
		log.Fatal(err) // errors.Is(err, dlqbolt.ErrLocked) if another process has it open
	}
	ctx := context.Background()
	id, err := store.Put(ctx, &dlq.Entry{Procedure: "/echo.v1.EchoService/Say", Attempts: 3})
	if err != nil {
		log.Fatal(err)
	}
	store.Close() // the entry was fsynced by Put; it is on disk already

	store, err = dlqbolt.Open(path)
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
