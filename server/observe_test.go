package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/server"
)

// fakeStream is a server.Stream whose Send and Receive fail every third
// call, and Receive returns io.EOF after 30 calls.
type fakeStream struct {
	sends, receives atomic.Int64
	header          tether.Metadata
}

var errFake = errors.New("fake")

func (f *fakeStream) Spec() tether.Spec {
	return tether.Spec{Procedure: "/test.v1.Test/Bidi", StreamType: tether.StreamTypeBidi}
}
func (f *fakeStream) Peer() server.Peer                { return server.Peer{Addr: "192.0.2.1:1234"} }
func (f *fakeStream) RequestHeader() tether.Metadata   { return tether.Metadata{"x-request-id": {"7"}} }
func (f *fakeStream) ResponseHeader() tether.Metadata  { return f.header }
func (f *fakeStream) ResponseTrailer() tether.Metadata { return nil }

func (f *fakeStream) Send(proto.Message) error {
	if f.sends.Add(1)%3 == 0 {
		return errFake
	}
	return nil
}

func (f *fakeStream) Receive(proto.Message) error {
	n := f.receives.Add(1)
	switch {
	case n > 30:
		return io.EOF
	case n%3 == 0:
		return errFake
	}
	return nil
}

func TestObserveStreamCounts(t *testing.T) {
	f := &fakeStream{header: tether.Metadata{}}
	s, counts := server.ObserveStream(f)
	if sent, received := counts(); sent != 0 || received != 0 {
		t.Fatalf("counts() = %d, %d before any message", sent, received)
	}
	for range 6 {
		s.Send(nil)
	}
	for range 4 {
		s.Receive(nil)
	}
	if sent, received := counts(); sent != 4 || received != 3 {
		t.Errorf("counts() = %d, %d; want 4 sent, 3 received (failed calls not counted)", sent, received)
	}
	for s.Receive(nil) != io.EOF {
	}
	if _, received := counts(); received != 20 {
		t.Errorf("received %d, want 20 (io.EOF not counted)", received)
	}

	// The rest of the stream is the original's.
	if s.Spec().Procedure != "/test.v1.Test/Bidi" || s.Peer().Addr != "192.0.2.1:1234" || s.RequestHeader().Get("x-request-id") != "7" {
		t.Errorf("CallInfo not passed through: %v %v %v", s.Spec(), s.Peer(), s.RequestHeader())
	}
	s.ResponseHeader().Set("k", "v")
	if f.header.Get("k") != "v" {
		t.Error("ResponseHeader is not the original's")
	}
}

// TestObserveStreamConcurrent sends and receives from several goroutines at
// once (run it with -race).
func TestObserveStreamConcurrent(t *testing.T) {
	const per = 300
	f := &fakeStream{}
	f.receives.Store(-1 << 40) // never io.EOF
	s, counts := server.ObserveStream(f)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range per {
				s.Send(nil)
			}
		})
		wg.Go(func() {
			for range per {
				s.Receive(nil)
			}
			counts()
		})
	}
	wg.Wait()
	// Every third call of each fails.
	want := int64(4 * per * 2 / 3)
	if sent, received := counts(); sent != want || received != want {
		t.Errorf("counts() = %d, %d; want %d each", sent, received, want)
	}
}

func TestHandlerError(t *testing.T) {
	deadline := tether.Errorf(tether.CodeDeadlineExceeded, "tether: deadline exceeded")
	ended, cancel := context.WithCancelCause(context.Background())
	cancel(deadline)
	canceled, cancelPlain := context.WithCancel(context.Background())
	cancelPlain()
	tetherCanceled := tether.Errorf(tether.CodeCanceled, "handler gave up")
	other := errors.New("boom")

	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want error
	}{
		{"nil", ended, nil, nil},
		{"ctx.Err", ended, ended.Err(), deadline},
		{"wrapped ctx.Err", ended, fmt.Errorf("reading: %w", context.Canceled), deadline},
		{"deadline exceeded", ended, context.DeadlineExceeded, deadline},
		{"tether error kept", ended, tetherCanceled, tetherCanceled},
		{"other error kept", ended, other, other},
		{"live context", context.Background(), context.Canceled, context.Canceled},
		{"no cause", canceled, context.Canceled, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := server.HandlerError(tc.ctx, tc.err); got != tc.want {
				t.Errorf("HandlerError(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
	if got := tether.CodeOf(server.HandlerError(ended, context.Canceled)); got != tether.CodeDeadlineExceeded {
		t.Errorf("code = %v, want deadline_exceeded", got)
	}
}
