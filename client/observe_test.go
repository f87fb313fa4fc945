package client_test

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
)

// fakeStream is a client.Stream whose methods return scripted errors.
type fakeStream struct {
	mu           sync.Mutex
	sendErrs     []error // results of successive Sends; nil once used up
	closeSendErr error
	recvErrs     []error // results of successive Receives; io.EOF once used up
	closeErr     error
	closes       int
	header       tether.Metadata
	trailer      tether.Metadata
	log          []string
}

func (f *fakeStream) Send(proto.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, "send")
	if len(f.sendErrs) == 0 {
		return nil
	}
	err := f.sendErrs[0]
	f.sendErrs = f.sendErrs[1:]
	return err
}

func (f *fakeStream) Receive(proto.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, "receive")
	if len(f.recvErrs) == 0 {
		return io.EOF
	}
	err := f.recvErrs[0]
	f.recvErrs = f.recvErrs[1:]
	return err
}

func (f *fakeStream) CloseSend() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, "close_send")
	return f.closeSendErr
}

func (f *fakeStream) Header() (tether.Metadata, error) { return f.header, nil }
func (f *fakeStream) Trailer() tether.Metadata         { return f.trailer }

func (f *fakeStream) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, "close")
	f.closes++
	return f.closeErr
}

func (f *fakeStream) note(s string) {
	f.mu.Lock()
	f.log = append(f.log, s)
	f.mu.Unlock()
}

// end records the calls of an onEnd callback.
type end struct {
	mu             sync.Mutex
	calls          int
	err            error
	sent, received int64
}

func (e *end) onEnd(err error, sent, received int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls++
	e.err, e.sent, e.received = err, sent, received
}

func (e *end) check(t *testing.T, calls int, sent, received int64) error {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.calls != calls {
		t.Fatalf("onEnd ran %d times, want %d", e.calls, calls)
	}
	if e.sent != sent || e.received != received {
		t.Errorf("onEnd counts: sent %d, received %d; want %d, %d", e.sent, e.received, sent, received)
	}
	return e.err
}

func TestObserveStreamEOF(t *testing.T) {
	boom := errors.New("boom")
	f := &fakeStream{sendErrs: []error{nil, boom, nil}, recvErrs: []error{nil, nil}}
	var e end
	s := client.ObserveStream(f, e.onEnd)
	for range 3 {
		s.Send(nil)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := s.Receive(nil); err != nil {
			t.Fatal(err)
		}
	}
	e.check(t, 0, 0, 0)
	if err := s.Receive(nil); err != io.EOF {
		t.Fatalf("Receive = %v, want io.EOF", err)
	}
	// A clean end wins over the earlier Send error.
	if err := e.check(t, 1, 2, 2); err != nil {
		t.Errorf("onEnd error = %v, want nil", err)
	}
	// Nothing after the end runs onEnd again.
	if err := s.Receive(nil); err != io.EOF {
		t.Fatalf("Receive = %v, want io.EOF", err)
	}
	s.Close()
	s.Close()
	e.check(t, 1, 2, 2)
	if f.closes != 2 {
		t.Errorf("inner Close called %d times, want 2", f.closes)
	}
}

func TestObserveStreamReceiveError(t *testing.T) {
	wrapped := tether.Errorf(tether.CodeUnavailable, "gone")
	f := &fakeStream{recvErrs: []error{nil, wrapped}}
	var e end
	s := client.ObserveStream(f, e.onEnd)
	s.Send(nil)
	s.Receive(nil)
	if err := s.Receive(nil); err != wrapped {
		t.Fatalf("Receive = %v, want %v", err, wrapped)
	}
	if err := e.check(t, 1, 1, 1); err != wrapped {
		t.Errorf("onEnd error = %v, want %v", err, wrapped)
	}
	s.Close()
	e.check(t, 1, 1, 1)
}

func TestObserveStreamClose(t *testing.T) {
	closeErr := errors.New("close failed")
	f := &fakeStream{closeErr: closeErr}
	var e end
	s := client.ObserveStream(f, func(err error, sent, received int64) {
		f.note("end")
		e.onEnd(err, sent, received)
	})
	s.Send(nil)
	// io.EOF from Send or CloseSend means the server ended the call: it is
	// not the reason the stream ended.
	f.sendErrs = []error{io.EOF}
	s.Send(nil)
	f.closeSendErr = io.EOF
	s.CloseSend()
	if err := s.Close(); err != closeErr {
		t.Errorf("Close = %v, want the inner Close's error", err)
	}
	err := e.check(t, 1, 1, 0)
	if tether.CodeOf(err) != tether.CodeCanceled || tether.AsError(err).Message() != "tether: stream closed by the client" {
		t.Errorf("onEnd error = %v, want canceled: stream closed by the client", err)
	}
	if got := f.log[len(f.log)-2:]; got[0] != "close" || got[1] != "end" {
		t.Errorf("calls end with %q, want onEnd after the inner Close", got)
	}
	s.Close()
	e.check(t, 1, 1, 0)
}

func TestObserveStreamCloseAfterSendError(t *testing.T) {
	first := tether.Errorf(tether.CodeResourceExhausted, "too big")
	for _, tc := range []struct {
		name string
		f    *fakeStream
		send int
	}{
		{"send", &fakeStream{sendErrs: []error{nil, first, errors.New("second")}, closeSendErr: errors.New("third")}, 3},
		{"close_send", &fakeStream{sendErrs: []error{io.EOF}, closeSendErr: first}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e end
			s := client.ObserveStream(tc.f, e.onEnd)
			for range tc.send {
				s.Send(nil)
			}
			s.CloseSend()
			s.Close()
			var sent int64
			if tc.name == "send" {
				sent = 1
			}
			if err := e.check(t, 1, sent, 0); err != first {
				t.Errorf("onEnd error = %v, want the first send error %v", err, first)
			}
		})
	}
}

func TestObserveStreamPassesThrough(t *testing.T) {
	f := &fakeStream{header: tether.Metadata{"a": {"1"}}, trailer: tether.Metadata{"b": {"2"}}}
	s := client.ObserveStream(f, func(error, int64, int64) {})
	if h, err := s.Header(); err != nil || h.Get("a") != "1" {
		t.Errorf("Header = %v, %v", h, err)
	}
	if tr := s.Trailer(); tr.Get("b") != "2" {
		t.Errorf("Trailer = %v", tr)
	}
}

// countStream sends and receives without errors. Receive returns n
// messages, then io.EOF once done is closed.
type countStream struct {
	client.Stream
	left atomic.Int64
	done chan struct{}
}

func (c *countStream) Send(proto.Message) error { return nil }
func (c *countStream) CloseSend() error         { return nil }
func (c *countStream) Close() error             { return nil }

func (c *countStream) Receive(proto.Message) error {
	if c.left.Add(-1) < 0 {
		<-c.done
		return io.EOF
	}
	return nil
}

// TestObserveStreamConcurrent sends, receives and closes from several
// goroutines at once (run it with -race): onEnd runs once, with every
// message counted.
func TestObserveStreamConcurrent(t *testing.T) {
	const n = 1000
	for range 20 {
		cs := &countStream{done: make(chan struct{})}
		cs.left.Store(n)
		var e end
		s := client.ObserveStream(cs, e.onEnd)
		var wg sync.WaitGroup
		wg.Go(func() {
			for range n {
				s.Send(nil)
			}
			close(cs.done)
		})
		wg.Go(func() {
			for s.Receive(nil) == nil {
			}
		})
		wg.Wait()
		if err := e.check(t, 1, n, n); err != nil {
			t.Fatalf("onEnd error = %v, want nil", err)
		}

		// Close racing the end: exactly one of them runs onEnd.
		var e2 end
		done := make(chan struct{})
		close(done)
		s2 := client.ObserveStream(&countStream{done: done}, e2.onEnd)
		wg.Go(func() { s2.Receive(nil) })
		wg.Go(func() { s2.Close() })
		wg.Go(func() { s2.Close() })
		wg.Wait()
		e2.check(t, 1, 0, 0)
	}
}
