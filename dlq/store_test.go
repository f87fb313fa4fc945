package dlq

import (
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// stores lists the Store implementations that the replay tests run
// against. The bbolt store lives in dlqbolt (which imports this package), and
// runs the same conformance suite, dlqtest.TestStore, in its own tests.
var stores = []struct {
	name string
	open func(t *testing.T) Store
}{
	{"memory", func(t *testing.T) Store {
		s := NewMemoryStore()
		t.Cleanup(func() { s.Close() })
		return s
	}},
}

func forEachStore(t *testing.T, f func(t *testing.T, s Store)) {
	t.Helper()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) { f(t, st.open(t)) })
	}
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)

func sampleEntry(proc string) *Entry {
	return &Entry{
		Procedure:      proc,
		Request:        []byte{0x0a, 0x02, 'h', 'i', 0x00, 0xff},
		Metadata:       map[string][]string{"x-user": {"ada"}, "x-multi": {"a", "b"}},
		IdempotencyKey: "idem-" + proc,
		Attempts:       5,
		LastCode:       14,
		LastError:      "unavailable: connection refused",
		FirstAttempt:   t0,
		DeadLettered:   t0.Add(3 * time.Second),
	}
}

// sameEntry fails the test unless got and want are equal, comparing times
// with Equal.
func sameEntry(t *testing.T, got, want *Entry) {
	t.Helper()
	g, w := got.Clone(), want.Clone()
	for _, p := range []struct{ g, w *time.Time }{
		{&g.FirstAttempt, &w.FirstAttempt}, {&g.DeadLettered, &w.DeadLettered}, {&g.LastReplay, &w.LastReplay},
	} {
		if !p.g.Equal(*p.w) {
			t.Errorf("time: got %v, want %v", *p.g, *p.w)
		}
		*p.g, *p.w = time.Time{}, time.Time{}
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("entry:\n got %+v\nwant %+v", g, w)
	}
}

func ids(es []*Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}
