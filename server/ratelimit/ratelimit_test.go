package ratelimit_test

import (
	"context"
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
