package bench

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
)

// TestRawMux runs 16 streams of the minimal multiplexer at once over one
// connection, each checking that every echo is its own message, then
// closes the connection: the streams' receives end and no goroutine is
// left (TestMain's goleak check).
func TestRawMux(t *testing.T) {
	srv, err := Serve(Raw)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := DialRawMux(ctx, strings.TrimSuffix(srv.Targets[0], RawPath)+RawMuxPath)
	if err != nil {
		t.Fatal(err)
	}
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
	s := c.Bidi()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err == nil {
		t.Fatal("Recv after Close succeeded")
	}
	if _, err := c.Bidi().Recv(); err == nil {
		t.Fatal("Recv on a stream opened after Close succeeded")
	}
}
