package idembolt_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/server/idempotency"
	"github.com/tetherrpc/tether/server/idempotency/idembolt"
	"github.com/tetherrpc/tether/server/idempotency/idemtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t *testing.T, path string, opts ...idembolt.Option) *idembolt.Store {
	t.Helper()
	s, err := idembolt.Open(path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestContract(t *testing.T) {
	idemtest.TestStore(t, func(t *testing.T, cfg idemtest.Config) idempotency.Store {
		return open(t, filepath.Join(t.TempDir(), "idem.db"), idembolt.WithMaxKeys(cfg.MaxKeys))
	})
}

// Results and claims survive a restart (a reopen of the file).
func TestSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "idem.db")
	s, err := idembolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	done := idempotency.Key{Principal: "p", Procedure: "/s/M", Key: "done"}
	running := idempotency.Key{Principal: "p", Procedure: "/s/M", Key: "running"}
	if r, err := s.Claim(ctx, done, "a", time.Minute); err != nil || r.State != idempotency.StateClaimed {
		t.Fatal(r, err)
	}
	if err := s.Complete(ctx, done, "a", []byte("result"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, running, "crashed", time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, path)
	if s.Len() != 2 {
		t.Fatalf("Len after reopen = %d", s.Len())
	}
	if r, err := s.Claim(ctx, done, "b", time.Minute); err != nil || r.State != idempotency.StateDone || string(r.Result) != "result" {
		t.Fatalf("after reopen: %+v %v", r, err)
	}
	if r, err := s.Claim(ctx, running, "b", time.Minute); err != nil || r.State != idempotency.StateRunning || r.Owner != "crashed" {
		t.Fatalf("the crashed claim after reopen: %+v %v", r, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := s.Claim(ctx, running, "b", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if r.State == idempotency.StateClaimed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the crashed claim never expired")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "idem.db")
	open(t, path)
	if _, err := idembolt.Open(path); !errors.Is(err, idembolt.ErrLocked) {
		t.Fatalf("second Open: %v", err)
	}
}
