package fleet_test

import (
	"context"
	"flag"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/contrib/nats/fleet"
)

var full = flag.Bool("fleet.full", false, "run the full fleet test: 60 s of held streams, two rounds of restarts")

func TestMain(m *testing.M) {
	fleet.MaybeReplica() // a replica process re-executed by the test
	goleak.VerifyTestMain(m)
}

// TestFleet restarts the replicas of a fleet under load and checks the
// delivery promise (see the package doc). The short form (the default, in
// CI) restarts each replica once and kills one; -fleet.full restarts them
// twice over and holds the streams for at least 60 s.
func TestFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("the fleet test starts processes and a proxy")
	}
	// A 10 s lease: under the race detector on a shared machine the NATS
	// cluster (in this process) can stall for seconds, and a lease that
	// runs out lets a repeat run again (logged "lease lost"; the check
	// would count it).
	cfg := fleet.Config{Dir: t.TempDir(), Log: testWriter{t}, Steady: 5 * time.Second, Rounds: 1, Lease: 10 * time.Second}
	if *full {
		cfg.Steady, cfg.Rounds, cfg.MinDuration = 10*time.Second, 2, 60*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	rep, err := fleet.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", rep)
	if !rep.OK() {
		t.Fatal("the fleet broke the delivery promise (see the report)")
	}
	if rep.Restarts != 3*cfg.Rounds || rep.Kills != 1 {
		t.Fatalf("%d restarts and %d kills, want %d and 1", rep.Restarts, rep.Kills, 3*cfg.Rounds)
	}
	if rep.Ticks == 0 {
		t.Fatal("no stream message arrived")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}
