package server_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/internal/mux"
	"github.com/tetherrpc/tether/server"
)

// countingEcho counts the runs of Say.
type countingEcho struct {
	echo.Handler
	runs atomic.Int32
}

func (h *countingEcho) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	h.runs.Add(1)
	return h.Handler.Say(ctx, req)
}

func refuseServer(t *testing.T, h echov1.EchoServiceHandler, i server.Interceptor) echov1.EchoServiceClient {
	t.Helper()
	srv := server.New(server.WithInterceptors(i))
	echov1.RegisterEchoServiceHandler(srv, h)
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.Close()
		hs.Close()
	})
	return newEchoClient(t, "ws"+strings.TrimPrefix(hs.URL, "http"))
}

// An interceptor's RefuseUnprocessed before the handler ran reaches the
// client as an unprocessed refusal: a call without retries is retried
// transparently and succeeds, and the handler runs once.
func TestRefuseUnprocessedRetriedTransparently(t *testing.T) {
	h := &countingEcho{}
	var attempts atomic.Int32
	refuse := server.UnaryInterceptorFunc(func(next server.UnaryFunc) server.UnaryFunc {
		return func(ctx context.Context, req proto.Message) (proto.Message, error) {
			if attempts.Add(1) <= 2 {
				return nil, server.RefuseUnprocessed(ctx, tether.Errorf(tether.CodeUnavailable, "busy"))
			}
			return next(ctx, req)
		}
	})
	ec := refuseServer(t, h, refuse)
	res, err := ec.Say(testContext(t), &echov1.SayRequest{Text: "hi"}, client.WithoutRetries())
	if err != nil || res.GetText() == "" {
		t.Fatalf("Say: %v, %v", res, err)
	}
	if a, r := attempts.Load(), h.runs.Load(); a != 3 || r != 1 {
		t.Fatalf("%d attempts, %d handler runs; want 3 and 1", a, r)
	}
}

// A refusal made after the handler ran is never sent as unprocessed: the
// client gets the error once, without a transparent retry that would run
// the handler again; so is a refusal made before next but returned after
// the handler ran.
func TestRefuseUnprocessedAfterHandlerRan(t *testing.T) {
	for name, refuseFirst := range map[string]bool{"after next": false, "before next": true} {
		t.Run(name, func(t *testing.T) {
			h := &countingEcho{}
			var attempts atomic.Int32
			refuse := server.UnaryInterceptorFunc(func(next server.UnaryFunc) server.UnaryFunc {
				return func(ctx context.Context, req proto.Message) (proto.Message, error) {
					attempts.Add(1)
					var early error
					if refuseFirst {
						early = server.RefuseUnprocessed(ctx, tether.Errorf(tether.CodeUnavailable, "too late"))
					}
					if _, err := next(ctx, req); err != nil {
						return nil, err
					}
					if early != nil {
						return nil, early
					}
					return nil, server.RefuseUnprocessed(ctx, tether.Errorf(tether.CodeUnavailable, "too late"))
				}
			})
			ec := refuseServer(t, h, refuse)
			_, err := ec.Say(testContext(t), &echov1.SayRequest{Text: "hi"}, client.WithoutRetries())
			if tether.CodeOf(err) != tether.CodeUnavailable || errors.Is(err, mux.ErrUnprocessed) {
				t.Fatalf("Say: %v (unprocessed %v), want unavailable, processed", err, errors.Is(err, mux.ErrUnprocessed))
			}
			if a, r := attempts.Load(), h.runs.Load(); a != 1 || r != 1 {
				t.Fatalf("%d attempts, %d handler runs; want 1 and 1", a, r)
			}
		})
	}
}

// RefuseUnprocessed outside a call returns the error as it is.
func TestRefuseUnprocessedOutsideCall(t *testing.T) {
	err := server.RefuseUnprocessed(context.Background(), errors.New("x"))
	if tether.CodeOf(err) != tether.CodeUnknown || !strings.Contains(err.Error(), "x") {
		t.Fatalf("err = %v", err)
	}
	if server.RefuseUnprocessed(context.Background(), nil) != nil {
		t.Fatal("nil error refused")
	}
}

// refusingEcho refuses from inside the handler, after doing its work.
type refusingEcho struct{ countingEcho }

func (h *refusingEcho) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	if h.runs.Add(1) == 1 {
		return nil, server.RefuseUnprocessed(ctx, tether.Errorf(tether.CodeUnavailable, "after the effect"))
	}
	return h.Handler.Say(ctx, req)
}

// With no interceptor at all, markHandlerStart is not installed: a handler
// (which has run) can still get its error sent as unprocessed.
func TestRefuseUnprocessedFromHandlerWithoutInterceptors(t *testing.T) {
	h := &refusingEcho{}
	srv := server.New()
	echov1.RegisterEchoServiceHandler(srv, h)
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Close(); hs.Close() })
	ec := newEchoClient(t, "ws"+strings.TrimPrefix(hs.URL, "http"))
	_, _ = ec.Say(testContext(t), &echov1.SayRequest{Text: "hi"}, client.WithoutRetries())
	if r := h.runs.Load(); r != 1 {
		t.Fatalf("handler ran %d times for one call without retries", r)
	}
}

// An interceptor that runs next asynchronously (queue with timeout) and
// refuses on timeout: the handler starts after finish checked the mark,
// and the transparent retry applies the call a second time.
func TestRefuseUnprocessedBeforeLateHandlerStart(t *testing.T) {
	h := &countingEcho{}
	first := true
	bulkhead := server.UnaryInterceptorFunc(func(next server.UnaryFunc) server.UnaryFunc {
		return func(ctx context.Context, req proto.Message) (proto.Message, error) {
			if !first {
				return next(ctx, req)
			}
			first = false
			started := make(chan struct{})
			go func() {
				time.Sleep(30 * time.Millisecond) // queued
				close(started)
				_, _ = next(ctx, req)
			}()
			select {
			case <-started:
				<-time.After(time.Second)
				return nil, nil
			case <-time.After(10 * time.Millisecond):
				return nil, server.RefuseUnprocessed(ctx, tether.Errorf(tether.CodeUnavailable, "queue timeout"))
			}
		}
	})
	ec := refuseServer(t, h, bulkhead)
	_, err := ec.Say(testContext(t), &echov1.SayRequest{Text: "hi"}, client.WithoutRetries())
	time.Sleep(100 * time.Millisecond)
	if r := h.runs.Load(); r != 1 {
		t.Fatalf("Say: %v; handler ran %d times for one call without retries", err, r)
	}
}
