package authz_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/authz"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRefusesOneProcedure(t *testing.T) {
	deny := authz.New(func(ctx context.Context, principal any, procedure string) error {
		if procedure == echov1.EchoServiceCountdownProcedure {
			return errors.New("countdowns are not for you")
		}
		return nil
	})
	srv := server.New(server.WithInterceptors(deny))
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
	ctx := context.Background()
	st, err := ec.Countdown(ctx, &echov1.CountdownRequest{Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Receive(); tether.CodeOf(err) != tether.CodePermissionDenied || !strings.Contains(err.Error(), "not for you") {
		t.Fatalf("err = %v, want permission_denied", err)
	}
	if res, err := ec.Say(ctx, &echov1.SayRequest{Text: "still allowed"}); err != nil || res.GetText() != "still allowed" {
		t.Fatalf("Say on the same connection: %v %v", res, err)
	}
	if n := c.Stats().Connects; n != 1 {
		t.Fatalf("%d connects: the refusal must not cost the connection", n)
	}
}
