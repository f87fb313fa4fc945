package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// Issue 10 item 20: the byte counters never go down, also while a drained
// connection still carries a call (it is no longer the client's current
// connection but has not closed yet) and after it closes.
func TestStatsBytesMonotonicAcrossDrain(t *testing.T) {
	srv := server.New()
	h := &sayProbe{started: make(chan struct{}, 1)}
	echov1.RegisterEchoServiceHandler(srv, h)
	url := startServer(t, srv)
	c, err := client.New(url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ec := echov1.NewEchoServiceClient(c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := ec.Say(ctx, &echov1.SayRequest{Text: "warm up"}); err != nil {
		t.Fatal(err)
	}
	<-h.started
	prev := c.Stats()
	if prev.BytesIn == 0 { // BytesOut may be counted after the response arrived
		t.Fatalf("no bytes counted after a call: %+v", prev)
	}
	check := func(when string) {
		t.Helper()
		st := c.Stats()
		if st.BytesIn < prev.BytesIn || st.BytesOut < prev.BytesOut {
			t.Fatalf("%s: byte counters went down: in %d -> %d, out %d -> %d", when, prev.BytesIn, st.BytesIn, prev.BytesOut, st.BytesOut)
		}
		prev = st
	}

	// A call in flight keeps the connection open while the server drains it.
	slow := make(chan error, 1)
	go func() {
		_, err := ec.Say(ctx, &echov1.SayRequest{Text: "slow", SleepMillis: 1500})
		slow <- err
	}()
	<-h.started
	check("call in flight")
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	// The client leaves Ready when the GOAWAY arrives; the old connection
	// still carries the slow call.
	for c.State() == client.StateReady {
		check("waiting for the drain")
		time.Sleep(time.Millisecond)
	}
	check("connection draining")
	if err := <-slow; err != nil {
		t.Fatalf("call on the draining connection: %v", err)
	}
	check("call done")
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	check("server shut down")
	for i := 0; i < 100; i++ {
		check("after the drain")
		time.Sleep(time.Millisecond)
	}
}

// sayProbe is the echo service whose Say says when it starts.
type sayProbe struct {
	echo.Handler
	started chan struct{}
}

func (h *sayProbe) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	h.started <- struct{}{}
	return h.Handler.Say(ctx, req)
}
