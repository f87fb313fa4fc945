package e2e

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// discardCollect is the echo service with a Collect that counts the
// requests and keeps none of them, so that an upload of any length holds
// no memory.
type discardCollect struct{ echo.Handler }

// Collect counts the requests until the client half-closes.
func (*discardCollect) Collect(ctx context.Context, s *server.ClientStream[echov1.CollectRequest]) (*echov1.CollectResponse, error) {
	n := 0
	for {
		_, err := s.Receive()
		if errors.Is(err, io.EOF) {
			return &echov1.CollectResponse{Count: uint32(n)}, nil
		}
		if err != nil {
			return nil, err
		}
		n++
	}
}

// benchUpload measures an upload: one client stream of 64 KiB requests
// (strings, so each is also checked for UTF-8), with the server's stream
// window set to window (0: its default). Client and server run in this
// process.
func benchUpload(b *testing.B, window int) {
	opts := []server.Option{server.WithLogger(discardLogger())}
	if window > 0 {
		opts = append(opts, server.WithStreamWindow(window))
	}
	srv := server.New(opts...)
	echov1.RegisterEchoServiceHandler(srv, &discardCollect{})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	cli, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), client.WithLogger(discardLogger()))
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	ec := echov1.NewEchoServiceClient(cli)
	req := &echov1.CollectRequest{Text: strings.Repeat("x", 64<<10)}
	b.SetBytes(64 << 10)
	b.ReportAllocs()
	b.ResetTimer()
	s, err := ec.Collect(context.Background(), client.WithoutRetries())
	if err != nil {
		b.Fatal(err)
	}
	for range b.N {
		if err := s.Send(req); err != nil {
			b.Fatal(err)
		}
	}
	res, err := s.CloseAndReceive()
	if err != nil || int(res.Count) != b.N {
		b.Fatal(err, res)
	}
}

// BenchmarkClientStream64KiB uploads 64 KiB requests through the server's
// default stream window (256 KiB).
func BenchmarkClientStream64KiB(b *testing.B) { benchUpload(b, 0) }

// BenchmarkClientStream64KiBWindow1MiB is BenchmarkClientStream64KiB with
// the server's stream window at 1 MiB, the clients' default (docs/OPERATIONS.md,
// Sizing: when a server should raise its own).
func BenchmarkClientStream64KiBWindow1MiB(b *testing.B) { benchUpload(b, 1<<20) }
