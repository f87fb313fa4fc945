package main

import (
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/tetherrpc/tether/bench"
)

// row is one line of the comparison table.
type row struct {
	label    string
	scenario string
	value    func(metrics) float64
	format   func(float64) string
	better   int // +1 higher is better, -1 lower is better, 0 neither
}

func metric(name string) func(metrics) float64 {
	return func(m metrics) float64 { return m[name] }
}

func sum(names ...string) func(metrics) float64 {
	return func(m metrics) float64 {
		var s float64
		for _, n := range names {
			s += m[n]
		}
		return s
	}
}

func kib(name string) func(metrics) float64 {
	return func(m metrics) float64 { return m[name] / 1024 }
}

func fmtInt(v float64) string {
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func fmt1(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
func fmt2(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }

func rows(e *env) []row {
	allocs := sum(mCliAllocs, mSrvAllocs)
	bytes := sum(mCliBytes, mSrvBytes)
	cpu := sum(mCliCPU, mSrvCPU)
	syscalls := sum(mCliReads, mCliWrites, mSrvReads, mSrvWrites)
	return []row{
		{"unary c=1: p50 latency (µs)", "unary-c1", metric(mP50), fmt1, -1},
		{"unary c=1: p99 latency (µs)", "unary-c1", metric(mP99), fmt1, -1},
		{"unary c=1: calls/s", "unary-c1", metric(mRate), fmtInt, +1},
		{"unary c=1: CPU µs/call (client+server)", "unary-c1", cpu, fmt1, -1},
		{"unary c=1: allocs/call (client+server)", "unary-c1", allocs, fmt1, -1},
		{"unary c=1: bytes allocated/call (client+server)", "unary-c1", bytes, fmtInt, -1},
		{"unary c=64, 1 conn: calls/s", "unary-c64", metric(mRate), fmtInt, +1},
		{"unary c=64, 1 conn: p99 latency (µs)", "unary-c64", metric(mP99), fmt1, -1},
		{"unary c=64, 1 conn: CPU µs/call (client+server)", "unary-c64", cpu, fmt1, -1},
		{"unary c=64, 1 conn: allocs/call (client+server)", "unary-c64", allocs, fmt1, -1},
		{"unary c=64, 1 conn: read+write syscalls/call (client+server)", "unary-c64", syscalls, fmt2, -1},
		{"unary c=64, 8 conns: calls/s", "unary-c64-8conns", metric(mRate), fmtInt, +1},
		{"server stream 64 B: msgs/s", "stream-64B", metric(mRate), fmtInt, +1},
		{"server stream 64 B: MB/s", "stream-64B", metric(mMBps), fmt1, +1},
		{"server stream 64 B: CPU µs/msg (client+server)", "stream-64B", cpu, fmt2, -1},
		{"server stream 64 B: allocs/msg (client+server)", "stream-64B", allocs, fmt1, -1},
		{"server stream 64 B: read+write syscalls/msg (client+server)", "stream-64B", syscalls, fmt2, -1},
		{"server stream 1 KiB: msgs/s", "stream-1KiB", metric(mRate), fmtInt, +1},
		{"server stream 1 KiB: MB/s", "stream-1KiB", metric(mMBps), fmt1, +1},
		{"server stream 1 KiB: CPU µs/msg (client+server)", "stream-1KiB", cpu, fmt2, -1},
		{"server stream 1 KiB: read+write syscalls/msg (client+server)", "stream-1KiB", syscalls, fmt2, -1},
		{"bidi c=1: p50 round trip (µs)", "bidi-c1", metric(mP50), fmt1, -1},
		{"bidi c=1: p99 round trip (µs)", "bidi-c1", metric(mP99), fmt1, -1},
		{"bidi c=1: round trips/s", "bidi-c1", metric(mRate), fmtInt, +1},
		{"bidi c=64, 1 conn: round trips/s", "bidi-c64", metric(mRate), fmtInt, +1},
		{"bidi c=64, 1 conn: CPU µs/round trip (client+server)", "bidi-c64", cpu, fmt1, -1},
		{fmt.Sprintf("idle x%d: connections held by the server", e.idleConns), "idle", metric(mHeld), fmtInt, 0},
		{fmt.Sprintf("idle x%d: server RSS/conn (KiB)", e.idleConns), "idle", kib(mRSSPer), fmt1, -1},
		{fmt.Sprintf("idle x%d: server Go heap/conn (KiB)", e.idleConns), "idle", kib(mHeapPer), fmt1, -1},
		{fmt.Sprintf("idle x%d: server goroutine stacks/conn (KiB)", e.idleConns), "idle", kib(mStackPer), fmt1, -1},
		{fmt.Sprintf("idle x%d: server goroutines/conn", e.idleConns), "idle", metric(mGoroutines), fmt1, -1},
		{fmt.Sprintf("idle x%d: client Go heap+stacks/conn (KiB)", e.idleConns), "idle", kib(mCliMemPer), fmt1, -1},
		{fmt.Sprintf("setup (%d at a time): connections/s", e.setupWorkers), "setup", metric(mRate), fmtInt, +1},
		{"setup: p50 connect to first call done (µs)", "setup", metric(mSetupP50), fmt1, -1},
	}
}

// get returns a scenario's metrics for a system, or nil.
func (e *env) get(scenario, system string) metrics {
	return e.results[scenario][system]
}

func (e *env) cell(scenario, system string, r row) (string, float64, bool) {
	if err := e.errs[scenario][system]; err != nil {
		return "error", 0, false
	}
	m := e.get(scenario, system)
	if m == nil {
		return "–", 0, false
	}
	v := r.value(m)
	return r.format(v), v, true
}

func ratio(a, b float64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func (e *env) report(w io.Writer) {
	fmt.Fprintf(w, "\n%s\n", machine())
	runs := ""
	if e.count > 1 {
		runs = fmt.Sprintf("; median of %d runs, each against a fresh server", e.count)
	}
	fmt.Fprintf(w, "%v timed run per scenario after a %v warm-up%s; client and server in separate processes on loopback; 16-byte bodies unless said.\n\n",
		e.duration, e.warmup, runs)

	var loads []float64
	for _, bySys := range e.runs {
		for _, runs := range bySys {
			for _, m := range runs {
				if l, ok := m[mOtherLoad]; ok {
					loads = append(loads, l)
				}
			}
		}
	}
	if len(loads) > 0 {
		slices.Sort(loads)
		fmt.Fprintf(w, "Other load on the machine during the timed runs kept (CPUs busy outside benchcmp): median %.2f, max %.2f of %d.\n\n",
			loads[len(loads)/2], loads[len(loads)-1], runtime.NumCPU())
	}

	fmt.Fprintln(w, "| scenario | tether | grpc-go | tether/grpc-go | better |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---|")
	for _, r := range rows(e) {
		if e.results[r.scenario] == nil {
			continue
		}
		ts, tv, tok := e.cell(r.scenario, bench.Tether, r)
		gs, gv, gok := e.cell(r.scenario, bench.GRPC, r)
		rat, better := "–", ""
		if tok && gok {
			rat = ratio(tv, gv)
		}
		switch r.better {
		case +1:
			better = "higher"
		case -1:
			better = "lower"
		}
		if r.better != 0 && tok && gok && tv != gv {
			winner := bench.GRPC
			if (tv > gv) == (r.better > 0) {
				winner = bench.Tether
			}
			better += ": " + winner
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", r.label, ts, gs, rat, better)
	}

	raw1, rawP := e.get("raw-c1", bench.Raw), e.get("raw-pipelined", bench.Raw)
	if raw1 != nil || rawP != nil {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Ceiling: raw gorilla/websocket echo of a 16-byte binary message over one connection, no RPC layer.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| raw echo | raw | tether | tether/raw | grpc-go | grpc-go/raw |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|")
		ceiling := func(label string, raw metrics, rawMetric, scenario, metricName string, format func(float64) string) {
			if raw == nil {
				return
			}
			if e.get(scenario, bench.Tether) == nil && e.get(scenario, bench.GRPC) == nil {
				return
			}
			rv := raw[rawMetric]
			cols := []string{label, format(rv)}
			for _, sys := range []string{bench.Tether, bench.GRPC} {
				m := e.get(scenario, sys)
				if m == nil {
					cols = append(cols, "–", "–")
					continue
				}
				v := m[metricName]
				cols = append(cols, format(v), fmt.Sprintf("%.0f%%", 100*v/rv))
			}
			fmt.Fprintf(w, "| %s |\n", strings.Join(cols, " | "))
		}
		ceiling("c=1 round trips/s vs unary c=1 calls/s", raw1, mRate, "unary-c1", mRate, fmtInt)
		ceiling("c=1 p50 round trip (µs) vs unary c=1 p50", raw1, mP50, "unary-c1", mP50, fmt1)
		ceiling("c=1 round trips/s vs bidi c=1 round trips/s", raw1, mRate, "bidi-c1", mRate, fmtInt)
		ceiling("64 in flight msgs/s vs unary c=64 calls/s", rawP, mRate, "unary-c64", mRate, fmtInt)
		ceiling("64 in flight msgs/s vs bidi c=64 round trips/s", rawP, mRate, "bidi-c64", mRate, fmtInt)
	}

	e.targets(w)

	var errs []string
	for sc, m := range e.errs {
		for sys, err := range m {
			errs = append(errs, fmt.Sprintf("- %s %s: %v", sc, sys, err))
		}
	}
	if len(errs) > 0 {
		fmt.Fprintln(w, "\nErrors:")
		fmt.Fprintln(w, strings.Join(errs, "\n"))
	}
}

// targets checks the goals of the performance issue.
func (e *env) targets(w io.Writer) {
	type target struct {
		goal     string
		measured string
		met      string
	}
	var ts []target
	both := func(scenario string) (metrics, metrics, bool) {
		t, g := e.get(scenario, bench.Tether), e.get(scenario, bench.GRPC)
		return t, g, t != nil && g != nil
	}
	verdict := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	if t, g, ok := both("unary-c64"); ok {
		r := t[mRate] / g[mRate]
		ts = append(ts, target{"unary throughput at c=64 ≥ 1.5x grpc-go", fmt.Sprintf("%.2fx (1 conn)", r), verdict(r >= 1.5)})
	}
	if t, g, ok := both("unary-c64-8conns"); ok {
		r := t[mRate] / g[mRate]
		ts = append(ts, target{"unary throughput at c=64 over 8 conns ≥ 1.5x grpc-go", fmt.Sprintf("%.2fx", r), verdict(r >= 1.5)})
	}
	if t, g, ok := both("unary-c1"); ok {
		ts = append(ts, target{"unary p99 at c=1 ≤ grpc-go", fmt.Sprintf("%.1f µs vs %.1f µs", t[mP99], g[mP99]), verdict(t[mP99] <= g[mP99])})
		ta, ga := t[mCliAllocs]+t[mSrvAllocs], g[mCliAllocs]+g[mSrvAllocs]
		ts = append(ts, target{"allocs per unary call ≤ half of grpc-go", fmt.Sprintf("%.1f vs %.1f (%.2fx; client+server)", ta, ga, ta/ga), verdict(ta <= ga/2)})
	}
	if t, g, ok := both("stream-64B"); ok {
		r := t[mRate] / g[mRate]
		ts = append(ts, target{"server-streaming 64 B ≥ 2x grpc-go", fmt.Sprintf("%.2fx", r), verdict(r >= 2)})
	}
	if t := e.get("idle", bench.Tether); t != nil {
		per := t[mRSSPer] / 1024
		held := int(t[mHeld])
		s := fmt.Sprintf("%.1f KiB RSS/conn at %d conns (%d held)", per, e.idleConns, held)
		v := verdict(per <= 16 && held >= e.idleConns)
		if e.idleConns < 10000 {
			s += "; 10,000 not tried (-run idle -idle-conns 10000)"
			if per <= 16 && held >= e.idleConns {
				v = "not shown at 10,000"
			}
		}
		ts = append(ts, target{"idle connection ≤ 16 KiB server memory each, 10,000 held", s, v})
	}
	if t, raw := e.get("unary-c64", bench.Tether), e.get("raw-pipelined", bench.Raw); t != nil && raw != nil {
		r := t[mRate] / raw[mRate]
		ts = append(ts, target{"tether small-message unary throughput ≥ 70% of raw gorilla echo", fmt.Sprintf("%.0f%% (unary c=64 vs 64 in flight)", 100*r), verdict(r >= 0.7)})
	}
	if len(ts) == 0 {
		return
	}
	fmt.Fprintln(w, "\nTargets:")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | measured | met |")
	fmt.Fprintln(w, "|---|---|---|")
	for _, t := range ts {
		fmt.Fprintf(w, "| %s | %s | %s |\n", t.goal, t.measured, t.met)
	}
}
