package idembolt_test

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/ledger"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/idempotency"
	"github.com/tetherrpc/tether/server/idempotency/idembolt"
)

// A repeat that reaches the server after a restart (a new Server, the
// store's file reopened) is answered from the file: the handler ran once.
func TestRepeatAfterServerRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "idem.db")
	book := ledger.NewBook() // the service's database, which outlives the process
	credit := func() int64 {
		t.Helper()
		store, err := idembolt.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		srv := server.New(server.WithInterceptors(idempotency.New(idempotency.WithStore(store))))
		ledgerv1.RegisterLedgerServiceHandler(srv, &ledger.Handler{Book: book})
		hs := httptest.NewServer(srv)
		defer hs.Close()
		defer srv.Close()
		c, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		res, err := ledgerv1.NewLedgerServiceClient(c).Credit(context.Background(), &ledgerv1.CreditRequest{Account: "a", Amount: 4}, client.WithIdempotencyKey("restart"))
		if err != nil {
			t.Fatal(err)
		}
		return res.GetBalance()
	}
	first, again := credit(), credit()
	if first != 4 || again != 4 || book.Applied("restart") != 1 {
		t.Fatalf("balances %d, %d; applied %d times", first, again, book.Applied("restart"))
	}
}
