package e2e

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// unaryAllocBudget is what one unary call (echo's Say, 16-byte payload, no
// metadata but the idempotency key, no deadline; the handler sets a trailer)
// may allocate, client and server together. It was 62 before issue 15 (61
// without -race), 47 after (45); BenchmarkUnary reports the exact figure.
const unaryAllocBudget = 50

// TestUnaryAllocations (issue 15): a unary call stays within its allocation
// budget, client and server in this process together (testing.AllocsPerRun
// counts every goroutine's allocations, averaged over the runs).
func TestUnaryAllocations(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation count: not in -short")
	}
	srv := server.New(server.WithLogger(discardLogger()))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	hs := httptest.NewServer(srv)
	cli, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), client.WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cli.Close()
		_ = srv.Close()
		hs.Close()
	}()
	svc := echov1.NewEchoServiceClient(cli)
	ctx := context.Background()
	req := &echov1.SayRequest{Payload: make([]byte, 16)}
	for range 50 { // warm the pools
		if _, err := svc.Say(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	allocs := testing.AllocsPerRun(500, func() {
		if _, err := svc.Say(ctx, req); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("%.1f allocations per unary call, client and server", allocs)
	if allocs > unaryAllocBudget {
		t.Errorf("%.1f allocations per unary call, client and server; budget %d", allocs, unaryAllocBudget)
	}
}
