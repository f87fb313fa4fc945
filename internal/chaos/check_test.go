package chaos

import (
	"strings"
	"testing"
)

// TestCheck runs the history checker on small hand-made histories, one
// claim each: it must report exactly the broken ones.
func TestCheck(t *testing.T) {
	apply := func(m, k string, epoch int) Effect {
		return Effect{Kind: EffectApply, Method: m, Key: k, Principal: "p0", Epoch: epoch}
	}
	ok := func(m, k string) Op { return Op{Client: "p0", Method: m, Key: k, Result: ResultOK} }
	fail := func(m, k string) Op {
		return Op{Client: "p0", Method: m, Key: k, Result: ResultFail, Code: "unavailable"}
	}
	cases := []struct {
		name    string
		cfg     CheckConfig
		ops     []Op
		replays []Replayed
		effects []Effect
		want    string // a substring of the one violation, "" for none
	}{
		{name: "ok once", ops: []Op{ok(MethodCredit, "a")}, effects: []Effect{apply(MethodCredit, "a", 1)}},
		{name: "ok twice", ops: []Op{ok(MethodCredit, "a")}, effects: []Effect{apply(MethodCredit, "a", 1), apply(MethodCredit, "a", 2)}, want: "applied 2 times"},
		{name: "ok never", ops: []Op{ok(MethodBatch, "a")}, want: "returned OK but was applied 0 times"},
		{name: "delivery failure not parked", ops: []Op{fail(MethodCredit, "a")}, want: "instead of being dead-lettered"},
		{name: "failed once", ops: []Op{fail(MethodPut, "a")}, effects: []Effect{apply(MethodPut, "a", 1)}},
		{name: "failed never", ops: []Op{fail(MethodPut, "a")}},
		{name: "canceled before complete, applied", ops: []Op{{Client: "p0", Method: MethodBatch, Key: "a", Result: ResultFail, NoEffect: true}},
			effects: []Effect{apply(MethodBatch, "a", 1)}, want: "canceled before the request was complete"},
		{name: "transfer sent after cancel", ops: []Op{{Client: "p0", Method: MethodTransfer, Key: "t", Result: ResultFail, Sent: []uint32{0}, Acked: []uint32{0}, SentAfterCancel: []uint32{1}}},
			effects: []Effect{apply(MethodTransfer, "t/0", 1), apply(MethodTransfer, "t/1", 1)}, want: "t/1 applied 1 times though the caller canceled"},
		{name: "transfer acked not applied", ops: []Op{{Client: "p0", Method: MethodTransfer, Key: "t", Result: ResultOK, Sent: []uint32{0}, Acked: []uint32{0}}},
			want: "t/0 returned OK but was applied 0 times"},
		{name: "parked, replayed", ops: []Op{{Client: "p0", Method: MethodCredit, Key: "a", Result: ResultParked, DLQ: "1"}},
			replays: []Replayed{{Client: "p0", ID: "1", Key: "a", Method: MethodCredit, Result: ResultOK}}, effects: []Effect{apply(MethodCredit, "a", 1)}},
		{name: "parked, replayed, not applied", ops: []Op{{Client: "p0", Method: MethodCredit, Key: "a", Result: ResultParked, DLQ: "1"}},
			replays: []Replayed{{Client: "p0", ID: "1", Key: "a", Method: MethodCredit, Result: ResultOK}}, want: "returned OK but was applied 0 times"},
		{name: "parked, missing", ops: []Op{{Client: "p0", Method: MethodCredit, Key: "a", Result: ResultParked, DLQ: "1"}}, want: "not found in its dead-letter queue"},
		{name: "replay timed out", ops: []Op{{Client: "p0", Method: MethodCredit, Key: "a", Result: ResultParked, DLQ: "1"}},
			replays: []Replayed{{Client: "p0", ID: "1", Key: "a", Method: MethodCredit, Result: ResultFail, Code: "deadline_exceeded"}}, want: "against a healthy server ended with deadline_exceeded"},
		{name: "replay reparked", ops: []Op{{Client: "p0", Method: MethodCredit, Key: "a", Result: ResultParked, DLQ: "1"}},
			replays: []Replayed{{Client: "p0", ID: "1", Key: "a", Method: MethodCredit, Result: ResultFail, Code: "internal"}, {Client: "p0", ID: "2", Key: "a", Method: MethodCredit, Result: ResultReparked}},
			want:    "parked a new dead letter"},
		{name: "replays out of budget", ops: []Op{{Client: "p0", Method: MethodCredit, Key: "a", Result: ResultParked, DLQ: "1"}, {Client: "p0", Method: MethodCredit, Key: "b", Result: ResultParked, DLQ: "2"}},
			replays: []Replayed{{Client: "p0", ID: "1", Key: "a", Method: MethodCredit, Result: ResultSkipped}, {Client: "p0", ID: "2", Key: "b", Method: MethodCredit, Result: ResultSkipped}},
			want:    "2 dead letters of p0 were not replayed"},
		{name: "replayed get", ops: []Op{{Client: "p0", Method: "get", Result: ResultParked, DLQ: "1"}},
			replays: []Replayed{{Client: "p0", ID: "1", Method: "get", Result: ResultOK}}},
		{name: "effect without a call", effects: []Effect{apply(MethodCredit, "x", 1)}, want: "without any call"},
		{name: "concurrent runs", ops: []Op{ok(MethodCredit, "a")}, effects: []Effect{apply(MethodCredit, "a", 1), {Kind: EffectConcurrent, Method: MethodCredit, Key: "a", Epoch: 1}},
			want: "while the first was still running"},
		{name: "rerun in one process", cfg: CheckConfig{NoEviction: true}, ops: []Op{ok(MethodCredit, "a")},
			effects: []Effect{apply(MethodCredit, "a", 1), {Kind: EffectRerun, Method: MethodCredit, Key: "a", Principal: "p0", Epoch: 1}}, want: "ran again in the server process"},
		{name: "rerun after a restart", cfg: CheckConfig{NoEviction: true}, ops: []Op{ok(MethodCredit, "a")},
			effects: []Effect{apply(MethodCredit, "a", 1), {Kind: EffectRerun, Method: MethodCredit, Key: "a", Principal: "p0", Epoch: 2}}},
		{name: "two reruns in one process after an apply in another", cfg: CheckConfig{NoEviction: true}, ops: []Op{ok(MethodCredit, "a")},
			effects: []Effect{apply(MethodCredit, "a", 1), {Kind: EffectRerun, Method: MethodCredit, Key: "a", Principal: "p0", Epoch: 2}, {Kind: EffectRerun, Method: MethodCredit, Key: "a", Principal: "p0", Epoch: 2}},
			want:    "ran again in the server process"},
		{name: "a late apply of a stopped process, then a rerun in the next", cfg: CheckConfig{NoEviction: true}, ops: []Op{ok(MethodCredit, "a")},
			effects: []Effect{{Kind: EffectApply, Method: MethodCredit, Key: "a", Principal: "p0", Epoch: 1, Late: true}, {Kind: EffectRerun, Method: MethodCredit, Key: "a", Principal: "p0", Epoch: 2}}},
		{name: "rerun with eviction", ops: []Op{ok(MethodCredit, "a")},
			effects: []Effect{apply(MethodCredit, "a", 1), {Kind: EffectRerun, Method: MethodCredit, Key: "a", Principal: "p0", Epoch: 1}}},
		{name: "batch delivered twice by a client that retries streams", cfg: CheckConfig{StreamRetries: map[string]bool{"p0": true}}, ops: []Op{ok(MethodBatch, "b")},
			effects: []Effect{apply(MethodBatch, "b", 1), {Kind: EffectRerun, Method: MethodBatch, Key: "b", Principal: "p0", Epoch: 1}}},
		{name: "batch delivered twice", ops: []Op{ok(MethodBatch, "b")},
			effects: []Effect{apply(MethodBatch, "b", 1), {Kind: EffectRerun, Method: MethodBatch, Key: "b", Epoch: 1}}, want: "delivered to the handler twice"},
	}
	for _, c := range cases {
		v := Check(c.cfg, c.ops, c.replays, c.effects)
		switch {
		case c.want == "" && len(v) > 0:
			t.Errorf("%s: unexpected violations %q", c.name, v)
		case c.want != "" && (len(v) != 1 || !strings.Contains(v[0], c.want)):
			t.Errorf("%s: violations %q, want one containing %q", c.name, v, c.want)
		}
	}
}
