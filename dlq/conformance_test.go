package dlq_test

import (
	"testing"

	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/dlq/dlqtest"
)

// The Store conformance suite on the memory store.
func TestMemoryStoreConformance(t *testing.T) {
	dlqtest.TestStore(t, func(t *testing.T) dlq.Store {
		s := dlq.NewMemoryStore()
		t.Cleanup(func() { s.Close() })
		return s
	})
}
