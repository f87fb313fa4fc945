package tethernats_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	tethernats "github.com/tetherrpc/tether/contrib/nats"
	"github.com/tetherrpc/tether/contrib/nats/natsembed"
	"github.com/tetherrpc/tether/server/idempotency"
	"github.com/tetherrpc/tether/server/idempotency/idemtest"
)

func TestIdempotencyStoreContract(t *testing.T) {
	_, js := connect(t, startNode(t))
	idemtest.TestStore(t, func(t *testing.T, cfg idemtest.Config) idempotency.Store {
		s, err := tethernats.NewIdempotencyStore(bg, js, tethernats.WithBucket(bucketName()), tethernats.WithMaxKeys(cfg.MaxKeys), tethernats.WithMemoryStorage())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// The contract holds on a 3-node cluster (buckets with 3 replicas) while
// one node, the stream leader of a bucket in use, is shut down during the
// run.
func TestIdempotencyStoreContractCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster")
	}
	c, err := natsembed.StartCluster(3, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	_, js := connect(t, c.URLs(), nats.DontRandomize())
	// Buckets need their 3 peers to be created: create them all before
	// the node goes down.
	const subtests = 10
	var stores []*tethernats.IdempotencyStore
	var names []string
	for range subtests {
		name := bucketName()
		s, err := tethernats.NewIdempotencyStore(bg, js, tethernats.WithBucket(name), tethernats.WithReplicas(3), tethernats.WithTimeout(30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		stores, names = append(stores, s), append(names, name)
	}
	n := 0
	killed := ""
	idemtest.TestStore(t, func(t *testing.T, cfg idemtest.Config) idempotency.Store {
		if cfg.MaxKeys > 0 {
			return nil // bounded buckets are tested on one node
		}
		s := stores[n]
		if n == 2 {
			// Shut down the stream leader of this subtest's bucket: its
			// operations run while the others elect a new leader.
			info, err := js.Stream(bg, "KV_"+names[n])
			if err != nil {
				t.Fatal(err)
			}
			killed = info.CachedInfo().Cluster.Leader
			node := c.Node(killed)
			node.Shutdown()
			node.WaitForShutdown()
			t.Logf("shut down %s, the leader of %s", killed, names[n])
		}
		n++
		return s
	})
	if killed == "" {
		t.Fatal("no node was shut down")
	}
}

// Opening a bucket that exists changes nothing: an update would turn its
// direct gets on for a moment, and a store opened by another replica in
// that moment would read through direct gets that nobody answers.
func TestOpenExistingBucketDoesNotUpdateIt(t *testing.T) {
	nc, js := connect(t, startNode(t))
	bucket := bucketName()
	if _, err := tethernats.NewIdempotencyStore(bg, js, tethernats.WithBucket(bucket)); err != nil {
		t.Fatal(err)
	}
	if _, err := tethernats.NewDLQ(bg, js, tethernats.WithDLQBucket(bucket+"_dlq")); err != nil {
		t.Fatal(err)
	}
	updates, err := nc.SubscribeSync("$JS.EVENT.ADVISORY.STREAM.UPDATED.>")
	if err != nil {
		t.Fatal(err)
	}
	defer updates.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := tethernats.NewIdempotencyStore(bg, js, tethernats.WithBucket(bucket)); err != nil {
			t.Fatal(err)
		}
		if _, err := tethernats.NewDLQ(bg, js, tethernats.WithDLQBucket(bucket+"_dlq")); err != nil {
			t.Fatal(err)
		}
	}
	// A marker stream updated last: its advisory arrives after any the
	// opens caused.
	if _, err := js.CreateOrUpdateKeyValue(bg, jetstream.KeyValueConfig{Bucket: bucket + "_marker"}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateOrUpdateKeyValue(bg, jetstream.KeyValueConfig{Bucket: bucket + "_marker", Description: "updated"}); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := updates.NextMsg(30 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(m.Subject, "KV_"+bucket+"_marker") {
			return
		}
		t.Fatalf("opening an existing bucket updated its stream: %s", m.Subject)
	}
}
