package tethernats_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/contrib/nats/natsembed"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startNode runs one embedded node for the test.
func startNode(t testing.TB) string {
	t.Helper()
	_, url := startNodeServer(t)
	return url
}

func startNodeServer(t testing.TB) (*server.Server, string) {
	t.Helper()
	s, err := natsembed.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s, s.ClientURL()
}

// connect returns a JetStream context on urls, closed with the test.
func connect(t testing.TB, urls string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

var buckets atomic.Int64

func bucketName() string { return fmt.Sprintf("idem_%d", buckets.Add(1)) }

var bg = context.Background()
