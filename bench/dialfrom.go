package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
	"github.com/tetherrpc/tether/bench/gen/bench/v1/benchv1grpc"
	"github.com/tetherrpc/tether/client"
)

// DialFrom connects a client of system to target, as Dial does without
// waiting, from the local address localIP (a loopback address): spreading
// many connections over source addresses keeps each under a server's
// per-address limit and multiplies the ephemeral ports available.
func DialFrom(system, target, localIP string) (Conn, error) {
	ip := net.ParseIP(localIP)
	if ip == nil || ip.To4() == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("bench: %q is not an IPv4 loopback address", localIP)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		if err := checkLoopback(addr); err != nil {
			return nil, err
		}
		return d.DialContext(ctx, "tcp4", addr)
	}
	switch system {
	case Tether:
		if err := checkLoopbackURL(target); err != nil {
			return nil, err
		}
		c, err := client.New(target, client.WithLogger(slog.New(slog.DiscardHandler)), client.WithContextDialer(dial))
		if err != nil {
			return nil, err
		}
		return &tetherConn{c: c, svc: benchv1.NewBenchServiceClient(c)}, nil
	case GRPC:
		if err := checkLoopback(target); err != nil {
			return nil, err
		}
		cc, err := grpc.NewClient("passthrough:///"+target,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithNoProxy(), grpc.WithContextDialer(dial))
		if err != nil {
			return nil, err
		}
		return &grpcConn{cc: cc, svc: benchv1grpc.NewBenchServiceClient(cc)}, nil
	}
	return nil, fmt.Errorf("bench: no RPC client for %q", system)
}
