package bench

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
)

// TestRawMux runs 16 streams of the minimal multiplexer at once over one
// connection, each checking that every echo is its own message.
func TestRawMux(t *testing.T) {
	c := dialRawMuxForTest(t)
	defer c.Close()
	// A hang fails the test instead of waiting for go test's timeout:
	// Close ends every Recv.
	watchdog := time.AfterFunc(30*time.Second, func() { _ = c.Close() })
	defer watchdog.Stop()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		s := c.Bidi()
		wg.Go(func() {
			for j := range 200 {
				body := fmt.Appendf(nil, "stream %d message %d", i, j)
				if err := s.Send(&benchv1.Payload{Body: body}); err != nil {
					errs <- err
					return
				}
				res, err := s.Recv()
				if err != nil || !bytes.Equal(res.GetBody(), body) {
					errs <- fmt.Errorf("stream %d: Recv = %q, %v; want %q", i, res.GetBody(), err, body)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestRawMuxClose closes a connection with one stream waiting in Recv and
// another whose echoes pile up unreceived (more than its channel holds, so
// the reader waits for it): Close returns, both streams fail, a stream
// opened afterwards fails, Send fails, and no goroutine is left on either
// end (TestMain's goleak check).
func TestRawMuxClose(t *testing.T) {
	c := dialRawMuxForTest(t)
	waiting, piled := c.Bidi(), c.Bidi()
	for i := range 40 {
		if err := piled.Send(&benchv1.Payload{Body: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	recvErr := make(chan error, 1)
	go func() {
		_, err := waiting.Recv()
		recvErr <- err
	}()
	time.Sleep(100 * time.Millisecond) // the echoes arrive; Recv waits
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	select {
	case err := <-recvErr:
		if err == nil {
			t.Fatal("a Recv waiting at Close succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a Recv waiting at Close did not return")
	}
	for {
		if _, err := piled.Recv(); err != nil {
			break // the echoes taken before Close, then the error
		}
	}
	if _, err := c.Bidi().Recv(); err == nil {
		t.Fatal("Recv on a stream opened after Close succeeded")
	}
	if err := waiting.Send(&benchv1.Payload{}); err == nil {
		t.Fatal("Send after Close succeeded")
	}
}

// dialRawMuxForTest serves the Raw system and dials its multiplexer; the
// server stops at the end of the test.
func dialRawMuxForTest(t *testing.T) *RawMuxConn {
	t.Helper()
	srv, err := Serve(Raw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := DialRawMux(ctx, RawMuxURL(srv.Targets[0]))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
