package idempotency

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tetherrpc/tether"
)

var (
	propSeed  = flag.Uint64("idem.seed", 0, "seed of TestAdversarialSchedule (0: fixed seeds plus one random seed)")
	propSteps = flag.Int("idem.steps", 1500, "steps per seed of TestAdversarialSchedule")
)

// TestAdversarialSchedule drives the cache with a seeded random schedule of
// new calls and repeats, handlers that return responses or errors of random
// sizes, transient errors and panics, waiters whose contexts are cancelled,
// and clock jumps past the TTL, under tight entry and byte limits. After
// every step it checks that
//
//	(a) no key runs twice while it is remembered: a run starts only for a key
//	    the cache did not hold, held only until a run ended without a result
//	    (panic or transient error), or held past its TTL; no two runs of a key
//	    overlap; a running key is never dropped; a repeat gets exactly the
//	    result of the run it repeats;
//	(b) the byte total equals the sum of the held entries' sizes and stays
//	    within the limit, the entry count within its limit, and a refusal
//	    happens only when nothing but running calls is held;
//	(c) no waiter hangs: a cancelled waiter returns canceled, and once every
//	    handler has returned, every call has returned.
//
// A failure prints the seed; -idem.seed=N replays that schedule (up to the
// order in which woken repeats race for a released key).
func TestAdversarialSchedule(t *testing.T) {
	seeds := []uint64{1, 2, 3, rand.Uint64()}
	if *propSeed != 0 {
		seeds = []uint64{*propSeed}
	}
	// Each seed runs under two limits: one where running calls fill the
	// entry limit first, one where they fill the byte limit first (each
	// key counts about entryOverhead bytes).
	limits := []propLimits{{"entries", 6, 2600}, {"bytes", 12, 2000}}
	for _, seed := range seeds {
		for _, lim := range limits {
			t.Run(fmt.Sprint(lim.name, "/", seed), func(t *testing.T) { runSchedule(t, seed, lim) })
		}
	}
}

type propLimits struct {
	name       string
	maxEntries int
	maxBytes   int
}

func runSchedule(t *testing.T, seed uint64, lim propLimits) {
	h := newHarness(t, seed, lim)
	defer h.cleanup()
	defer func() {
		if t.Failed() {
			t.Logf("replay with: go test -race -run 'TestAdversarialSchedule/%s/%d' -idem.seed=%d ./server/idempotency", lim.name, seed, seed)
			t.Logf("last steps:\n%s", strings.Join(h.log[max(0, len(h.log)-25):], "\n"))
		}
	}()
	for step := 0; step < *propSteps && !t.Failed(); step++ {
		h.step(step)
	}
	if !t.Failed() {
		h.drain()
	}
	t.Logf("seed %d: %v", seed, h.tally)
}

const (
	propKeys = 14
	propTTL  = time.Minute
)

type outcomeKind int

const (
	outOK outcomeKind = iota
	outError
	outTransient
	outPanic
)

type outcome struct {
	kind outcomeKind
	size int
}

// propCall is one call of the schedule: a goroutine in Interceptor.do.
type propCall struct {
	id         uint64
	key        cacheKey
	ctx        context.Context
	cancel     context.CancelFunc
	cancelable bool         // the schedule may cancel it (all can be at cleanup)
	ctl        chan outcome // tells the call's handler how to end, once it runs
	ran        bool         // its handler was invoked (guarded by harness.mu)
	ended      outcome      // how its handler ended, if it ran
	done       chan propResult
}

type propResult struct {
	res      proto.Message
	err      error
	panicked any
}

type harness struct {
	t   *testing.T
	lim propLimits
	rnd *rand.Rand
	i   *Interceptor

	clockMu sync.Mutex
	now     time.Time

	mu       sync.Mutex
	nextID   uint64
	live     map[uint64]*propCall // calls whose do has not returned
	inRun    map[uint64]*propCall // calls whose handler is running
	runsOf   map[cacheKey]int     // handlers of the key running now
	started  []*propCall          // handlers started during the current step
	canceled map[uint64]bool

	// lastRemembered is the tag of the run whose result a repeat of the
	// key must get, while the cache holds the key as settled.
	lastRemembered map[cacheKey]uint64
	pending        []*propCall // calls started and not yet collected
	log            []string
	tally          map[string]int // what the schedule exercised
}

func newHarness(t *testing.T, seed uint64, lim propLimits) *harness {
	h := &harness{
		t:              t,
		lim:            lim,
		rnd:            rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		now:            time.Unix(1_000_000, 0),
		live:           map[uint64]*propCall{},
		inRun:          map[uint64]*propCall{},
		runsOf:         map[cacheKey]int{},
		canceled:       map[uint64]bool{},
		lastRemembered: map[cacheKey]uint64{},
		tally:          map[string]int{},
	}
	h.i = New(WithMaxEntries(lim.maxEntries), WithMaxBytes(lim.maxBytes), WithTTL(propTTL), withClock(h.clock))
	return h
}

func (h *harness) clock() time.Time {
	h.clockMu.Lock()
	defer h.clockMu.Unlock()
	return h.now
}

func (h *harness) logf(format string, args ...any) {
	h.log = append(h.log, fmt.Sprintf(format, args...))
}

// step performs one random action, waits until every call is either in its
// handler, waiting for a running key, or returned, and checks the cache.
func (h *harness) step(n int) {
	before := h.i.snapshot()
	now := h.clock()
	var ended *propCall // the call whose handler this step ended
	var goneID uint64   // the call that must return in this step
	switch r := h.rnd.IntN(100); {
	case r < 45:
		c := h.start(ck(fmt.Sprint(h.rnd.IntN(propKeys))), h.rnd.IntN(4) == 0)
		h.logf("%d: call %d on key %s", n, c.id, c.key.key)
	case r < 80:
		c := h.pickRunning()
		if c == nil {
			return
		}
		o := outcome{kind: outOK, size: h.rnd.IntN(700)}
		switch p := h.rnd.IntN(100); {
		case p < 20:
			o.kind = outError
		case p < 30:
			o.kind = outTransient
		case p < 40:
			o.kind = outPanic
		}
		h.logf("%d: handler of call %d (key %s) ends with %+v", n, c.id, c.key.key, o)
		ended, goneID = c, c.id
		h.end(c, o)
	case r < 90:
		c := h.pickWaiter()
		if c == nil {
			return
		}
		h.mu.Lock()
		h.canceled[c.id] = true
		h.mu.Unlock()
		h.logf("%d: cancel call %d (key %s)", n, c.id, c.key.key)
		goneID = c.id
		c.cancel()
	default:
		d := time.Duration(h.rnd.Int64N(int64(propTTL)))
		h.clockMu.Lock()
		h.now = h.now.Add(d)
		h.clockMu.Unlock()
		h.logf("%d: clock +%v", n, d)
	}
	h.settle(goneID)
	h.check(n, before, now, ended)
}

func (h *harness) start(key cacheKey, cancelable bool) *propCall {
	h.mu.Lock()
	h.nextID++
	c := &propCall{id: h.nextID, key: key, ctl: make(chan outcome, 1), done: make(chan propResult, 1)}
	h.live[c.id] = c
	h.mu.Unlock()
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.cancelable = cancelable
	h.pending = append(h.pending, c)
	go func() {
		var r propResult
		defer func() {
			r.panicked = recover()
			// The result goes in (done is buffered) before the call stops
			// being live: settle then sees it gone only when collect can
			// take its result in the same step.
			c.done <- r
			h.mu.Lock()
			delete(h.live, c.id)
			h.mu.Unlock()
		}()
		r.res, r.err = h.i.do(c.ctx, key, nil, func() (proto.Message, error) { return h.run(c) })
	}()
	return c
}

// run is the handler of call c.
func (h *harness) run(c *propCall) (proto.Message, error) {
	h.mu.Lock()
	c.ran = true
	h.inRun[c.id] = c
	h.runsOf[c.key]++
	if h.runsOf[c.key] > 1 {
		h.t.Errorf("(a) %d handlers of key %s run at once", h.runsOf[c.key], c.key.key)
	}
	h.started = append(h.started, c)
	h.mu.Unlock()
	o := <-c.ctl
	h.mu.Lock()
	delete(h.inRun, c.id)
	h.runsOf[c.key]--
	h.mu.Unlock()
	switch o.kind {
	case outError:
		return nil, tether.Errorf(tether.CodeFailedPrecondition, "run %d %s", c.id, strings.Repeat("e", o.size))
	case outTransient:
		return nil, tether.Errorf(tether.CodeUnavailable, "run %d", c.id)
	case outPanic:
		panic(fmt.Sprint("run ", c.id))
	}
	return sized(c.id, o.size), nil
}

// tagOf returns the run id a result carries.
func tagOf(res proto.Message, err error) uint64 {
	if err != nil {
		var id uint64
		fmt.Sscanf(tether.AsError(err).Message(), "run %d", &id)
		return id
	}
	return binary.LittleEndian.Uint64(res.(*wrapperspb.BytesValue).GetValue())
}

// end makes call c's handler end with o.
func (h *harness) end(c *propCall, o outcome) {
	h.mu.Lock()
	c.ended = o
	delete(h.inRun, c.id) // counted again only if it waits or runs
	h.mu.Unlock()
	if o.kind == outOK || o.kind == outError {
		h.lastRemembered[c.key] = c.id
	}
	c.ctl <- o
}

func (h *harness) pickRunning() *propCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return pick(h.rnd, h.inRun)
}

func (h *harness) pickWaiter() *propCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	w := map[uint64]*propCall{}
	for id, c := range h.live {
		if h.inRun[id] == nil && !h.canceled[id] && c.cancelable {
			w[id] = c
		}
	}
	return pick(h.rnd, w)
}

// pick chooses a call at random, in an order that depends only on the seed.
func pick(rnd *rand.Rand, m map[uint64]*propCall) *propCall {
	if len(m) == 0 {
		return nil
	}
	var best *propCall
	for _, c := range m {
		if best == nil || c.id < best.id {
			best = c
		}
	}
	n := rnd.IntN(len(m))
	for id := best.id; ; id++ {
		if c, ok := m[id]; ok {
			if n == 0 {
				return c
			}
			n--
		}
	}
}

// settle waits until every live call is in its handler or waiting for a
// running key, and call goneID (if not 0) has returned; a call that neither
// returns nor gets there hangs.
func (h *harness) settle(goneID uint64) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		h.mu.Lock()
		live, inRun := len(h.live), len(h.inRun)
		h.mu.Unlock()
		h.mu.Lock()
		_, gone := h.live[goneID]
		gone = !gone
		h.mu.Unlock()
		if gone && live == inRun+h.i.snapshot().blocked {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("(c) a call neither returned nor settled within 20s: %d live, %d in their handler, %d waiting (call %d gone: %v)", live, inRun, h.i.snapshot().blocked, goneID, gone)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// collect returns the results of calls that returned since the last step.
func (h *harness) collect() map[*propCall]propResult {
	out := map[*propCall]propResult{}
	for _, c := range h.pending {
		select {
		case r := <-c.done:
			out[c] = r
		default:
		}
	}
	return out
}

func (h *harness) check(n int, before snapshot, now time.Time, ended *propCall) {
	t := h.t
	t.Helper()
	after := h.i.snapshot()
	h.mu.Lock()
	started := h.started
	h.started = nil
	running := map[cacheKey]bool{}
	for _, c := range h.inRun {
		running[c.key] = true
	}
	h.mu.Unlock()

	// (a) A run starts only for a key that was not remembered.
	released := ended != nil && (ended.ended.kind == outPanic || ended.ended.kind == outTransient)
	for _, c := range started {
		b, held := before.entries[c.key]
		switch {
		case !held:
		case b.running && released && ended.key == c.key:
			h.tally["rerun after release"]++
		case !b.running && !now.Before(b.expires):
			h.tally["rerun after TTL"]++
		default:
			t.Errorf("(a) step %d: call %d ran key %s while it was remembered (%+v)", n, c.id, c.key.key, b)
		}
	}
	// (a) A running key is never dropped.
	for k := range running {
		if a, ok := after.entries[k]; !ok || !a.running {
			t.Errorf("(a) step %d: key %s runs but the cache does not hold it as running", n, k.key)
		}
	}
	// (b) Exact accounting within the limits.
	sum, settled := 0, 0
	for _, e := range after.entries {
		sum += e.size
		if !e.running {
			settled++
		}
	}
	if after.bytes != sum {
		t.Errorf("(b) step %d: byte total %d, held entries sum to %d", n, after.bytes, sum)
	}
	if after.bytes > h.lim.maxBytes && settled > 0 {
		t.Errorf("(b) step %d: %d bytes held, over the %d limit, while %d settled entries could go", n, after.bytes, h.lim.maxBytes, settled)
	}
	if len(after.entries) > h.lim.maxEntries {
		t.Errorf("(b) step %d: %d entries over the limit %d", n, len(after.entries), h.lim.maxEntries)
	}

	// Results of the calls that returned in this step.
	for c, r := range h.collect() {
		h.pending = slicesDelete(h.pending, c)
		h.mu.Lock()
		ran, o, canceled := c.ran, c.ended, h.canceled[c.id]
		h.mu.Unlock()
		switch {
		case ran:
			h.tally[fmt.Sprint("run ", []string{"ok", "error", "transient", "panic"}[o.kind])]++
			want := map[outcomeKind]tether.Code{outOK: tether.CodeOK, outError: tether.CodeFailedPrecondition, outTransient: tether.CodeUnavailable}
			if o.kind == outPanic {
				if r.panicked != fmt.Sprint("run ", c.id) {
					t.Errorf("step %d: call %d panicked, but do ended with panic %v, err %v", n, c.id, r.panicked, r.err)
				}
			} else if tether.CodeOf(r.err) != want[o.kind] || tagOf(r.res, r.err) != c.id {
				t.Errorf("step %d: call %d ran and ended with %+v, but do returned %v, %v", n, c.id, o, r.res, r.err)
			}
		case r.panicked != nil:
			t.Errorf("step %d: call %d did not run but panicked: %v", n, c.id, r.panicked)
		case tether.CodeOf(r.err) == tether.CodeCanceled:
			h.tally["canceled"]++
			if !canceled {
				t.Errorf("(c) step %d: call %d returned canceled without being cancelled", n, c.id)
			}
		case tether.CodeOf(r.err) == tether.CodeUnavailable && strings.Contains(r.err.Error(), "idempotency"):
			h.tally["refused"]++
			if settled > 0 {
				t.Errorf("(b) step %d: call %d refused (%v) while %d settled entries could be forgotten", n, c.id, r.err, settled)
			}
		default:
			h.tally["repeat answered"]++
			if tag := tagOf(r.res, r.err); tag != h.lastRemembered[c.key] {
				t.Errorf("(a) step %d: repeat %d of key %s got the result of run %d, want run %d's (%v %v)", n, c.id, c.key.key, tag, h.lastRemembered[c.key], r.res, r.err)
			}
		}
	}
}

// drain ends every handler until no call is left; a call that outlives
// every handler hangs.
func (h *harness) drain() {
	for round := 0; ; round++ {
		c := h.pickRunning()
		if c == nil {
			break
		}
		before, now := h.i.snapshot(), h.clock()
		h.end(c, outcome{kind: outOK, size: 1})
		h.settle(c.id)
		h.check(-1, before, now, c)
	}
	h.mu.Lock()
	left := len(h.live)
	h.mu.Unlock()
	if left > 0 {
		h.t.Errorf("(c) %d calls still wait after every handler returned: they hang", left)
	}
}

func (h *harness) cleanup() {
	// Unblock whatever is left, so that no goroutine outlives the test.
	h.mu.Lock()
	calls := append([]*propCall(nil), h.pending...)
	h.mu.Unlock()
	for _, c := range calls {
		c.cancel()
		select {
		case c.ctl <- outcome{kind: outOK}:
		default:
		}
	}
	for _, c := range calls {
		select {
		case <-c.done:
		case <-time.After(20 * time.Second):
			h.t.Errorf("call %d did not end", c.id)
		}
	}
}

func slicesDelete(s []*propCall, c *propCall) []*propCall {
	for j, x := range s {
		if x == c {
			return append(s[:j], s[j+1:]...)
		}
	}
	return s
}
