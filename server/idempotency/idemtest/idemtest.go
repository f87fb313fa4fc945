// Package idemtest checks that an idempotency.Store implementation keeps
// the Store contract: exactly one of concurrent claimers of a key wins it,
// only the owner renews, completes or releases a claim, a completed result
// is returned to repeats, a lease that expires lets exactly one repeat
// claim the key, results are forgotten after their TTL, and a full store
// refuses a new key with ErrFull. The stores of tether run it, and so can
// any other:
//
//	func TestMyStore(t *testing.T) {
//		idemtest.TestStore(t, func(t *testing.T, cfg idemtest.Config) idempotency.Store {
//			return openMyStore(t, cfg.MaxKeys)
//		})
//	}
//
// The suite uses real time: leases and TTLs of about a second, and waits
// (up to a generous bound) for them to pass.
package idemtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether/server/idempotency"
)

// Config is what a subtest asks of the store it opens.
type Config struct {
	// MaxKeys, when positive, is the number of keys the store must hold
	// before it refuses a new one with ErrFull. Zero: any bound of the
	// store's own, as long as it holds a few hundred keys.
	MaxKeys int
}

// Opener opens a new, empty store for one subtest; it may register
// cleanups with t. A store that cannot bound its keys returns nil when
// cfg.MaxKeys is positive, and the subtest that needs it is skipped.
type Opener func(t *testing.T, cfg Config) idempotency.Store

// Short durations the suite uses; Wait bounds how long it waits for one to
// pass.
const (
	Short = time.Second
	Long  = 5 * time.Minute
	Wait  = 30 * time.Second
)

// TestStore runs the contract tests, each as a subtest on a new store.
func TestStore(t *testing.T, open Opener) {
	for _, tc := range []struct {
		name string
		cfg  Config
		test func(t *testing.T, s idempotency.Store)
	}{
		{"ExclusiveClaim", Config{}, testExclusiveClaim},
		{"CompleteAndRead", Config{}, testCompleteAndRead},
		{"OnlyTheOwner", Config{}, testOnlyTheOwner},
		{"ReleaseLetsARepeatRun", Config{}, testRelease},
		{"KeysAreScoped", Config{}, testScoped},
		{"LeaseRenewal", Config{}, testRenewal},
		{"LeaseExpiryOneRepeatRuns", Config{}, testLeaseExpiry},
		{"TTL", Config{}, testTTL},
		{"ManyKeysConcurrently", Config{}, testManyKeys},
		{"FullRefusesNewKeys", Config{MaxKeys: 4}, testFull},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, tc.cfg)
			if s == nil {
				t.Skip("the store cannot bound its keys")
			}
			tc.test(t, s)
		})
	}
}

var ctx = context.Background()

// key returns a key whose parts hold characters that some stores cannot
// put in their own keys as they are.
func key(name string) idempotency.Key {
	return idempotency.Key{Principal: `s:ada/"x" *.>`, Procedure: "/pkg.v1.Svc/Method", Key: name + " ü/.*>" + strings.Repeat("k", 300)}
}

func claim(t *testing.T, s idempotency.Store, k idempotency.Key, owner string, lease time.Duration) idempotency.Record {
	t.Helper()
	r, err := s.Claim(ctx, k, owner, lease)
	if err != nil {
		t.Fatalf("Claim(%s): %v", owner, err)
	}
	return r
}

func get(t *testing.T, s idempotency.Store, k idempotency.Key) idempotency.Record {
	t.Helper()
	r, err := s.Get(ctx, k)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	return r
}

// eventually waits up to Wait for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", Wait, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// race has n owners claim k at once; it returns the winners and checks
// that every loser saw the winner's claim (or its result).
func race(t *testing.T, s idempotency.Store, k idempotency.Key, n int, lease time.Duration, prefix string) []string {
	t.Helper()
	var (
		mu      sync.Mutex
		winners []string
		others  []idempotency.Record
		wg      sync.WaitGroup
		start   = make(chan struct{})
	)
	for j := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("%s-%d", prefix, j)
			<-start
			r, err := s.Claim(ctx, k, owner, lease)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				t.Errorf("Claim(%s): %v", owner, err)
			case r.State == idempotency.StateClaimed:
				if r.Owner != owner {
					t.Errorf("Claim(%s) claimed for %q", owner, r.Owner)
				}
				winners = append(winners, owner)
			default:
				others = append(others, r)
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(winners) == 1 {
		for _, r := range others {
			if r.State != idempotency.StateRunning || r.Owner != winners[0] {
				t.Errorf("a loser saw %+v, want running by %s", r, winners[0])
			}
		}
	}
	return winners
}

func testExclusiveClaim(t *testing.T, s idempotency.Store) {
	for round := range 3 {
		k := key(fmt.Sprint("exclusive", round))
		if w := race(t, s, k, 12, Long, fmt.Sprint("r", round)); len(w) != 1 {
			t.Fatalf("round %d: %d owners claimed the key: %v", round, len(w), w)
		}
		if r := get(t, s, k); r.State != idempotency.StateRunning {
			t.Fatalf("Get after the claim: %+v", r)
		}
	}
}

func testCompleteAndRead(t *testing.T, s idempotency.Store) {
	k := key("complete")
	if r := get(t, s, k); r.State != idempotency.StateNone {
		t.Fatalf("Get of a new key: %+v", r)
	}
	claim(t, s, k, "a", Long)
	result := []byte{0, 1, 2, 0xff, 'r', 'e', 's'}
	if err := s.Complete(ctx, k, "a", result, Long); err != nil {
		t.Fatal(err)
	}
	for _, r := range []idempotency.Record{claim(t, s, k, "b", Long), get(t, s, k)} {
		if r.State != idempotency.StateDone || !bytes.Equal(r.Result, result) {
			t.Fatalf("after Complete: %+v", r)
		}
	}
	// An empty result is a result too.
	k2 := key("empty")
	claim(t, s, k2, "a", Long)
	if err := s.Complete(ctx, k2, "a", nil, Long); err != nil {
		t.Fatal(err)
	}
	if r := claim(t, s, k2, "b", Long); r.State != idempotency.StateDone || len(r.Result) != 0 {
		t.Fatalf("after Complete(nil): %+v", r)
	}
	// Completing twice fails: the claim is gone.
	if err := s.Complete(ctx, k, "a", []byte("other"), Long); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("second Complete: %v, want ErrNotOwner", err)
	}
	if r := get(t, s, k); !bytes.Equal(r.Result, result) {
		t.Fatalf("result changed: %+v", r)
	}
}

func testOnlyTheOwner(t *testing.T, s idempotency.Store) {
	k := key("owner")
	claim(t, s, k, "a", Long)
	if err := s.Renew(ctx, k, "b", Long); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("Renew by another: %v", err)
	}
	if err := s.Complete(ctx, k, "b", []byte("x"), Long); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("Complete by another: %v", err)
	}
	if err := s.Release(ctx, k, "b"); err != nil {
		t.Fatalf("Release by another: %v", err)
	}
	if r := get(t, s, k); r.State != idempotency.StateRunning || r.Owner != "a" {
		t.Fatalf("after others' attempts: %+v", r)
	}
	if err := s.Renew(ctx, k, "a", Long); err != nil {
		t.Fatal(err)
	}
	// Nobody owns a key the store does not hold.
	if err := s.Renew(ctx, key("nothing"), "a", Long); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("Renew of an absent key: %v", err)
	}
	if err := s.Complete(ctx, key("nothing"), "a", nil, Long); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("Complete of an absent key: %v", err)
	}
}

func testRelease(t *testing.T, s idempotency.Store) {
	k := key("release")
	claim(t, s, k, "a", Long)
	if err := s.Release(ctx, k, "a"); err != nil {
		t.Fatal(err)
	}
	if r := get(t, s, k); r.State != idempotency.StateNone {
		t.Fatalf("after Release: %+v", r)
	}
	if err := s.Complete(ctx, k, "a", nil, Long); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("Complete after Release: %v", err)
	}
	if w := race(t, s, k, 8, Long, "again"); len(w) != 1 {
		t.Fatalf("after Release, %d owners claimed the key", len(w))
	}
	if err := s.Release(ctx, key("never"), "a"); err != nil {
		t.Fatalf("Release of an absent key: %v", err)
	}
}

func testScoped(t *testing.T, s idempotency.Store) {
	base := key("scoped")
	variants := []idempotency.Key{base, base, base, base}
	variants[1].Principal += "2"
	variants[2].Procedure += "2"
	variants[3].Key += "2"
	// Keys whose concatenations collide are still distinct.
	variants = append(variants,
		idempotency.Key{Principal: "ab", Procedure: "c", Key: "d"},
		idempotency.Key{Principal: "a", Procedure: "bc", Key: "d"},
		idempotency.Key{Principal: "", Procedure: "abc", Key: "d"})
	for j, k := range variants {
		if r := claim(t, s, k, fmt.Sprint("o", j), Long); r.State != idempotency.StateClaimed {
			t.Fatalf("variant %d (%+v): %+v, want claimed", j, k, r)
		}
	}
	for j, k := range variants {
		if r := claim(t, s, k, "x", Long); r.State != idempotency.StateRunning || r.Owner != fmt.Sprint("o", j) {
			t.Fatalf("variant %d again: %+v", j, r)
		}
	}
}

func testRenewal(t *testing.T, s idempotency.Store) {
	k := key("renew")
	claim(t, s, k, "a", Short)
	end := time.Now().Add(3 * Short)
	for time.Now().Before(end) {
		if err := s.Renew(ctx, k, "a", Short); err != nil {
			t.Fatalf("Renew: %v", err)
		}
		if r := claim(t, s, k, "b", Short); r.State != idempotency.StateRunning || r.Owner != "a" {
			t.Fatalf("a renewed claim was taken: %+v", r)
		}
		time.Sleep(Short / 5)
	}
	if err := s.Complete(ctx, k, "a", []byte("ok"), Long); err != nil {
		t.Fatalf("Complete after renewals: %v", err)
	}
}

func testLeaseExpiry(t *testing.T, s idempotency.Store) {
	k := key("lease")
	claim(t, s, k, "dead", Short)
	if r := claim(t, s, k, "early", Short); r.State != idempotency.StateRunning {
		t.Fatalf("before the lease expired: %+v", r)
	}
	eventually(t, "the dead owner's lease to expire", func() bool { return get(t, s, k).State == idempotency.StateNone })
	w := race(t, s, k, 10, Long, "repeat")
	if len(w) != 1 {
		t.Fatalf("after the lease expired, %d repeats claimed the key: %v", len(w), w)
	}
	// The dead owner, back, cannot complete or renew.
	if err := s.Complete(ctx, k, "dead", []byte("late"), Long); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("Complete by the expired owner: %v", err)
	}
	if err := s.Renew(ctx, k, "dead", Long); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("Renew by the expired owner: %v", err)
	}
	if err := s.Complete(ctx, k, w[0], []byte("once"), Long); err != nil {
		t.Fatal(err)
	}
	if r := get(t, s, k); r.State != idempotency.StateDone || string(r.Result) != "once" {
		t.Fatalf("after the repeat completed: %+v", r)
	}
}

func testTTL(t *testing.T, s idempotency.Store) {
	k, kept := key("ttl"), key("kept")
	claim(t, s, k, "a", Long)
	claim(t, s, kept, "a", Long)
	if err := s.Complete(ctx, k, "a", []byte("short"), Short); err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx, kept, "a", []byte("long"), Long); err != nil {
		t.Fatal(err)
	}
	if r := claim(t, s, k, "b", Long); r.State != idempotency.StateDone {
		t.Fatalf("within the TTL: %+v", r)
	}
	eventually(t, "the result to expire", func() bool { return get(t, s, k).State == idempotency.StateNone })
	if r := claim(t, s, k, "c", Long); r.State != idempotency.StateClaimed {
		t.Fatalf("after the TTL: %+v", r)
	}
	if r := get(t, s, kept); r.State != idempotency.StateDone || string(r.Result) != "long" {
		t.Fatalf("a result with a long TTL: %+v", r)
	}
}

func testManyKeys(t *testing.T, s idempotency.Store) {
	const n = 100
	var wg sync.WaitGroup
	for j := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := key(fmt.Sprint("many", j))
			owner := fmt.Sprint("o", j)
			r, err := s.Claim(ctx, k, owner, Long)
			if err != nil || r.State != idempotency.StateClaimed {
				t.Errorf("key %d: %+v %v", j, r, err)
				return
			}
			if err := s.Complete(ctx, k, owner, []byte(fmt.Sprint(j)), Long); err != nil {
				t.Errorf("key %d: %v", j, err)
			}
		}()
	}
	wg.Wait()
	for j := range n {
		if r := get(t, s, key(fmt.Sprint("many", j))); r.State != idempotency.StateDone || string(r.Result) != fmt.Sprint(j) {
			t.Fatalf("key %d: %+v", j, r)
		}
	}
}

func testFull(t *testing.T, s idempotency.Store) {
	for j := range 4 {
		claim(t, s, key(fmt.Sprint("full", j)), "a", Long)
	}
	_, err := s.Claim(ctx, key("one more"), "a", Long)
	if !errors.Is(err, idempotency.ErrFull) {
		t.Fatalf("Claim of a new key in a full store: %v, want ErrFull", err)
	}
	// Keys held still answer.
	if r := claim(t, s, key("full0"), "b", Long); r.State != idempotency.StateRunning {
		t.Fatalf("a held key in a full store: %+v", r)
	}
	if err := s.Complete(ctx, key("full0"), "a", []byte("r"), Long); err != nil {
		t.Fatalf("Complete in a full store: %v", err)
	}
	if r := get(t, s, key("full0")); r.State != idempotency.StateDone {
		t.Fatalf("after Complete in a full store: %+v", r)
	}
}
