package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
)

// These benchmarks run client and server in one process over loopback, so
// -benchmem counts the allocations of both ends of a call together. Compare
// the Tether, GRPC, Connect (h2c) and DRPC (TCP) variants of each:
//
//	go test -run XXX -bench . -benchmem
//
// cmd/benchcmp measures throughput and latency with client and server in
// separate processes.

func dialBench(b *testing.B, system string) Conn {
	b.Helper()
	srv, err := Serve(system)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, system, srv.Targets[0], true)
	if err != nil {
		srv.Close()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = c.Close()
		srv.Close()
	})
	return c
}

func newPayload(size int) *benchv1.Payload {
	return &benchv1.Payload{Body: make([]byte, size)}
}

// BenchmarkUnaryTether measures one unary call with a 16-byte body at a time.
func BenchmarkUnaryTether(b *testing.B) { benchUnary(b, Tether) }

// BenchmarkUnaryGRPC is BenchmarkUnaryTether over grpc-go.
func BenchmarkUnaryGRPC(b *testing.B) { benchUnary(b, GRPC) }

// BenchmarkUnaryConnect is BenchmarkUnaryTether over connect-go (h2c).
func BenchmarkUnaryConnect(b *testing.B) { benchUnary(b, ConnectH2C) }

// BenchmarkUnaryDRPC is BenchmarkUnaryTether over drpc (TCP).
func BenchmarkUnaryDRPC(b *testing.B) { benchUnary(b, DRPCTCP) }

func benchUnary(b *testing.B, system string) {
	c := dialBench(b, system)
	ctx := context.Background()
	req := newPayload(PayloadSize)
	for range 100 { // warm up pools and windows
		if _, err := c.Unary(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Unary(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnaryParallelTether makes unary calls from 32 goroutines per CPU
// over one connection.
func BenchmarkUnaryParallelTether(b *testing.B) { benchUnaryParallel(b, Tether) }

// BenchmarkUnaryParallelGRPC is BenchmarkUnaryParallelTether over grpc-go.
func BenchmarkUnaryParallelGRPC(b *testing.B) { benchUnaryParallel(b, GRPC) }

func benchUnaryParallel(b *testing.B, system string) {
	c := dialBench(b, system)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req := newPayload(PayloadSize)
		for pb.Next() {
			if _, err := c.Unary(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkServerStreamTether measures one server-streamed message: one call
// streams b.N messages of 64 bytes or 1 KiB.
func BenchmarkServerStreamTether(b *testing.B) { benchServerStream(b, Tether) }

// BenchmarkServerStreamGRPC is BenchmarkServerStreamTether over grpc-go.
func BenchmarkServerStreamGRPC(b *testing.B) { benchServerStream(b, GRPC) }

// BenchmarkServerStreamConnect is BenchmarkServerStreamTether over
// connect-go (h2c).
func BenchmarkServerStreamConnect(b *testing.B) { benchServerStream(b, ConnectH2C) }

// BenchmarkServerStreamDRPC is BenchmarkServerStreamTether over drpc (TCP).
func BenchmarkServerStreamDRPC(b *testing.B) { benchServerStream(b, DRPCTCP) }

func benchServerStream(b *testing.B, system string) {
	for _, size := range []int{64, 1024} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			c := dialBench(b, system)
			ctx := context.Background()
			if _, err := c.ServerStream(ctx, &benchv1.StreamRequest{Count: 100, Size: uint32(size)}); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(size))
			b.ResetTimer()
			n, err := c.ServerStream(ctx, &benchv1.StreamRequest{Count: uint32(b.N), Size: uint32(size)})
			if err != nil {
				b.Fatal(err)
			}
			if n != b.N {
				b.Fatalf("received %d messages, want %d", n, b.N)
			}
		})
	}
}

// BenchmarkClientStreamTether measures one client-streamed message of
// 64 KiB: one call sends b.N of them.
func BenchmarkClientStreamTether(b *testing.B) { benchClientStream(b, Tether) }

// BenchmarkClientStreamGRPC is BenchmarkClientStreamTether over grpc-go.
func BenchmarkClientStreamGRPC(b *testing.B) { benchClientStream(b, GRPC) }

func benchClientStream(b *testing.B, system string) {
	const size = 64 << 10
	c := dialBench(b, system)
	ctx := context.Background()
	msg := newPayload(size)
	if _, err := c.ClientStream(ctx, msg, 16); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(size)
	b.ResetTimer()
	n, err := c.ClientStream(ctx, msg, b.N)
	if err != nil {
		b.Fatal(err)
	}
	if n != b.N {
		b.Fatalf("the server received %d messages, want %d", n, b.N)
	}
}

// BenchmarkBidiTether measures one round trip of a 16-byte body on an open
// bidirectional stream.
func BenchmarkBidiTether(b *testing.B) { benchBidi(b, Tether) }

// BenchmarkBidiGRPC is BenchmarkBidiTether over grpc-go.
func BenchmarkBidiGRPC(b *testing.B) { benchBidi(b, GRPC) }

// BenchmarkBidiConnect is BenchmarkBidiTether over connect-go (h2c).
func BenchmarkBidiConnect(b *testing.B) { benchBidi(b, ConnectH2C) }

// BenchmarkBidiDRPC is BenchmarkBidiTether over drpc (TCP).
func BenchmarkBidiDRPC(b *testing.B) { benchBidi(b, DRPCTCP) }

func benchBidi(b *testing.B, system string) {
	c := dialBench(b, system)
	ctx := context.Background()
	s, err := c.Bidi(ctx)
	if err != nil {
		b.Fatal(err)
	}
	req := newPayload(PayloadSize)
	roundTrip := func() {
		if err := s.Send(req); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			b.Fatal(err)
		}
	}
	for range 100 {
		roundTrip()
	}
	b.ReportAllocs()
	for b.Loop() {
		roundTrip()
	}
	b.StopTimer()
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
}
