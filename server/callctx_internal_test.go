package server

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
)

type ctxKey struct{}

// endedBy returns a handler context whose stream ended with cause, and
// waits for it to end.
func endedBy(t *testing.T, timeout time.Duration, cause error) *callCtx {
	t.Helper()
	stream, cancel := context.WithCancelCause(context.WithValue(context.Background(), ctxKey{}, "v"))
	ctx, stop := newCallCtx(stream, timeout, nil)
	t.Cleanup(stop)
	cancel(cause)
	select {
	case <-ctx.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("context did not end")
	}
	return ctx
}

func TestCallCtx(t *testing.T) {
	canceled := tether.Errorf(tether.CodeCanceled, "tether: stream reset by peer")
	deadline := tether.Errorf(tether.CodeDeadlineExceeded, "context deadline exceeded")
	closed := tether.Errorf(tether.CodeUnavailable, "tether: connection closed")
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		cause   error
		want    error
	}{
		{"reset canceled, no deadline", 0, canceled, context.Canceled},
		{"reset canceled long before the deadline", time.Hour, canceled, context.Canceled},
		{"reset canceled within the skew of the deadline", deadlineSkew / 2, canceled, context.DeadlineExceeded},
		{"reset deadline_exceeded before the server's timer", time.Hour, deadline, context.DeadlineExceeded},
		{"connection closed", time.Hour, closed, context.Canceled},
		{"connection closed, no deadline", 0, closed, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := endedBy(t, tc.timeout, tc.cause)
			if err := ctx.Err(); err != tc.want {
				t.Errorf("Err() = %v, want %v", err, tc.want)
			}
			if tc.timeout >= time.Hour { // the server's timer cannot have fired
				if cause := context.Cause(ctx); cause != tc.cause {
					t.Errorf("Cause = %v, want %v", cause, tc.cause)
				}
			}
			derived, cancel := context.WithTimeout(ctx, time.Hour)
			defer cancel()
			<-derived.Done()
			if err := derived.Err(); err != tc.want {
				t.Errorf("derived context's Err() = %v, want %v", err, tc.want)
			}
			if got, want := context.Cause(derived), context.Cause(ctx); got != want {
				t.Errorf("derived context's cause = %v, want %v", got, want)
			}
			if v := ctx.Value(ctxKey{}); v != "v" {
				t.Errorf("Value = %v, want the stream context's value", v)
			}
			_, ok := ctx.Deadline()
			if ok != (tc.timeout > 0) {
				t.Errorf("Deadline() ok = %v with timeout %v", ok, tc.timeout)
			}
		})
	}
}

func TestCallCtxServerTimer(t *testing.T) {
	stream, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	fired := make(chan struct{})
	ctx, stop := newCallCtx(stream, 10*time.Millisecond, func() { close(fired) })
	defer stop()
	if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err() = %v before the deadline", err)
	}
	select {
	case <-fired:
	case <-time.After(30 * time.Second):
		t.Fatal("the server's timer did not end the call")
	}
	<-ctx.Done()
	if ctx.Err() != context.DeadlineExceeded || tether.CodeOf(context.Cause(ctx)) != tether.CodeDeadlineExceeded {
		t.Errorf("Err() = %v, Cause = %v; want DeadlineExceeded", ctx.Err(), context.Cause(ctx))
	}
	// The stream's end afterwards changes nothing.
	cancel(tether.Errorf(tether.CodeCanceled, "late"))
	if ctx.Err() != context.DeadlineExceeded {
		t.Errorf("Err() = %v after the stream ended", ctx.Err())
	}
}

func TestCallCtxStop(t *testing.T) {
	ctx, stop := newCallCtx(context.Background(), time.Hour, nil)
	if ctx.Err() != nil {
		t.Fatalf("Err() = %v on a live call", ctx.Err())
	}
	stop()
	if ctx.Err() != context.Canceled {
		t.Errorf("Err() = %v after stop, want Canceled", ctx.Err())
	}
}
