package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tetherrpc/tether"
	tethernats "github.com/tetherrpc/tether/contrib/nats"
	chaosv1 "github.com/tetherrpc/tether/gen/tether/testing/chaos/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/health"
	"github.com/tetherrpc/tether/server/idempotency"
)

// Environment of a replica process (set by Run when it starts one).
const (
	envReplica = "TETHER_FLEET_REPLICA" // the replica's name
	envNATS    = "TETHER_FLEET_NATS"    // NATS URLs, comma-separated
	envAddr    = "TETHER_FLEET_ADDR"    // host:port to serve on
	envLife    = "TETHER_FLEET_LIFE"    // which start of the replica this is (1, 2, ...)
	envLease   = "TETHER_FLEET_LEASE"   // the idempotency lease (a duration)
	// envMemoryDedup, set to anything, gives each replica the in-memory
	// cache instead of the shared store: a run then reports repeats run
	// again (StrayReruns), which shows that the check works.
	envMemoryDedup = "TETHER_FLEET_MEMORY_DEDUP"
)

// Buckets shared by the fleet.
const (
	idemBucket    = "fleet_idempotency"
	effectsBucket = "fleet_effects"
	dlqBucket     = "fleet_dlq"
)

// Tuning of the replicas: a short lease by default (Config.Lease) so that
// the claim of a killed replica expires soon, and a short shutdown grace so
// that a drain does not wait a minute for held streams.
const (
	defaultLease  = 2 * time.Second
	shutdownGrace = 3 * time.Second
	tick          = 250 * time.Millisecond
)

// MaybeReplica runs a replica and exits if this process was started as one
// by Run (a re-exec of the test binary or of the demo); otherwise it returns
// at once. Call it first in TestMain or main.
func MaybeReplica() {
	name := os.Getenv(envReplica)
	if name == "" {
		return
	}
	lease, err := time.ParseDuration(os.Getenv(envLease))
	if err != nil {
		lease = defaultLease
	}
	if err := runReplica(name+"/"+os.Getenv(envLife), os.Getenv(envNATS), os.Getenv(envAddr), lease); err != nil {
		fmt.Fprintf(os.Stderr, "replica %s: %v\n", name, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runReplica serves the ledger on addr until SIGTERM, then drains.
func runReplica(name, urls, addr string, lease time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	store, err := tethernats.NewIdempotencyStore(ctx, js, tethernats.WithBucket(idemBucket), tethernats.WithReplicas(3))
	if err != nil {
		return err
	}
	// Ready only once the store answers (a replica that cannot reach it
	// would run calls without deduplication, logging each).
	if err := warmUp(ctx, store, name, lease); err != nil {
		return err
	}
	effects, err := js.KeyValue(ctx, effectsBucket)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("replica", name)
	idemOpts := []idempotency.Option{idempotency.WithStore(store), idempotency.WithLease(lease), idempotency.WithLogger(logger)}
	if os.Getenv(envMemoryDedup) != "" {
		// The checker's own check: each replica remembers alone, and
		// repeats that land elsewhere run again.
		idemOpts = nil
	}
	srv := server.New(
		server.WithLogger(logger),
		server.WithInterceptors(idempotency.New(idemOpts...)),
		// Behind a proxy every connection comes from the proxy's address.
		server.WithMaxConnectionsPerIP(0),
	)
	chaosv1.RegisterChaosLedgerServiceHandler(srv, &Ledger{Replica: name, Effects: effects})
	h := health.Register(srv)
	mux := http.NewServeMux()
	mux.Handle("/rpc", srv)
	mux.Handle("/readyz", h.ReadinessHandler(""))
	mux.HandleFunc("/stats", func(w http.ResponseWriter, _ *http.Request) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		_ = json.NewEncoder(w).Encode(replicaStats{Stats: srv.Stats(), HeapInuse: ms.HeapInuse, Goroutines: runtime.NumGoroutine()})
	})
	err = srv.ListenAndServe(ctx, addr, server.WithHTTPHandler(mux), server.WithShutdownGrace(shutdownGrace))
	if errors.Is(err, context.DeadlineExceeded) {
		return nil // held streams were ended after the grace: expected
	}
	return err
}

// warmUp claims and completes a key of the replica's own until the store
// answers both, for up to a minute.
func warmUp(ctx context.Context, store idempotency.Store, name string, lease time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	k := idempotency.Key{Procedure: "fleet.warmup", Key: fmt.Sprintf("%s-%d", name, time.Now().UnixNano())}
	for {
		_, err := store.Claim(ctx, k, "warmup", lease)
		if err == nil {
			err = store.Complete(ctx, k, "warmup", nil, time.Minute)
		}
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("idempotency store: %w", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// replicaStats is what a replica's /stats endpoint answers.
type replicaStats struct {
	server.Stats
	HeapInuse  uint64
	Goroutines int
}

// Effect is one applied effect in the shared effects bucket, stored under
// its key in the same step as the effect (an atomic create): the bucket is
// the fleet's database, and a key is applied at most once whatever the
// idempotency store lets through.
type Effect struct {
	Method string `json:"method"`
	// Replica is the replica that applied it and which life of it
	// ("r2/1" before its first restart).
	Replica string `json:"replica"`
	Amount  int64  `json:"amount"`
}

// Ledger implements the chaos ledger service over the shared effects
// bucket: Credit (side effects, keyed by the call's idempotency key), Put
// (IDEMPOTENT, keyed by the entry id) and Watch (a server stream that ticks
// until the client leaves). Runs that find their key already applied are
// written under "rerun.<effect key>.<time>", so that the checker sees every
// repeat the idempotency store let through to the handler.
type Ledger struct {
	chaosv1.UnimplementedChaosLedgerServiceHandler
	Replica string
	Effects jetstream.KeyValue
}

// apply stores the effect under key; it reports whether it was new.
func (l *Ledger) apply(ctx context.Context, method, key string, amount int64) (bool, error) {
	if key == "" {
		return false, tether.Errorf(tether.CodeInvalidArgument, "fleet: %s without a key", method)
	}
	b, _ := json.Marshal(Effect{Method: method, Replica: l.Replica, Amount: amount})
	_, err := l.Effects.Create(ctx, effectKey(method, key), b)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyExists):
		_, _ = l.Effects.Put(ctx, fmt.Sprintf("rerun.%s.%d", effectKey(method, key), time.Now().UnixNano()), nil)
		return false, nil
	default:
		return false, tether.Errorf(tether.CodeUnavailable, "fleet: effects: %v", err)
	}
}

// effectKey is the bucket key of an effect (keys are ASCII tokens).
func effectKey(method, key string) string { return "effect." + method + "." + key }

// Credit adds the amount once per idempotency key. A request whose fault
// asks for a sleep sleeps after the effect, before its answer: a replica
// killed then has applied the effect but not stored the result, the
// hardest case for exactly-once.
func (l *Ledger) Credit(ctx context.Context, req *chaosv1.CreditRequest) (*chaosv1.CreditResponse, error) {
	ci, _ := server.CallInfoFromContext(ctx)
	key := ci.RequestHeader().Get(tether.MetadataIdempotencyKey)
	if _, err := l.apply(ctx, "credit", key, req.GetAmount()); err != nil {
		return nil, err
	}
	if d := req.GetFault().GetSleepMillis(); d > 0 {
		t := time.NewTimer(time.Duration(d) * time.Millisecond)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	return &chaosv1.CreditResponse{Balance: req.GetAmount()}, nil
}

// Put stores the entry once per id.
func (l *Ledger) Put(ctx context.Context, req *chaosv1.PutRequest) (*chaosv1.PutResponse, error) {
	created, err := l.apply(ctx, "put", req.GetId(), req.GetAmount())
	if err != nil {
		return nil, err
	}
	return &chaosv1.PutResponse{Created: created}, nil
}

// Watch sends a tick every 250 ms, count times, or until the call ends: a
// long-lived stream for the clients to hold.
func (l *Ledger) Watch(ctx context.Context, req *chaosv1.WatchRequest, stream *server.ServerStream[chaosv1.WatchResponse]) error {
	t := time.NewTicker(tick)
	defer t.Stop()
	for i := range req.GetCount() {
		if err := stream.Send(&chaosv1.WatchResponse{Seq: i, Payload: []byte(l.Replica)}); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
