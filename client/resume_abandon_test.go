package client_test

import (
	"context"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// Issue 12: a resumable stream the caller drops is released once it is
// unreachable, as a plain one is (TestAbandonedStreamIsReleased): its
// session and handler end on the server, and the client logs it once,
// naming the procedure. A resumable stream read to its end is not
// reported.
func TestAbandonedResumableStreamIsReleased(t *testing.T) {
	srv := server.New(server.WithMaxConcurrentStreams(3))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	c, err := client.New(startServer(t, srv), client.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ec := echov1.NewEchoServiceClient(c)
	func() {
		done, err := ec.Countdown(context.Background(), &echov1.CountdownRequest{Count: 2}, client.WithResumable(true))
		if err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := done.Receive(); err != nil {
				break
			}
		}
		var streams []*client.ServerStream[echov1.CountdownResponse]
		for range 2 {
			st, err := ec.Countdown(context.Background(), &echov1.CountdownRequest{Count: 1 << 30}, client.WithResumable(true))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Receive(); err != nil {
				t.Fatal(err)
			}
			streams = append(streams, st)
		}
		if got := srv.Stats().ActiveStreams; got != 2 {
			t.Fatalf("%d streams active on the server, want the 2 abandoned ones", got)
		}
		runtime.KeepAlive(streams)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for srv.Stats().ActiveStreams > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("abandoned resumable streams never released: %d still active on the server after 20s of runtime.GC", srv.Stats().ActiveStreams)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	// The cleanups have run once the warnings are there (the one read to
	// its end may be collected later, and says nothing).
	for strings.Count(logs.String(), "abandoned") < 2 && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	for range 5 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	out := logs.String()
	if n := strings.Count(out, "abandoned"); n != 2 || strings.Count(out, echov1.EchoServiceCountdownProcedure) != 2 {
		t.Fatalf("want one warning per abandoned stream naming %s; log:\n%s", echov1.EchoServiceCountdownProcedure, out)
	}
}
