package natsembed

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// As soon as StartCluster returns, the meta leader knows every node and
// a bucket with a replica on each can be placed. Before StartCluster
// waited for the leader to hear from every node, a loaded machine saw
// "no suitable peers for placement, peer offline" here (3 runs in 20 with
// four busy loops beside the test); an idle one rarely does, so this test
// guards the wait more than it reproduces the failure.
func TestStartClusterPlacesOnEveryNode(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster")
	}
	c, err := StartCluster(3, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	l := c.leader()
	if l == nil {
		t.Fatal("no meta leader right after StartCluster")
	}
	if got := l.JetStreamClusterPeers(); len(got) != 3 {
		t.Fatalf("the meta leader sees %v, want 3 nodes", got)
	}
	nc, err := nats.Connect(c.URLs())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "r3", Replicas: 3, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
}
