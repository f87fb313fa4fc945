package e2e

import (
	"context"
	"testing"

	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
)

// BenchmarkServerStream64KiB measures one-way streaming of 64 KiB payloads
// (issue 15, "Round 2: large messages" in docs/BENCHMARKS.md): each message
// is a little over one frame's 64 KiB, so it travels as two fragments and
// is assembled by the receiver. Client and server run in this process.
func BenchmarkServerStream64KiB(b *testing.B) {
	e := newBenchEnv(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(64 << 10)
	b.ResetTimer()
	s, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: uint32(b.N), Payload: make([]byte, 64<<10)})
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for {
		if _, err := s.Receive(); err != nil {
			break
		}
		n++
	}
	if n != b.N {
		b.Fatalf("received %d messages, want %d", n, b.N)
	}
}
