package e2e

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether/client"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// BenchmarkUnary measures one unary call of 16 bytes over loopback, client
// and server in this process (allocations counted for both).
func BenchmarkUnary(b *testing.B) { benchUnary(b, context.Background()) }

// BenchmarkUnaryDeadline is BenchmarkUnary with a deadline on every call,
// as gRPC's guidance asks of clients: the handler's context then carries
// the deadline and ends with DeadlineExceeded (server/callctx.go).
func BenchmarkUnaryDeadline(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	benchUnary(b, ctx)
}

// benchUnary makes echo's Say calls with ctx.
func benchUnary(b *testing.B, ctx context.Context) {
	e := newBenchEnv(b)
	req := &echov1.SayRequest{Payload: make([]byte, 16)}
	if _, err := e.echo.Say(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.echo.Say(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnaryParallel measures unary throughput with many calls in
// flight on one connection.
func BenchmarkUnaryParallel(b *testing.B) {
	e := newBenchEnv(b)
	ctx := context.Background()
	req := &echov1.SayRequest{Payload: make([]byte, 16)}
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.echo.Say(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkServerStream measures one-way streaming of 64-byte messages.
func BenchmarkServerStream(b *testing.B) {
	e := newBenchEnv(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	s, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: uint32(b.N), Payload: make([]byte, 64)})
	if err != nil {
		b.Fatal(err)
	}
	for {
		if _, err := s.Receive(); err != nil {
			break
		}
	}
}

// BenchmarkServerStream1KiB measures one-way streaming of 1 KiB messages.
func BenchmarkServerStream1KiB(b *testing.B) {
	e := newBenchEnv(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(1024)
	b.ResetTimer()
	s, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: uint32(b.N), Payload: make([]byte, 1024)})
	if err != nil {
		b.Fatal(err)
	}
	for {
		if _, err := s.Receive(); err != nil {
			break
		}
	}
}

// BenchmarkServerStreamResumable is BenchmarkServerStream on a resumable
// stream (PROTOCOL.md section 15): the per-message cost of the replay
// buffer and of acknowledgements against a plain stream.
func BenchmarkServerStreamResumable(b *testing.B) {
	e := newBenchEnv(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	s, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: uint32(b.N), Payload: make([]byte, 64)}, client.WithResumable(true))
	if err != nil {
		b.Fatal(err)
	}
	for {
		if _, err := s.Receive(); err != nil {
			break
		}
	}
}

// BenchmarkServerStreamCursor is BenchmarkServerStreamResumable with a
// handler that attaches an 8-byte cursor to every message
// (SendWithCursor, PROTOCOL.md section 15).
func BenchmarkServerStreamCursor(b *testing.B) {
	e := &env{srv: server.New(server.WithLogger(discardLogger()))}
	echov1.RegisterEchoServiceHandler(e.srv, &logFeed{})
	e.hs = httptest.NewServer(e.srv)
	cli, err := client.New("ws"+strings.TrimPrefix(e.hs.URL, "http"), client.WithLogger(discardLogger()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cli.Close()
		_ = e.srv.Close()
		e.hs.Close()
	})
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	s, err := echov1.NewEchoServiceClient(cli).Countdown(ctx, &echov1.CountdownRequest{Count: uint32(b.N), Payload: make([]byte, 64)}, client.WithResumable(true))
	if err != nil {
		b.Fatal(err)
	}
	for {
		if _, err := s.Receive(); err != nil {
			break
		}
	}
}
