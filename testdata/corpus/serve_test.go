package corpus_test

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/server"
	pingv1 "github.com/tetherrpc/tether/testdata/corpus/gen/connect/ping/v1"
	"github.com/tetherrpc/tether/testdata/corpus/gen/connect/ping/v1/pingv1tether"
	healthv1 "github.com/tetherrpc/tether/testdata/corpus/gen/grpc/health/v1"
	"github.com/tetherrpc/tether/testdata/corpus/gen/grpc/health/v1/healthv1tether"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve serves what register registers on a loopback socket and returns a
// client connected to it.
func serve(t *testing.T, register func(*server.Server)) *client.Client {
	t.Helper()
	srv := server.New()
	register(srv)
	hs := httptest.NewServer(srv)
	c, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		srv.Close()
		hs.Close()
	})
	return c
}

func callContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// health serves grpc.health.v1.Health: every service is SERVING.
type health struct {
	healthv1tether.UnimplementedHealthHandler
}

func (health) Check(_ context.Context, req *healthv1.HealthCheckRequest) (*healthv1.HealthCheckResponse, error) {
	if req.GetService() == "unknown" {
		return nil, tether.Errorf(tether.CodeNotFound, "unknown service")
	}
	return &healthv1.HealthCheckResponse{Status: healthv1.HealthCheckResponse_SERVING}, nil
}

func (health) Watch(_ context.Context, _ *healthv1.HealthCheckRequest, stream *server.ServerStream[healthv1.HealthCheckResponse]) error {
	return stream.Send(&healthv1.HealthCheckResponse{Status: healthv1.HealthCheckResponse_SERVING})
}

// TestGRPCHealth serves grpc's health service with tether.
func TestGRPCHealth(t *testing.T) {
	c := serve(t, func(s *server.Server) { healthv1tether.RegisterHealthHandler(s, health{}) })
	ctx := callContext(t)
	h := healthv1tether.NewHealthClient(c)

	res, err := h.Check(ctx, &healthv1.HealthCheckRequest{Service: "routeguide.v1.RouteGuide"})
	if err != nil || res.GetStatus() != healthv1.HealthCheckResponse_SERVING {
		t.Errorf("Check = %v, %v", res, err)
	}
	if _, err := h.Check(ctx, &healthv1.HealthCheckRequest{Service: "unknown"}); tether.CodeOf(err) != tether.CodeNotFound {
		t.Errorf("Check(unknown) = %v, want not_found", err)
	}
	if _, err := h.List(ctx, &healthv1.HealthListRequest{}); tether.CodeOf(err) != tether.CodeUnimplemented {
		t.Errorf("List = %v, want unimplemented", err)
	}
	w, err := h.Watch(ctx, &healthv1.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := w.Receive(); err != nil || res.GetStatus() != healthv1.HealthCheckResponse_SERVING {
		t.Errorf("Watch = %v, %v", res, err)
	}
	if _, err := w.Receive(); !errors.Is(err, io.EOF) {
		t.Errorf("Watch end = %v, want io.EOF", err)
	}
}

// ping serves connect-go's connect.ping.v1.PingService.
type ping struct {
	pingv1tether.UnimplementedPingServiceHandler
}

func (ping) Ping(_ context.Context, req *pingv1.PingRequest) (*pingv1.PingResponse, error) {
	return &pingv1.PingResponse{Number: req.GetNumber(), Text: req.GetText()}, nil
}

func (ping) Sum(_ context.Context, stream *server.ClientStream[pingv1.SumRequest]) (*pingv1.SumResponse, error) {
	var sum int64
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return &pingv1.SumResponse{Sum: sum}, nil
		}
		if err != nil {
			return nil, err
		}
		sum += req.GetNumber()
	}
}

func (ping) CountUp(_ context.Context, req *pingv1.CountUpRequest, stream *server.ServerStream[pingv1.CountUpResponse]) error {
	for i := int64(1); i <= req.GetNumber(); i++ {
		if err := stream.Send(&pingv1.CountUpResponse{Number: i}); err != nil {
			return err
		}
	}
	return nil
}

func (ping) CumSum(_ context.Context, stream *server.BidiStream[pingv1.CumSumRequest, pingv1.CumSumResponse]) error {
	var sum int64
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		sum += req.GetNumber()
		if err := stream.Send(&pingv1.CumSumResponse{Sum: sum}); err != nil {
			return err
		}
	}
}

// TestConnectPing serves connect-go's test service with tether and makes a
// call of each kind.
func TestConnectPing(t *testing.T) {
	c := serve(t, func(s *server.Server) { pingv1tether.RegisterPingServiceHandler(s, ping{}) })
	ctx := callContext(t)
	p := pingv1tether.NewPingServiceClient(c)

	if res, err := p.Ping(ctx, &pingv1.PingRequest{Number: 42, Text: "hi"}); err != nil || res.GetNumber() != 42 || res.GetText() != "hi" {
		t.Errorf("Ping = %v, %v", res, err)
	}
	if _, err := p.Fail(ctx, &pingv1.FailRequest{}); tether.CodeOf(err) != tether.CodeUnimplemented {
		t.Errorf("Fail = %v, want unimplemented", err)
	}

	sum, err := p.Sum(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := int64(1); i <= 4; i++ {
		if err := sum.Send(&pingv1.SumRequest{Number: i}); err != nil {
			t.Fatal(err)
		}
	}
	if res, err := sum.CloseAndReceive(); err != nil || res.GetSum() != 10 {
		t.Errorf("Sum = %v, %v, want 10", res, err)
	}

	up, err := p.CountUp(ctx, &pingv1.CountUpRequest{Number: 3})
	if err != nil {
		t.Fatal(err)
	}
	for want := int64(1); want <= 3; want++ {
		if res, err := up.Receive(); err != nil || res.GetNumber() != want {
			t.Fatalf("CountUp = %v, %v, want %d", res, err, want)
		}
	}
	if _, err := up.Receive(); !errors.Is(err, io.EOF) {
		t.Errorf("CountUp end = %v, want io.EOF", err)
	}

	cum, err := p.CumSum(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []int64{1, 3, 6} {
		if err := cum.Send(&pingv1.CumSumRequest{Number: int64(i + 1)}); err != nil {
			t.Fatal(err)
		}
		if res, err := cum.Receive(); err != nil || res.GetSum() != want {
			t.Fatalf("CumSum = %v, %v, want %d", res, err, want)
		}
	}
	if err := cum.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := cum.Receive(); !errors.Is(err, io.EOF) {
		t.Errorf("CumSum end = %v, want io.EOF", err)
	}
}
