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

// collectProbe is the echo service whose Collect says when it starts and
// how it ended.
type collectProbe struct {
	echo.Handler
	started chan struct{}
	ended   chan error
}

func (h *collectProbe) Collect(ctx context.Context, st *server.ClientStream[echov1.CollectRequest]) (*echov1.CollectResponse, error) {
	h.started <- struct{}{}
	res, err := h.Handler.Collect(ctx, st)
	h.ended <- err
	return res, err
}

// Issue 10 item 13 (gRPC's cancel_after_begin): once cancel has returned,
// nothing but the RESET leaves for the stream, every later method returns
// canceled, and the handler ends with canceled too, never OK.
func TestCancelAfterBeginIsCanceledOnBothSides(t *testing.T) {
	h := &collectProbe{started: make(chan struct{}, 1), ended: make(chan error, 1)}
	srv := server.New()
	echov1.RegisterEchoServiceHandler(srv, h)
	c, err := client.New(startServer(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ec := echov1.NewEchoServiceClient(c)

	const calls = 500
	var sendNil, clientOK, handlerOK, handlerOther int
	for i := 0; i < calls; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := ec.Collect(ctx)
		if err != nil {
			t.Fatalf("call %d: open: %v", i, err)
		}
		select {
		case <-h.started:
		case <-time.After(30 * time.Second):
			t.Fatalf("call %d: the handler did not start", i)
		}
		cancel()
		if err := stream.Send(&echov1.CollectRequest{Text: "late"}); err == nil {
			sendNil++
		} else if code := tether.CodeOf(err); code != tether.CodeCanceled {
			t.Fatalf("call %d: Send after cancel: %v, want canceled", i, err)
		}
		res, err := stream.CloseAndReceive()
		if err == nil {
			clientOK++
		} else if code := tether.CodeOf(err); code != tether.CodeCanceled {
			t.Fatalf("call %d: CloseAndReceive after cancel: %v (response %v), want canceled", i, err, res)
		}
		select {
		case err := <-h.ended:
			switch tether.CodeOf(err) {
			case tether.CodeOK:
				handlerOK++
			case tether.CodeCanceled:
			default:
				handlerOther++
				t.Logf("call %d: handler ended with %v", i, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("call %d: the handler did not end", i)
		}
		stream.Close()
	}
	if sendNil+clientOK+handlerOK+handlerOther > 0 {
		t.Fatalf("of %d calls canceled after begin: Send returned nil %d times, the client got OK %d times, the handler returned OK %d times and another code %d times; want 0 of each",
			calls, sendNil, clientOK, handlerOK, handlerOther)
	}
}
