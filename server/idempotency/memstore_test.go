package idempotency_test

import (
	"testing"

	"github.com/tetherrpc/tether/server/idempotency"
	"github.com/tetherrpc/tether/server/idempotency/idemtest"
)

func TestMemoryStoreContract(t *testing.T) {
	t.Parallel()
	idemtest.TestStore(t, func(t *testing.T, cfg idemtest.Config) idempotency.Store {
		return idempotency.NewMemoryStore(cfg.MaxKeys)
	})
}
