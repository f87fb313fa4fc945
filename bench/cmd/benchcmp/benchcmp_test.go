package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/bench"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestReportEveryPeer checks that the table has a column per system, tether's
// ratio to each peer, n/a (with its reason) where a protocol cannot run a
// scenario, and "error" where a run failed.
func TestReportEveryPeer(t *testing.T) {
	e := &env{
		systems: bench.RPCSystems,
		fleet:   fleetConfig{conns: 10000, interval: time.Second},
		results: map[string]map[string]metrics{},
		errs:    map[string]map[string]error{},
		na:      map[string]map[string]string{"bidi-c64": {bench.ConnectHTTP1: bench.Unsupported(bench.ConnectHTTP1, bench.KindBidi)}},
	}
	e.results["bidi-c64"] = map[string]metrics{}
	for i, sys := range bench.RPCSystems {
		if sys != bench.ConnectHTTP1 {
			e.results["bidi-c64"][sys] = metrics{mRate: float64(1000 * (i + 1))}
		}
	}
	e.results["bidi-c64"][bench.Tether] = metrics{mRate: 12000}
	e.errs["bidi-c64"] = map[string]error{bench.DRPCWS: errors.New("boom")}
	delete(e.results["bidi-c64"], bench.DRPCWS)
	var out bytes.Buffer
	e.report(&out)
	s := out.String()
	for _, want := range []string{
		"| scenario | tether | grpc-go | connect-h2c | connect-http1 | drpc-tcp | drpc-ws | tether/grpc-go | tether/connect-h2c | tether/connect-http1 | tether/drpc-tcp | tether/drpc-ws | better |",
		"| bidi c=64, 1 conn: round trips/s | 12,000 | 2,000 | 3,000 | n/a | 5,000 | error | 6.00x | 4.00x | – | 2.40x | – | higher: tether |",
		"bidi-c64 on connect-http1: n/a, the Connect protocol needs HTTP/2",
		"- bidi-c64 drpc-ws: boom",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
}

// TestPushFleet runs a small push fleet against a tether server in this
// process: every connection calls on schedule and the latencies come back.
func TestPushFleet(t *testing.T) {
	srv, err := bench.Serve(bench.Tether)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cfg := fleetConfig{conns: 20, interval: 100 * time.Millisecond, duration: 300 * time.Millisecond}
	conns, err := openFleet(bench.Tether, srv.Targets, cfg.conns)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(conns)
	res := runFleet(conns, cfg)
	if res.Errors != 0 {
		t.Fatalf("%d calls failed: %s", res.Errors, res.FirstErr)
	}
	// Three calls per connection: at offsets 0, 100 and 200 ms of its slot.
	if res.Calls != 60 || len(res.LatNanos) != 60 {
		t.Fatalf("%d calls, %d latencies; want 60", res.Calls, len(res.LatNanos))
	}
}

// TestReportClientGCs checks the 1 KiB stream's row of client garbage
// collections per 1,000 messages: shown for every system, with no "better"
// side, and not counted as a row tether must lead.
func TestReportClientGCs(t *testing.T) {
	e := &env{
		systems: []string{bench.Tether, bench.GRPC},
		fleet:   fleetConfig{conns: 10000, interval: time.Second},
		results: map[string]map[string]metrics{"stream-1KiB": {
			bench.Tether: {mRate: 2000, mCliGCs: 0.48},
			bench.GRPC:   {mRate: 1000, mCliGCs: 0.11},
		}},
		errs: map[string]map[string]error{},
		na:   map[string]map[string]string{},
	}
	var out bytes.Buffer
	e.report(&out)
	s := out.String()
	for _, want := range []string{
		"| server stream 1 KiB: client garbage collections per 1,000 msgs | 0.48 | 0.11 | 4.36x |  |",
		"| tether leads every peer in every scenario it supports | leads in 4 of 4 rows | yes |", // not 4 of 5
	} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
}

// TestRunKeepsEveryLatency: run leaves each worker's latencies in its
// slice of lat, one per op, in the room made for them (no slice grown
// inside the timed window when the room suffices), and none without lat.
func TestRunKeepsEveryLatency(t *testing.T) {
	const workers = 3
	lat := make([][]time.Duration, workers)
	for w := range lat {
		lat[w] = make([]time.Duration, 0, 1<<16)
	}
	room := make([]*time.Duration, workers)
	for w := range lat {
		room[w] = unsafe.SliceData(lat[w])
	}
	res, err := run(20*time.Millisecond, workers, lat, func(int) (int, error) {
		time.Sleep(50 * time.Microsecond)
		return 2, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for w, l := range lat {
		n += int64(len(l))
		if len(l) > 0 && unsafe.SliceData(l) != room[w] {
			t.Errorf("worker %d: latencies not in the slice made for them", w)
		}
		for _, d := range l {
			if d <= 0 {
				t.Fatalf("worker %d: latency %v", w, d)
			}
		}
	}
	if n == 0 || n != res.ops || res.units != 2*res.ops {
		t.Fatalf("latencies %d, ops %d, units %d", n, res.ops, res.units)
	}
	if res.lat != nil {
		t.Fatalf("run gathered %d latencies itself", len(res.lat))
	}
	res, err = run(5*time.Millisecond, workers, nil, func(int) (int, error) { return 1, nil })
	if err != nil || res.ops == 0 || res.lat != nil {
		t.Fatalf("without lat: ops %d, %d latencies, %v", res.ops, len(res.lat), err)
	}
}

// TestReportMultiplexerRows checks the ceiling table's minimal-multiplexer
// rows and their note: printed with both raw-mux-bidi-c64 and bidi-c64,
// left out when either is missing.
func TestReportMultiplexerRows(t *testing.T) {
	newEnv := func() *env {
		return &env{
			systems: []string{bench.Tether, bench.GRPC},
			fleet:   fleetConfig{conns: 10000, interval: time.Second},
			results: map[string]map[string]metrics{
				"raw-c1": {bench.Raw: {mRate: 20000, mP50: 12, mP99: 100}},
			},
			errs: map[string]map[string]error{},
			na:   map[string]map[string]string{},
		}
	}
	mux := metrics{mRate: 200000, mCliCPU: 3, mSrvCPU: 2.5, mCliReads: 0.05, mCliWrites: 0.07, mSrvReads: 0.05, mSrvWrites: 0.07}
	bidi := map[string]metrics{
		bench.Tether: {mRate: 150000, mCliCPU: 4, mSrvCPU: 3.5, mCliReads: 0.06, mCliWrites: 0.09, mSrvReads: 0.06, mSrvWrites: 0.09},
		bench.GRPC:   {mRate: 100000, mCliCPU: 6, mSrvCPU: 5, mCliReads: 0.07, mCliWrites: 0.08, mSrvReads: 0.08, mSrvWrites: 0.08},
	}
	rows := []string{
		"| minimal multiplexer, 64 streams: round trips/s vs bidi c=64 round trips/s | 200,000 | 150,000 (75%) | 100,000 (50%) |",
		"| minimal multiplexer, 64 streams: CPU µs/round trip vs bidi c=64's (client+server) | 5.5 | 7.5 (136%) | 11.0 (200%) |",
		"| minimal multiplexer, 64 streams: read+write syscalls/round trip vs bidi c=64's (client+server) | 0.24 | 0.30 (125%) | 0.31 (129%) |",
		"Minimal multiplexer (bench.RawMuxConn",
	}
	for _, tc := range []struct {
		name      string
		mux, bidi bool
	}{{"both", true, true}, {"no multiplexer", false, true}, {"no bidi", true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv()
			if tc.mux {
				e.results["raw-mux-bidi-c64"] = map[string]metrics{bench.Raw: mux}
			}
			if tc.bidi {
				e.results["bidi-c64"] = bidi
			}
			var out bytes.Buffer
			e.report(&out)
			for _, row := range rows {
				if got, want := strings.Contains(out.String(), row), tc.mux && tc.bidi; got != want {
					t.Errorf("report has %q: %v, want %v:\n%s", row, got, want, out.String())
				}
			}
		})
	}
}

// TestTargetsAgainstTheEchosBestRun checks that the raw echo's targets are
// judged against its best run as well as its median one: a median run in
// the echo's slow mode must not turn a miss into "yes".
func TestTargetsAgainstTheEchosBestRun(t *testing.T) {
	e := &env{
		systems: []string{bench.Tether},
		fleet:   fleetConfig{conns: 10000, interval: time.Second},
		results: map[string]map[string]metrics{
			"unary-c1":      {bench.Tether: {mP50: 28.3, mP99: 218.5, mRate: 18000}},
			"raw-c1":        {bench.Raw: {mP50: 65.7, mP99: 195.2, mRate: 14839}},
			"unary-c64":     {bench.Tether: {mRate: 112963}},
			"raw-pipelined": {bench.Raw: {mRate: 90000}},
		},
		runs: map[string]map[string][]metrics{
			"raw-c1":        {bench.Raw: {{mP50: 79.7, mP99: 186.5}, {mP50: 12.2, mP99: 197.9}, {mP50: 65.7, mP99: 195.2}}},
			"raw-pipelined": {bench.Raw: {{mRate: 90000}, {mRate: 80000}, {mRate: 118930}}},
		},
		errs: map[string]map[string]error{},
		na:   map[string]map[string]string{},
	}
	var out bytes.Buffer
	e.report(&out)
	for _, want := range []string{
		"| unary c=1 p50 ≤ 2x the raw echo round trip | 28.3 µs vs 65.7 µs (0.43x); vs its best run, 12.2 µs: 2.32x | **no** |",
		"| unary c=1 p99 ≤ 3x the raw echo's p99 | 218.5 µs vs 195.2 µs (1.12x); vs its best run, 186.5 µs: 1.17x | yes |",
		"| unary c=64, 1 conn ≥ 120% of the raw echo with 64 in flight | 126%; 95% of its best run | **no** |",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}
