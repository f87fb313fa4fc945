package bench

import (
	"bytes"
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestSystems serves BenchService over every system and checks that its
// client gets the same answers from the same handlers: a unary echo, a
// server stream of 64 KiB messages, and bidi round trips where the system
// supports them (and a clean refusal where it does not).
func TestSystems(t *testing.T) {
	for _, sys := range RPCSystems {
		t.Run(sys, func(t *testing.T) {
			srv, err := Serve(sys)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := Dial(ctx, sys, srv.Targets[0], true)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()

			body := []byte("sixteen bytes!!!")
			res, err := c.Unary(ctx, &benchv1.Payload{Body: body})
			if err != nil || !bytes.Equal(res.GetBody(), body) {
				t.Fatalf("Unary = %q, %v; want %q", res.GetBody(), err, body)
			}
			n, err := c.ServerStream(ctx, &benchv1.StreamRequest{Count: 5, Size: 64 << 10})
			if err != nil || n != 5 {
				t.Fatalf("ServerStream = %d, %v; want 5 messages", n, err)
			}

			s, err := c.Bidi(ctx)
			if why := Unsupported(sys, KindBidi); why != "" {
				if err == nil {
					err = s.Send(&benchv1.Payload{Body: body})
					if err == nil {
						_, err = s.Recv()
					}
					_ = s.Close()
				}
				if err == nil {
					t.Fatalf("Bidi worked, but Unsupported says %q", why)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				if err := s.Send(&benchv1.Payload{Body: body}); err != nil {
					t.Fatal(err)
				}
				res, err := s.Recv()
				if err != nil || !bytes.Equal(res.GetBody(), body) {
					t.Fatalf("Bidi Recv = %q, %v; want %q", res.GetBody(), err, body)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if d := Dialed(c); d != 1 {
				t.Errorf("%d connections dialed for calls one at a time, want 1", d)
			}
		})
	}
}
