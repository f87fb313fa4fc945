package ratelimit_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/ratelimit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPerConnectionLimit(t *testing.T) {
	srv := server.New(server.WithInterceptors(ratelimit.New(ratelimit.Limits{PerConnection: 0.001, ConnectionBurst: 3})))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	c, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ec := echov1.NewEchoServiceClient(c)
	ok, limited := 0, 0
	for range 6 {
		_, err := ec.Say(context.Background(), &echov1.SayRequest{Text: "x"}, client.WithoutRetries())
		switch tether.CodeOf(err) {
		case tether.CodeOK:
			ok++
		case tether.CodeResourceExhausted:
			limited++
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if ok != 3 || limited != 3 {
		t.Fatalf("%d allowed, %d limited; want the burst of 3 then resource_exhausted", ok, limited)
	}
	// A new connection has its own bucket.
	c2, _ := client.New("ws" + strings.TrimPrefix(hs.URL, "http"))
	defer c2.Close()
	if _, err := echov1.NewEchoServiceClient(c2).Say(context.Background(), &echov1.SayRequest{}); err != nil {
		t.Fatalf("second connection: %v", err)
	}
}

// user is a principal as Authenticators commonly return it: a fresh pointer
// for every connection.
type user struct{ Name string }

// Two connections of one user share the user's bucket although each has its
// own *user; another user has a bucket of its own.
func TestPerPrincipalLimitByValue(t *testing.T) {
	auth := server.Authenticator(func(r *http.Request) (server.Identity, error) {
		return server.Identity{Principal: &user{Name: r.URL.Query().Get("u")}}, nil
	})
	srv := server.New(server.WithAuthenticator(auth), server.WithInterceptors(ratelimit.New(ratelimit.Limits{PerPrincipal: 0.001, PrincipalBurst: 2})))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	say := func(name string) error {
		c, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http") + "?u=" + name)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = echov1.NewEchoServiceClient(c).Say(context.Background(), &echov1.SayRequest{Text: "x"}, client.WithoutRetries())
		return err
	}
	for i := range 2 {
		if err := say("ann"); err != nil {
			t.Fatalf("call %d of ann, within the burst: %v", i+1, err)
		}
	}
	if err := say("ann"); tether.CodeOf(err) != tether.CodeResourceExhausted {
		t.Fatalf("third call of ann on a third connection: %v; want resource_exhausted (one bucket per user, not per *user)", err)
	}
	if err := say("bob"); err != nil {
		t.Fatalf("bob has a bucket of his own: %v", err)
	}
}
