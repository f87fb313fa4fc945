package e2e

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// unaryAllocBudget is what one unary call (echo's Say, 16-byte payload, no
// metadata, no deadline; the handler sets a trailer) may allocate, client
// and server together. It was 62 before issue 15 (61 without -race), 47
// after its first round (45), 49 (45) at 92baccb, 43 (39) with the
// second's per-call structs folded, 40 (36) with the stream's context made
// on first use, 39 (35) with handler goroutines reused, 38 (34) with the
// client's per-call struct reused (unaryCall), 35 (30) with the streams'
// channels made only when someone waits, 32 (27) with the WebSocket frames
// written by the connection itself (internal/mux/wswrite.go: no
// allocation in gorilla/websocket's writer), 32 (26) with the request lent
// to the server's handler (mux.Config.LendFirstMessage), 31 (25) with the
// response lent to the client's decoding; BenchmarkUnary reports the exact
// figure. Under -race, sync.Pool drops a share of what is put back: the
// count varies by one or two, and is higher than without.
const unaryAllocBudget = 33

// keyedAllocBudget is unaryAllocBudget for the same call of a method that
// is not free of side effects: the client generates an idempotency key and
// the OPEN carries it. It was 53 (49 without -race) at 92baccb, 44 (39)
// with the key inline (it costs no allocation), 41 (36) with the stream's
// context made on first use, 40 (35) with handler goroutines reused, 39
// (34) with the client's per-call struct reused, 35 (30) with the streams'
// channels made only when someone waits, 33 (27) with the frames written
// by the connection itself, 33 (26) with the request lent, 32 (25) with
// the response lent.
const keyedAllocBudget = 34

// deadlineAllocBudget is unaryAllocBudget for the same call with a
// deadline on its context, as gRPC's guidance asks of every call: the
// server's handler context then carries the deadline (server/callctx.go).
// It was 57 (61 under -race): the handler's context made the stream's own
// context to watch it with a context.AfterFunc, whose goroutine ran at every
// call's end, and the client watched the caller's context with another. It
// is 37 (41) since the handler's context hears of the stream's end from the
// stream (mux.Stream.OnEnd), makes its inner contexts on first use and lives
// in the call's struct, and a unary call watches its context where it waits
// (mux.Stream.RecvMsgCtx): the deadline costs the server's timer and its
// function (a pooled timer since). 40 (36) with the client's per-call struct reused, 37 (32) with
// the streams' channels made only when someone waits, 34 (29) with the
// frames written by the connection itself, 34 (28) with the request lent,
// 33 (27) with the response lent, 32 (25) with the server's deadline
// timers reused, 33 (26) with the caller reading its own reply (a
// context.AfterFunc on its context while it waits for the socket, less the
// stream's wake channel, which it no longer makes).
const deadlineAllocBudget = 34

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
	dctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	req := &echov1.SayRequest{Payload: make([]byte, 16)}
	// Say as a method with side effects: every call carries a new key.
	keyed := &client.Method{Spec: tether.Spec{Procedure: echov1.EchoServiceSayProcedure, StreamType: tether.StreamTypeUnary}}
	for _, tc := range []struct {
		name   string
		call   func() error
		budget float64
	}{
		{"no-key", func() error { _, err := svc.Say(ctx, req); return err }, unaryAllocBudget},
		{"keyed", func() error { return cli.Invoke(ctx, keyed, req, &echov1.SayResponse{}) }, keyedAllocBudget},
		{"deadline", func() error { _, err := svc.Say(dctx, req); return err }, deadlineAllocBudget},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 50 { // warm the pools
				if err := tc.call(); err != nil {
					t.Fatal(err)
				}
			}
			allocs := testing.AllocsPerRun(500, func() {
				if err := tc.call(); err != nil {
					t.Fatal(err)
				}
			})
			t.Logf("%.1f allocations per unary call, client and server", allocs)
			if allocs > tc.budget {
				t.Errorf("%.1f allocations per unary call, client and server; budget %.0f", allocs, tc.budget)
			}
		})
	}
}
