package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// lateCtx is a context whose deadline has passed while it has not ended
// yet: a caller's context when the runtime runs its timer late.
type lateCtx struct {
	context.Context
	deadline time.Time
}

func (c lateCtx) Deadline() (time.Time, bool) { return c.deadline, true }

// A call or stream opened after its context's deadline has passed, but
// before the context's timer has ended it, fails with the context's cause
// once the context ends, as any call its context ended does, not with an
// error of tether's own (internal/e2e's TestStalledUnarySendEndsWithCause
// met this under load: a 6 MiB request took longer to prepare than its
// deadline, and the runtime ran the context's timer 120 ms late).
func TestDeadlinePassedReturnsCause(t *testing.T) {
	srv := server.New()
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	c, err := client.New(startServer(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ec := echov1.NewEchoServiceClient(c)
	for _, tc := range []struct {
		name string
		open func(context.Context) error
	}{
		{"unary", func(ctx context.Context) error {
			_, err := ec.Say(ctx, &echov1.SayRequest{Text: "late"})
			return err
		}},
		{"resumable server stream", func(ctx context.Context) error {
			_, err := ec.Countdown(ctx, &echov1.CountdownRequest{Count: 1}, client.WithResumable(true))
			return err
		}},
	} {
		inner, cancel := context.WithCancelCause(context.Background())
		cause := tether.Errorf(tether.CodeDeadlineExceeded, "the test's deadline (%s)", tc.name)
		ctx := lateCtx{Context: inner, deadline: time.Now().Add(-time.Millisecond)}
		timer := time.AfterFunc(30*time.Millisecond, func() { cancel(cause) })
		err := tc.open(ctx)
		timer.Stop()
		cancel(nil)
		if err != cause {
			t.Errorf("%s: err = %v, want the context's cause %v", tc.name, err, cause)
		}
	}
}
