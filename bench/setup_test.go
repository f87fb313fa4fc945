package bench

import (
	"context"
	"testing"
	"time"
)

// BenchmarkSetupTether measures a connection's set-up and teardown, both
// ends in this process: create a client, make one unary call, close it
// (cmd/benchcmp's setup scenario, one at a time).
func BenchmarkSetupTether(b *testing.B) { benchSetup(b, Tether) }

// BenchmarkSetupGRPC is BenchmarkSetupTether over grpc-go.
func BenchmarkSetupGRPC(b *testing.B) { benchSetup(b, GRPC) }

func benchSetup(b *testing.B, system string) {
	srv, err := Serve(system)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	req := newPayload(PayloadSize)
	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := Dial(ctx, system, srv.Targets[0], false)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Unary(ctx, req); err != nil {
			b.Fatal(err)
		}
		_ = c.Close()
		cancel()
	}
}
