package idempotency

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/ledger"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
)

type org struct{ ID int }

// user is what Authenticators commonly return: a pointer, freshly
// allocated for each connection, holding another pointer.
type user struct {
	Name string
	Org  *org
}

func (u *user) PrincipalKey() string { return u.Name }

// unkeyed holds a pointer and has no PrincipalKey method.
type unkeyed struct {
	Name string
	Org  *org
}

// setupAs is setup with an Authenticator that makes a new principal for
// each connection from the X-User header, and a client that sends name.
func setupAs(t *testing.T, i *Interceptor, h ledgerv1.LedgerServiceHandler, name string, mk func(string) any) ledgerv1.LedgerServiceClient {
	t.Helper()
	auth := func(r *http.Request) (server.Identity, error) {
		return server.Identity{Principal: mk(r.Header.Get("X-User"))}, nil
	}
	return serve(t, h, []server.Option{server.WithInterceptors(i), server.WithAuthenticator(auth)},
		client.WithHandshakeHeader(http.Header{"X-User": {name}}))
}

// A pointer principal scopes by value: the same user on two servers that
// share a store (two connections, two *user allocations) is deduplicated;
// another user is not.
func TestPointerPrincipalAcrossServers(t *testing.T) {
	store := NewMemoryStore(0)
	book := ledger.NewBook()
	mk := func(name string) any { return &user{Name: name, Org: &org{ID: 1}} }
	ctx := context.Background()
	var got []int64
	for _, name := range []string{"ada", "ada", "bob"} {
		lc := setupAs(t, New(WithStore(store)), &ledger.Handler{Book: book}, name, mk)
		res, err := lc.Credit(ctx, &ledgerv1.CreditRequest{Account: "x", Amount: 5}, client.WithIdempotencyKey("k"))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, res.GetBalance())
	}
	// ada's repeat is answered from the store; bob's call runs.
	if got[0] != 5 || got[1] != 5 || got[2] != 10 {
		t.Fatalf("balances %v, want [5 5 10]", got)
	}
	// The built-in cache scopes alike: two connections of one server.
	i := New()
	a1 := setupAs(t, i, &ledger.Handler{Book: book}, "ada", mk)
	a2 := setupAs(t, i, &ledger.Handler{Book: book}, "ada", mk)
	first, err := a1.Credit(ctx, &ledgerv1.CreditRequest{Account: "y", Amount: 3}, client.WithIdempotencyKey("k2"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := a2.Credit(ctx, &ledgerv1.CreditRequest{Account: "y", Amount: 3}, client.WithIdempotencyKey("k2"))
	if err != nil || first.GetBalance() != 3 || again.GetBalance() != 3 {
		t.Fatalf("balances %d, %d (%v), want 3, 3", first.GetBalance(), again.GetBalance(), err)
	}
}

// A principal that would key by address is refused loudly, without
// running the handler, instead of silently not deduplicating.
func TestUnkeyablePrincipalRefused(t *testing.T) {
	book := ledger.NewBook()
	mk := func(name string) any { return &unkeyed{Name: name, Org: &org{}} }
	lc := setupAs(t, New(), &ledger.Handler{Book: book}, "ada", mk)
	_, err := lc.Credit(context.Background(), &ledgerv1.CreditRequest{Account: "x", Amount: 5}, client.WithIdempotencyKey("k"))
	if tether.CodeOf(err) != tether.CodeInternal || !strings.Contains(err.Error(), "PrincipalKey") {
		t.Fatalf("err = %v, want internal naming PrincipalKey", err)
	}
	if book.Applied("k") != 0 {
		t.Fatal("the handler ran")
	}
}
