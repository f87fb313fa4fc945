package server_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// ending is what a handler saw when its context ended.
type ending struct {
	err, cause, derived error
}

// waitingEcho's Say with a non-empty text waits for the call's context to
// end and reports what it saw; other calls are echo's.
type waitingEcho struct {
	echo.Handler
	ended   chan ending
	started chan struct{}
}

func (h *waitingEcho) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	if req.GetText() != "wait" {
		return h.Handler.Say(ctx, req)
	}
	h.started <- struct{}{}
	derived, cancel := context.WithCancel(ctx) // what an interceptor or handler derives
	defer cancel()
	<-derived.Done()
	h.ended <- ending{err: ctx.Err(), cause: context.Cause(ctx), derived: derived.Err()}
	return nil, ctx.Err()
}

func newWaitingEnv(t *testing.T, n int) (*waitingEcho, *server.Server, echov1.EchoServiceClient) {
	t.Helper()
	h := &waitingEcho{ended: make(chan ending, n), started: make(chan struct{}, n)}
	srv := server.New()
	echov1.RegisterEchoServiceHandler(srv, h)
	hs := httptest.NewServer(srv)
	c, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		srv.Close()
		hs.Close()
	})
	return h, srv, echov1.NewEchoServiceClient(c)
}

// Issue 16 part 4: a handler whose call runs out of time sees
// context.DeadlineExceeded, even when the client's RESET (sent when the
// client's own timer fires) arrives before the server's timer, as it
// usually does under load; context.Cause says deadline_exceeded. Before,
// most of these handlers saw context.Canceled.
func TestHandlerSeesDeadlineExceeded(t *testing.T) {
	const calls = 40
	h, srv, cli := newWaitingEnv(t, calls)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cli.Say(ctx, &echov1.SayRequest{Text: "connect"}); err != nil {
		t.Fatal(err)
	}

	// Load: calls with payloads on the same connection while the deadlines
	// run out.
	loadCtx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	for range 8 {
		load.Go(func() {
			payload := make([]byte, 32<<10)
			for loadCtx.Err() == nil {
				_, _ = cli.Say(loadCtx, &echov1.SayRequest{Payload: payload})
			}
		})
	}
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, time.Duration(150+i%5*20)*time.Millisecond)
			defer cancel()
			_, err := cli.Say(cctx, &echov1.SayRequest{Text: "wait"})
			if tether.CodeOf(err) != tether.CodeDeadlineExceeded {
				t.Errorf("call %d: err = %v, want deadline_exceeded", i, err)
			}
		})
	}
	wg.Wait()
	stopLoad()
	load.Wait()
	// A call whose deadline passed before its OPEN was sent never reaches
	// a handler; every handler that ran must have returned by now or soon.
	for end := time.Now().Add(30 * time.Second); srv.Stats().ActiveStreams > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d handlers still running", srv.Stats().ActiveStreams)
		}
	}
	ran := len(h.started)
	if ran == 0 {
		t.Fatal("no handler ran")
	}
	var canceled int
	for i := range ran {
		e := <-h.ended
		if !errors.Is(e.err, context.DeadlineExceeded) || !errors.Is(e.derived, context.DeadlineExceeded) ||
			tether.CodeOf(e.cause) != tether.CodeDeadlineExceeded {
			canceled++
			t.Errorf("handler %d: ctx.Err() = %v, derived context's Err() = %v, cause = %v; want context.DeadlineExceeded and deadline_exceeded", i, e.err, e.derived, e.cause)
		}
	}
	t.Logf("%d of %d calls reached a handler; %d handlers did not see DeadlineExceeded", ran, calls, canceled)
}

// A client that cancels its call, well before the deadline, still cancels
// the handler's context with context.Canceled.
func TestHandlerSeesClientCancel(t *testing.T) {
	h, _, cli := newWaitingEnv(t, 2)
	for _, withDeadline := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		if withDeadline {
			ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
		}
		ctx, cancelCall := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := cli.Say(ctx, &echov1.SayRequest{Text: "wait"})
			done <- err
		}()
		<-h.started // cancel once the handler runs
		cancelCall()
		if err := <-done; tether.CodeOf(err) != tether.CodeCanceled {
			t.Errorf("deadline %v: err = %v, want canceled", withDeadline, err)
		}
		select {
		case e := <-h.ended:
			if !errors.Is(e.err, context.Canceled) || !errors.Is(e.derived, context.Canceled) || tether.CodeOf(e.cause) != tether.CodeCanceled {
				t.Errorf("deadline %v: ctx.Err() = %v, derived %v, cause = %v; want context.Canceled and canceled", withDeadline, e.err, e.derived, e.cause)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("handler not canceled")
		}
		cancel()
	}
}

// A handler that returns deadline_exceeded of its own (from a call it made
// downstream) long before its call's deadline leaves its context ended with
// context.Canceled: what it left running is not told that the call ran out
// of time. (The call's end with the handler's error reached the stream
// first, and its code was taken for the deadline's.)
func TestHandlerErrorIsNotDeadline(t *testing.T) {
	seen := make(chan error, 1)
	own := server.UnaryInterceptorFunc(func(next server.UnaryFunc) server.UnaryFunc {
		return func(ctx context.Context, req proto.Message) (proto.Message, error) {
			go func() { // left running by the handler
				<-ctx.Done()
				seen <- ctx.Err()
			}()
			return nil, tether.Errorf(tether.CodeDeadlineExceeded, "a downstream call ran out of time")
		}
	})
	ec := refuseServer(t, &echo.Handler{}, own)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	if _, err := ec.Say(ctx, &echov1.SayRequest{Text: "hi"}, client.WithoutRetries()); tether.CodeOf(err) != tether.CodeDeadlineExceeded {
		t.Fatalf("Say: %v, want the handler's deadline_exceeded", err)
	}
	select {
	case err := <-seen:
		if err != context.Canceled {
			t.Errorf("the handler's context ended with %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the handler's context did not end")
	}
}
