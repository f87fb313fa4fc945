package interop

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	iterations = flag.Int("interop.iterations", 20, "how many times TestInterop runs the whole set of cases, stress included")
	caseFilter = flag.String("interop.cases", "", "regular expression selecting the cases TestInterop runs (default all)")
	stressN    = flag.Int("interop.stress", 200, "goroutines of the stress case, each running one case per iteration over the shared client (0 to skip)")
	watchdog   = flag.Duration("interop.watchdog", time.Minute, "a case still running after this long is canceled and reported as hung")
)

// timeoutOnSleepingServerTimeout is the call timeout of
// timeout_on_sleeping_server, as in gRPC's description.
const timeoutOnSleepingServerTimeout = time.Millisecond

// maxReported bounds the failures TestInterop prints per case; the summary
// counts them all.
const maxReported = 5

var errWatchdog = errors.New("interop: the case hung")

// runCase runs c with a watchdog: the calls carry no deadline (except where
// the case sets one), so a call that never ends would otherwise hang the
// test instead of failing the case.
func runCase(parent context.Context, e *env, c interopCase, label caseLabel) error {
	ctx, cancel := context.WithCancelCause(context.WithValue(parent, labelKey{}, label))
	defer cancel(nil)
	t := time.AfterFunc(*watchdog, func() { cancel(errWatchdog) })
	defer t.Stop()
	err := c.run(ctx, e)
	if err != nil && errors.Is(context.Cause(ctx), errWatchdog) {
		err = fmt.Errorf("%w (hung: still running after %v)", err, *watchdog)
	}
	return err
}

// failures counts and reports the failures of a run.
type failures struct {
	t      *testing.T
	mu     sync.Mutex
	counts map[string]int          // by case ("stress/<case>" in the stress case)
	iters  map[string]map[int]bool // iterations with at least one failure, by case
}

func (f *failures) add(iter int, name string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts[name]++
	if f.iters[name] == nil {
		f.iters[name] = map[int]bool{}
	}
	f.iters[name][iter] = true
	if f.counts[name] <= maxReported {
		f.t.Errorf("iteration %d/%d: %s: %v", iter, *iterations, name, err)
	} else if f.counts[name] == maxReported+1 {
		f.t.Errorf("iteration %d/%d: %s: more failures; only counting them from now on", iter, *iterations, name)
	}
}

func (f *failures) summary(total map[string]int) string {
	names := make([]string, 0, len(f.counts))
	for name := range f.counts {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, name := range names {
		fmt.Fprintf(&b, "\n  %-40s failed %d of %d runs, in %d of %d iterations", name, f.counts[name], total[name], len(f.iters[name]), *iterations)
	}
	return b.String()
}

// TestInterop runs the interop cases -interop.iterations times over one
// client and one server, each iteration the cases in order and then the
// stress case: -interop.stress goroutines, each running one of the cases at
// the same time as the others over the same client.
//
// A failure names the case and the iteration; the summary at the end says
// how often each case failed.
func TestInterop(t *testing.T) {
	selected := cases
	if *caseFilter != "" {
		re, err := regexp.Compile(*caseFilter)
		if err != nil {
			t.Fatalf("-interop.cases: %v", err)
		}
		selected = nil
		for _, c := range cases {
			if re.MatchString(c.name) {
				selected = append(selected, c)
			}
		}
		if len(selected) == 0 {
			t.Fatalf("-interop.cases %q selects no case", *caseFilter)
		}
	}
	e := newEnv(t)
	ctx := t.Context()
	f := &failures{t: t, counts: map[string]int{}, iters: map[string]map[int]bool{}}
	runs := map[string]int{}
	slowest := map[string]time.Duration{} // serial runs only
	start := time.Now()
	for iter := 1; iter <= *iterations; iter++ {
		for _, c := range selected {
			runs[c.name]++
			t0 := time.Now()
			if err := runCase(ctx, e, c, caseLabel{iter, c.name}); err != nil {
				f.add(iter, c.name, err)
			}
			slowest[c.name] = max(slowest[c.name], time.Since(t0))
		}
		if *stressN <= 0 {
			continue
		}
		var wg sync.WaitGroup
		for g := range *stressN {
			c := selected[(g+iter)%len(selected)]
			name := "stress/" + c.name
			runs[name]++
			wg.Go(func() {
				if err := runCase(ctx, e, c, caseLabel{iter, name}); err != nil {
					f.add(iter, name, fmt.Errorf("goroutine %d: %w", g, err))
				}
			})
		}
		wg.Wait()
	}
	// The checks of handlers that may or may not have run, now that every
	// handler has returned.
	e.close()
	endFailures, endRan := e.calls.checkEnd()
	labels := make([]caseLabel, 0, len(endFailures))
	for l := range endFailures {
		labels = append(labels, l)
	}
	sort.Slice(labels, func(i, j int) bool {
		if labels[i].iter != labels[j].iter {
			return labels[i].iter < labels[j].iter
		}
		return labels[i].name < labels[j].name
	})
	for _, l := range labels {
		for _, err := range endFailures[l] {
			f.add(l.iter, l.name, fmt.Errorf("checked after the server closed: %w", err))
		}
	}
	t.Logf("%d of %d handlers of cancel_after_begin calls ran (checked after the server closed)", endRan, runs["cancel_after_begin"]+runs["stress/cancel_after_begin"])
	total := 0
	for _, n := range runs {
		total += n
	}
	t.Logf("%d iterations, %d case runs (%d cases, %d stress goroutines) in %v", *iterations, total, len(selected), *stressN, time.Since(start).Round(time.Millisecond))
	for _, c := range selected {
		t.Logf("  %-40s slowest serial run %v", c.name, slowest[c.name].Round(time.Microsecond))
	}
	if t.Failed() {
		t.Logf("failures:%s", f.summary(runs))
	}
}
