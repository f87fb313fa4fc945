package chaos

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Replayed is the outcome of replaying one dead letter.
type Replayed struct {
	Client string `json:"client"`
	ID     string `json:"id"`
	Key    string `json:"key"`
	Method string `json:"method"`
	Result string `json:"result"` // ok, fail, or reparked (a new entry the replays left in the queue)
	Code   string `json:"code,omitempty"`
	Err    string `json:"err,omitempty"`
}

// CheckConfig says which claims hold for a run.
type CheckConfig struct {
	// NoEviction is set when the idempotency cache is large enough that no
	// key is evicted during the run: then a handler must not run twice for
	// one key in one server process.
	NoEviction bool
	// StreamRetries names the principals whose clients retry client-stream
	// and bidi calls of methods with side effects after the wire (a
	// client-wide retry policy does that): their streams may reach the
	// handler twice, and only the effect counts are checked for them.
	StreamRetries map[string]bool
}

// Check checks the clients' histories, the replays of their dead letters
// and the server's effect log against the delivery promise, and returns
// the violations, one sentence each:
//
//   - no effect applied twice (per method and key);
//   - a call that returned OK, or whose dead letter was replayed with OK,
//     applied exactly once; a call that failed, at most once; a call the
//     caller canceled before its request was complete (or a request sent
//     after the cancel returned), never;
//   - a Credit (dead_letter: true) that fails with a delivery failure
//     (unavailable, deadline_exceeded, resource_exhausted, aborted) is
//     parked, not only returned, unless its caller canceled it (a cancel
//     during a failing attempt ends the call with that attempt's error);
//   - a parked call is in its client's queue and its replay, against a
//     healthy server, ends with an answer (not a timeout) and parks no new
//     copy;
//   - no effect without a call;
//   - the idempotency interceptor never lets two runs of one key overlap in
//     one server incarnation, and, with NoEviction, never lets a key run
//     twice in one incarnation (epoch) for one principal, whichever
//     incarnation applied it (each has its own cache).
func Check(cfg CheckConfig, ops []Op, replays []Replayed, effects []Effect) []string {
	var v []string
	type id struct{ method, key string }
	applied := map[id]int{}
	for _, e := range effects {
		if e.Kind == EffectApply {
			applied[id{e.Method, e.Key}]++
		}
	}
	for k, n := range applied {
		if n > 1 {
			v = append(v, fmt.Sprintf("%s %s applied %d times", k.method, k.key, n))
		}
	}

	type want struct {
		ok, noEffect, panicAfter bool
		ops                      []string
	}
	wants := map[id]*want{}
	get := func(k id) *want {
		w := wants[k]
		if w == nil {
			w = &want{}
			wants[k] = w
		}
		return w
	}
	parked := map[string]Op{} // client/dlq id -> op
	for _, op := range ops {
		if op.Method == MethodCredit && op.Client != "hostile" && op.Result == ResultFail && op.Fault != FaultCancel {
			switch op.Code {
			case "unavailable", "deadline_exceeded", "resource_exhausted", "aborted", "data_loss":
				// Credit's policy has dead_letter: a delivery failure the
				// caller did not cause by canceling is parked, never
				// only returned.
				v = append(v, fmt.Sprintf("credit %s failed with %s instead of being dead-lettered: %s (%s)", op.Key, op.Code, op, op.Err))
			}
		}
		switch op.Method {
		case MethodCredit, MethodPut, MethodBatch:
			w := get(id{op.Method, op.Key})
			w.ops = append(w.ops, op.String())
			if op.Result == ResultOK {
				w.ok = true
			}
			if op.NoEffect {
				w.noEffect = true
			}
			if op.Fault == FaultPanicAfter {
				w.panicAfter = true
			}
			if op.Result == ResultParked {
				parked[op.Client+"/"+op.DLQ] = op
			}
		case MethodTransfer:
			for _, s := range op.Sent {
				get(id{MethodTransfer, TransferKey(op.Key, s)}).ops = append(get(id{MethodTransfer, TransferKey(op.Key, s)}).ops, op.String())
			}
			for _, s := range op.Acked {
				get(id{MethodTransfer, TransferKey(op.Key, s)}).ok = true
			}
			for _, s := range op.SentAfterCancel {
				w := get(id{MethodTransfer, TransferKey(op.Key, s)})
				w.noEffect = true
				w.ops = append(w.ops, op.String()+fmt.Sprintf(" [seq %d sent after cancel]", s))
			}
		}
	}
	var hung []Replayed
	skipped := map[string]int{}
	for _, r := range replays {
		if r.Result == ResultSkipped {
			skipped[r.Client]++
			delete(parked, r.Client+"/"+r.ID)
			continue
		}
		if r.Result == ResultReparked {
			v = append(v, fmt.Sprintf("a replay parked a new dead letter %s/%s for %s %s", r.Client, r.ID, r.Method, r.Key))
			continue
		}
		delete(parked, r.Client+"/"+r.ID)
		if r.Result != ResultOK && (r.Code == "deadline_exceeded" || r.Code == "unavailable" || r.Code == "canceled") {
			hung = append(hung, r)
		}
		if r.Method != MethodCredit && r.Method != MethodPut && r.Method != MethodBatch {
			continue // a call without effects (Get, under a client-wide dead-letter policy)
		}
		w := get(id{r.Method, r.Key})
		w.ops = append(w.ops, fmt.Sprintf("replay of %s/%s -> %s %s", r.Client, r.ID, r.Result, r.Code))
		if r.Result == ResultOK {
			w.ok = true
		}
	}
	for c, n := range skipped {
		v = append(v, fmt.Sprintf("%d dead letters of %s were not replayed: the replays ran out of their budget (a minute plus 20 ms an entry, four at a time)", n, c))
	}
	for _, r := range hung {
		v = append(v, fmt.Sprintf("replay of %s %s (dead letter %s/%s) against a healthy server ended with %s: %s; history of the key: %s",
			r.Method, r.Key, r.Client, r.ID, r.Code, r.Err, strings.Join(get(id{r.Method, r.Key}).ops, "; ")))
	}
	for _, op := range parked {
		v = append(v, fmt.Sprintf("parked call not found in its dead-letter queue: %s", op))
	}
	for k, w := range wants {
		n := applied[k]
		switch {
		case w.noEffect && n > 0:
			v = append(v, fmt.Sprintf("%s %s applied %d times though the caller canceled before the request was complete: %s", k.method, k.key, n, strings.Join(w.ops, "; ")))
		case w.noEffect && w.ok:
			v = append(v, fmt.Sprintf("%s %s returned OK after the caller canceled: %s", k.method, k.key, strings.Join(w.ops, "; ")))
		case w.ok && n == 0: // n > 1 is reported above
			v = append(v, fmt.Sprintf("%s %s returned OK but was applied %d times: %s", k.method, k.key, n, strings.Join(w.ops, "; ")))
		}
	}
	for k := range applied {
		if wants[k] == nil {
			v = append(v, fmt.Sprintf("%s %s applied without any call in the histories", k.method, k.key))
		}
	}

	// The interceptor's promise, from the handler's point of view.
	type rk struct {
		id
		epoch     int
		principal string
	}
	// Runs of a Credit handler that reached the effect log (an apply or a
	// rerun), per server incarnation: with no eviction, one cache lets a
	// key run once, whichever incarnation applied it.
	runs := map[rk]int{}
	seen := map[rk]bool{}
	for _, e := range effects {
		k := id{e.Method, e.Key}
		if e.Method == MethodCredit && (e.Kind == EffectApply || e.Kind == EffectRerun) {
			r := rk{k, e.Epoch, e.Principal}
			runs[r]++
			if cfg.NoEviction && runs[r] > 1 && !seen[r] && (wants[k] == nil || !wants[k].panicAfter) {
				seen[r] = true
				v = append(v, fmt.Sprintf("credit %s: the handler ran again in the server process (epoch %d, principal %s) that had already run it, with no eviction: the idempotency cache let a repeat through", e.Key, e.Epoch, e.Principal))
			}
		}
		switch e.Kind {
		case EffectConcurrent:
			if e.Method == MethodCredit || e.Method == MethodBatch || e.Method == MethodTransfer {
				v = append(v, fmt.Sprintf("%s %s: a second handler run started while the first was still running (epoch %d, principal %s)", e.Method, e.Key, e.Epoch, e.Principal))
			}
		case EffectRerun:
			switch e.Method {
			case MethodBatch, MethodTransfer:
				if cfg.StreamRetries[e.Principal] {
					continue
				}
				v = append(v, fmt.Sprintf("%s %s: a stream was delivered to the handler twice (epoch %d)", e.Method, e.Key, e.Epoch))
			}
		}
	}
	sort.Strings(v)
	return slices.Compact(v)
}
