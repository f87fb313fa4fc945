package tethernats_test

import (
	"testing"

	tethernats "github.com/tetherrpc/tether/contrib/nats"
	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/dlq/dlqtest"
)

func TestDLQContract(t *testing.T) {
	_, js := connect(t, startNode(t))
	dlqtest.TestStore(t, func(t *testing.T) dlq.Store {
		s, err := tethernats.NewDLQ(bg, js, tethernats.WithDLQBucket(bucketName()), tethernats.WithDLQMemoryStorage())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// Entries outlive the client that wrote them: another connection (a new
// container) reads them from the bucket on disk.
func TestDLQSurvivesTheClient(t *testing.T) {
	url := startNode(t)
	name := bucketName()
	nc, js := connect(t, url)
	s, err := tethernats.NewDLQ(bg, js, tethernats.WithDLQBucket(name))
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.Put(bg, &dlq.Entry{Procedure: "/a.B/C", IdempotencyKey: "k", Request: []byte("req")})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	nc.Close()

	_, js = connect(t, url)
	s, err = tethernats.NewDLQ(bg, js, tethernats.WithDLQBucket(name))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e, err := s.Get(bg, id)
	if err != nil || e.IdempotencyKey != "k" || string(e.Request) != "req" {
		t.Fatalf("after a new connection: %+v, %v", e, err)
	}
}
