package chaos

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// Effect kinds in the effect log.
const (
	// EffectApply is an effect that changed the ledger.
	EffectApply = "apply"
	// EffectRerun is a handler run for a key whose effect was already
	// applied: the handler found the key in the log and changed nothing.
	EffectRerun = "rerun"
	// EffectConcurrent is a handler run that started while another run of the
	// same key was still in progress in the same server process.
	EffectConcurrent = "concurrent"
)

// Effect is one line of the effect log.
type Effect struct {
	Kind      string `json:"kind"`
	Method    string `json:"method"`
	Key       string `json:"key"`
	Principal string `json:"principal,omitempty"`
	// Epoch numbers the server incarnation (process or in-process restart)
	// whose handler wrote the line: each has a fresh idempotency cache.
	Epoch  int   `json:"epoch"`
	Amount int64 `json:"amount,omitempty"`
	// Late: the line was written by a handler of an in-process server
	// after that server was stopped (Close cancels a handler's context but
	// does not wait for it to return).
	Late bool `json:"late,omitempty"`
}

// EffectLog is the ledger's durable state: an append-only file with one JSON
// line per effect. The key is written in the same step as the effect (the
// line is the effect), so an effect is exactly-once across server restarts
// and SIGKILL, independently of the in-memory idempotency cache. A write
// reaches the kernel before the handler answers, so it survives the death
// of the process (not of the machine: the checker does not need fsync).
type EffectLog struct {
	mu       sync.Mutex
	f        *os.File
	latest   int              // the newest incarnation started (Started)
	stopped  int              // the newest incarnation stopped (Stopped)
	applied  map[string]bool  // method + "\x00" + key
	balances map[string]int64 // account -> balance
	effects  int64
	running  map[runKey]int
}

// runKey is a handler run in progress: its incarnation's and its key's.
type runKey struct {
	epoch int
	id    string
}

// OpenEffectLog opens (or creates) the log at path and rebuilds the set of
// applied keys from it.
func OpenEffectLog(path string) (*EffectLog, error) {
	l := &EffectLog{applied: map[string]bool{}, balances: map[string]int64{}, running: map[runKey]int{}}
	old, err := ReadEffects(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, e := range old {
		if e.Kind == EffectApply {
			l.applied[e.Method+"\x00"+e.Key] = true
			l.effects++
		}
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	l.f = f
	return l, nil
}

// Started records that incarnation epoch started: lines of older ones
// written from now on are late (Effect.Late).
func (l *EffectLog) Started(epoch int) {
	l.mu.Lock()
	l.latest = max(l.latest, epoch)
	l.mu.Unlock()
}

// Stopped records that incarnation epoch (and every older one) was
// stopped: its lines written from now on are late too.
func (l *EffectLog) Stopped(epoch int) {
	l.mu.Lock()
	l.stopped = max(l.stopped, epoch)
	l.mu.Unlock()
}

// lateLocked reports whether a line of incarnation epoch written now is
// late: a newer incarnation started, or this one was stopped. l.mu is held.
func (l *EffectLog) lateLocked(epoch int) bool {
	return epoch < l.latest || epoch <= l.stopped
}

// Close closes the file.
func (l *EffectLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

// Begin marks a handler run of (method, key) in incarnation epoch as in
// progress and returns the function that ends it. A second run that begins
// in the same incarnation while one is in progress is logged as
// EffectConcurrent (runs in two incarnations have two caches).
func (l *EffectLog) Begin(epoch int, method, key, principal string) (end func()) {
	rk := runKey{epoch, method + "\x00" + key}
	l.mu.Lock()
	l.running[rk]++
	if l.running[rk] > 1 {
		l.write(Effect{Kind: EffectConcurrent, Method: method, Key: key, Principal: principal, Epoch: epoch, Late: l.lateLocked(epoch)})
	}
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		if l.running[rk]--; l.running[rk] == 0 {
			delete(l.running, rk)
		}
		l.mu.Unlock()
	}
}

// Apply applies the effect of (method, key) unless it was applied before:
// then it logs a rerun and changes nothing. It reports whether the effect
// was applied now, and the account's balance. epoch is the incarnation
// whose handler calls it.
func (l *EffectLog) Apply(epoch int, method, key, principal, account string, amount int64) (applied bool, balance int64, err error) {
	id := method + "\x00" + key
	l.mu.Lock()
	defer l.mu.Unlock()
	e := Effect{Kind: EffectApply, Method: method, Key: key, Principal: principal, Epoch: epoch, Amount: amount, Late: l.lateLocked(epoch)}
	if l.applied[id] {
		e.Kind = EffectRerun
		return false, l.balances[account], l.write(e)
	}
	if err := l.write(e); err != nil {
		return false, 0, err
	}
	l.applied[id] = true
	l.balances[account] += amount
	l.effects++
	return true, l.balances[account], nil
}

// Balance returns an account's balance (of the effects applied by this
// process) and the number of effects in the log.
func (l *EffectLog) Balance(account string) (balance, effects int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.balances[account], l.effects
}

func (l *EffectLog) write(e Effect) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	_, err = l.f.Write(append(b, '\n'))
	return err
}

// ReadEffects reads every line of the log at path. A torn last line (the
// process died in the middle of a write) is ignored.
func ReadEffects(path string) ([]Effect, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Effect
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			return out, nil // a line without '\n' is torn
		}
		if err != nil {
			return nil, err
		}
		var e Effect
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, fmt.Errorf("effect log %s: %w", path, err)
		}
		out = append(out, e)
	}
}
