package chaos

import (
	"path/filepath"
	"testing"
)

// TestEffectLogIncarnations: every line carries the incarnation whose
// handler wrote it, even a handler of a stopped server that finishes after
// a newer one started (marked late); runs of one key in two incarnations
// are not concurrent (two caches), in one they are.
func TestEffectLogIncarnations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "effects.log")
	l, err := OpenEffectLog(path)
	if err != nil {
		t.Fatal(err)
	}
	l.Started(1)
	endOld := l.Begin(1, MethodCredit, "k", "p0") // the old server's handler, still running
	l.Started(2)
	endNew := l.Begin(2, MethodCredit, "k", "p0") // the new server's, for a repeat
	if applied, _, err := l.Apply(2, MethodCredit, "k", "p0", "acct", 5); err != nil || !applied {
		t.Fatalf("Apply = %v, %v", applied, err)
	}
	if applied, _, err := l.Apply(1, MethodCredit, "k", "p0", "acct", 5); err != nil || applied {
		t.Fatalf("late Apply = %v, %v; want a rerun", applied, err)
	}
	endOld()
	endNew()
	l.Stopped(2) // its handlers' lines are late from now on
	endLate := l.Begin(2, MethodCredit, "m", "p0")
	endLateB := l.Begin(2, MethodCredit, "m", "p0")
	endLate()
	endLateB()
	l.Started(3)
	endA := l.Begin(3, MethodCredit, "j", "p0")
	endB := l.Begin(3, MethodCredit, "j", "p0")
	endA()
	endB()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := ReadEffects(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []Effect{
		{Kind: EffectApply, Method: MethodCredit, Key: "k", Principal: "p0", Epoch: 2, Amount: 5},
		{Kind: EffectRerun, Method: MethodCredit, Key: "k", Principal: "p0", Epoch: 1, Amount: 5, Late: true},
		{Kind: EffectConcurrent, Method: MethodCredit, Key: "m", Principal: "p0", Epoch: 2, Late: true},
		{Kind: EffectConcurrent, Method: MethodCredit, Key: "j", Principal: "p0", Epoch: 3},
	}
	if len(got) != len(want) {
		t.Fatalf("log: %+v\nwant %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("line %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	// The checker does not take the late rerun for a cache that let a
	// repeat through: another incarnation, another cache.
	if v := Check(CheckConfig{NoEviction: true}, []Op{{Method: MethodCredit, Key: "k", Client: "c0", Result: ResultOK}}, nil, got[:2]); len(v) != 0 {
		t.Fatalf("violations: %v", v)
	}
}
