package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

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
// the reader waits for it): Close returns with the writer ended, both
// streams fail, a stream opened afterwards fails, Send fails, and no
// goroutine is left on either end (TestMain's goleak check).
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
	// Wait until the piled stream's channel is full: the reader then waits
	// for it with more echoes behind (40 sent, 16 held).
	in := piled.(*rawMuxStream).in
	for deadline := time.Now().Add(10 * time.Second); len(in) < cap(in); {
		if time.Now().After(deadline) {
			t.Fatalf("the piled stream holds %d echoes, want %d", len(in), cap(in))
		}
		time.Sleep(time.Millisecond)
	}
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
	case <-c.c.writerDone:
	default:
		t.Fatal("Close returned before the writer goroutine ended")
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
	t.Cleanup(func() { _ = c.Close() }) // before the server's: cleanups run last first
	return c
}

// TestRawMuxBadFrames sends the multiplexer's server a payload that does
// not decode, and a message that ends inside a frame header: each time the
// server closes the connection (and, per TestMain's goleak check, leaves
// no goroutine).
func TestRawMuxBadFrames(t *testing.T) {
	srv, err := Serve(Raw)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for name, msg := range map[string][]byte{
		"undecodable payload": {0, 0, 0, 1, 0, 0, 0, 2, 0xff, 0xff},
		"partial header":      {0, 0, 0, 1, 0, 0},
		"length past the end": {0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 1},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ws, err := DialRaw(ctx, RawMuxURL(srv.Targets[0]))
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Close()
			if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
				t.Fatal(err)
			}
			_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, _, err := ws.ReadMessage(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("ReadMessage = %v, want the server's close", err)
			}
		})
	}
}
