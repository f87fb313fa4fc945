package client_test

import (
	"bytes"
	"context"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// syncBuffer is a bytes.Buffer safe for concurrent writes (a log sink).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// abandonCountdowns opens n long Countdown streams, reads one message of
// each, checks that the server runs them all, and drops them: no Close, not
// read to the end, a context that never ends.
func abandonCountdowns(t *testing.T, srv *server.Server, ec echov1.EchoServiceClient, n int) {
	t.Helper()
	var streams []*client.ServerStream[echov1.CountdownResponse]
	for i := 0; i < n; i++ {
		st, err := ec.Countdown(context.Background(), &echov1.CountdownRequest{Count: 1 << 30})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Receive(); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	if got := srv.Stats().ActiveStreams; got != n {
		t.Fatalf("%d streams active on the server, want the %d abandoned ones", got, n)
	}
	runtime.KeepAlive(streams) // until here: a GC may release them from now on
}

// Issue 10 item 14: a stream the caller drops is released once it is
// unreachable: the server's slot and handler are freed, and the client logs
// it once, naming the procedure.
func TestAbandonedStreamIsReleased(t *testing.T) {
	srv := server.New(server.WithMaxConcurrentStreams(2))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	c, err := client.New(startServer(t, srv), client.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ec := echov1.NewEchoServiceClient(c)
	abandonCountdowns(t, srv, ec, 2)

	deadline := time.Now().Add(20 * time.Second)
	for srv.Stats().ActiveStreams > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("abandoned streams never released: %d still active on the server after 20s of runtime.GC", srv.Stats().ActiveStreams)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := ec.Say(ctx, &echov1.SayRequest{Text: "after"}); err != nil {
		t.Fatalf("unary call after the abandoned streams were released: %v", err)
	}
	out := logs.String()
	if n := strings.Count(out, "abandoned"); n != 2 || strings.Count(out, echov1.EchoServiceCountdownProcedure) != 2 {
		t.Fatalf("want one warning per abandoned stream naming %s; log:\n%s", echov1.EchoServiceCountdownProcedure, out)
	}
}
