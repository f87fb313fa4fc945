// Command benchcmp compares tether with its peers side by side: identical
// BenchService handlers served over tether, grpc-go, connect-go (HTTP/2
// cleartext and HTTP/1.1) and drpc (TCP, and WebSocket+yamux as coder runs
// it), client and server in separate processes on loopback, every scenario
// run for every system, then one table with tether's ratio to each peer.
//
//	cd bench && go run ./cmd/benchcmp
//
// The server runs in a child process: benchcmp re-executes itself with
// -serve SYSTEM, once per scenario and system, so every scenario starts
// with a fresh server. Everything listens on 127.0.0.x only.
//
// Scenarios (16-byte bodies unless said):
//
//	unary-c1          unary calls one at a time: p50, p99, calls/s
//	unary-c64         64 concurrent callers on one connection: calls/s
//	unary-c64-8conns  64 concurrent callers over 8 connections: calls/s
//	stream-64B        server streaming, 64-byte messages: msgs/s, MB/s
//	stream-1KiB       server streaming, 1 KiB messages: msgs/s, MB/s
//	stream-64KiB      server streaming, 64 KiB messages: MB/s
//	upload-64KiB      client streaming, 64 KiB messages: MB/s
//	bidi-c1           ping-pong on one bidi stream: p50, p99, round trips/s
//	bidi-c64          64 bidi streams on one connection: round trips/s
//	idle              -idle-conns idle connections: server memory each
//	setup             connect + first call + close, -setup-workers at a time
//	push-fleet        -fleet-conns connections, each one unary call per
//	                  second, from -fleet-procs client processes: server
//	                  CPU per call, p50/p99 latency
//	raw-c1            raw gorilla/websocket echo, one message at a time
//	raw-pipelined     raw gorilla/websocket echo, 64 messages in flight
//	raw-stream-1KiB,  raw gorilla/websocket stream, server to client
//	raw-stream-64KiB
//	raw-upload-64KiB  raw gorilla/websocket stream, client to server
//	raw-mux-bidi-c64  bidi-c64 on a minimal multiplexer over raw
//	                  gorilla/websocket (bench.RawMuxConn), a reference for
//	                  the goroutine-per-stream design: round trips/s, CPU
//	                  and read+write syscalls per round trip (an unanchored
//	                  -run bidi-c64 runs it too)
//
// Use -run to pick scenarios, -systems to pick the RPC systems (default:
// all), -profile DIR to collect CPU and allocation profiles of client and
// server, and -idle-conns 10000 for the large idle test. A scenario a
// system's protocol cannot run (bidi over connect-go's HTTP/1.1) is
// reported as n/a with the reason. docs/BENCHMARKS.md has the results.
// -loop TARGET makes unary calls against a server and nothing else, for
// counting what a call costs under perf stat (bench/percall.sh).
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/tetherrpc/tether/bench"
)

type env struct {
	duration, warmup time.Duration
	idleConns        int
	idleIPs          int
	setupWorkers     int
	count            int
	retryLoad        float64
	profileDir       string
	verbose          bool
	systems          []string // RPC systems to run, tether first if present
	fleet            fleetConfig

	results map[string]map[string]metrics   // scenario -> system -> median metrics
	runs    map[string]map[string][]metrics // scenario -> system -> every run
	errs    map[string]map[string]error
	na      map[string]map[string]string // scenario -> system -> why it cannot run
}

func (e *env) logf(format string, args ...any) {
	if e.verbose {
		fmt.Fprintf(os.Stderr, "benchcmp: "+format+"\n", args...)
	}
}

func main() {
	serve := flag.String("serve", "", "internal: run as the server of `system` (tether, grpc-go or raw-ws)")
	serveIPs := flag.Int("serve-ips", 1, "internal: listen on this many loopback addresses (127.0.0.1, .2, ...)")
	fleetClient := flag.String("fleet-client", "", "internal: run as a push-fleet client process of `system`")
	fleetTargets := flag.String("fleet-targets", "", "internal: comma-separated targets of a push-fleet client process")
	e := &env{}
	flag.DurationVar(&e.duration, "duration", 3*time.Second, "timed run of each scenario")
	flag.DurationVar(&e.warmup, "warmup", 500*time.Millisecond, "untimed run before each scenario's timed run")
	flag.IntVar(&e.idleConns, "idle-conns", 2000, "connections of the idle scenario (10000 for the full test)")
	flag.IntVar(&e.idleIPs, "idle-ips", 0, "loopback addresses the idle scenario's server listens on (0: one per 15000 connections)")
	flag.IntVar(&e.count, "count", 1, "run each scenario this many times (fresh server each time) and report the median of every metric")
	flag.Float64Var(&e.retryLoad, "retry-load", 0, "repeat a timed run (up to 5 times) while other processes used more than this many CPUs during it; 0: never")
	flag.IntVar(&e.setupWorkers, "setup-workers", 4, "concurrent connectors in the setup scenario")
	runRE := flag.String("run", "", "run only the scenarios matching this `regexp`")
	systems := flag.String("systems", strings.Join(bench.RPCSystems, ","), "RPC systems to compare (the raw-ws ceiling always runs)")
	flag.IntVar(&e.fleet.conns, "fleet-conns", 10000, "connections of the push-fleet scenario")
	flag.IntVar(&e.fleet.procs, "fleet-procs", 0, "client processes of the push-fleet scenario (0: one per 15,000 connections)")
	flag.DurationVar(&e.fleet.interval, "fleet-interval", time.Second, "time between two calls of one push-fleet connection")
	flag.DurationVar(&e.fleet.duration, "fleet-duration", 5*time.Second, "timed run of the push-fleet scenario")
	flag.StringVar(&e.profileDir, "profile", "", "write CPU and allocation profiles of client and server for each timed run into `dir`")
	jsonOut := flag.String("json", "", "also write the raw results as JSON to `file`")
	loop := flag.String("loop", "", "make -loop-calls unary calls of -loop-system at `target` and exit (bench/percall.sh)")
	loopSystem := flag.String("loop-system", bench.Tether, "the RPC system of -loop")
	loopCalls := flag.Int("loop-calls", 50000, "calls -loop makes")
	loopConc := flag.Int("loop-concurrency", 1, "calls -loop has in flight at a time")
	loopConns := flag.Int("loop-conns", 1, "connections -loop spreads its calls over")
	flag.BoolVar(&e.verbose, "v", true, "report progress on stderr")
	flag.Parse()

	if *fleetClient != "" {
		if err := runFleetClient(*fleetClient, strings.Split(*fleetTargets, ","), e.fleet); err != nil {
			fmt.Fprintln(os.Stderr, "benchcmp fleet client:", err)
			os.Exit(1)
		}
		return
	}
	if *loop != "" {
		if err := runLoop(*loopSystem, *loop, *loopCalls, max(*loopConc, 1), max(*loopConns, 1)); err != nil {
			fmt.Fprintln(os.Stderr, "benchcmp -loop:", err)
			os.Exit(1)
		}
		return
	}
	if *serve != "" {
		if err := serveChild(*serve, *serveIPs); err != nil {
			fmt.Fprintln(os.Stderr, "benchcmp server:", err)
			os.Exit(1)
		}
		return
	}

	var re *regexp.Regexp
	if *runRE != "" {
		var err error
		if re, err = regexp.Compile(*runRE); err != nil {
			fmt.Fprintln(os.Stderr, "benchcmp: -run:", err)
			os.Exit(2)
		}
	}
	wanted := strings.Split(*systems, ",")
	for _, sys := range wanted {
		if !slices.Contains(bench.RPCSystems, sys) {
			fmt.Fprintf(os.Stderr, "benchcmp: -systems: unknown system %q (known: %s)\n", sys, strings.Join(bench.RPCSystems, ", "))
			os.Exit(2)
		}
	}
	e.systems = wanted
	if e.profileDir != "" {
		if err := os.MkdirAll(e.profileDir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "benchcmp:", err)
			os.Exit(1)
		}
	}
	e.results = map[string]map[string]metrics{}
	e.runs = map[string]map[string][]metrics{}
	e.errs = map[string]map[string]error{}
	e.na = map[string]map[string]string{}

	start := time.Now()
	for _, sc := range scenarios() {
		if re != nil && !re.MatchString(sc.name) {
			continue
		}
		scSystems := sc.systems
		if scSystems == nil {
			scSystems = rpcSystems
		}
		runs := map[string][]metrics{}
		for rep := range e.count {
			for _, sys := range scSystems {
				if sys != bench.Raw && !slices.Contains(wanted, sys) {
					continue
				}
				if e.errs[sc.name][sys] != nil {
					continue
				}
				if why := bench.Unsupported(sys, sc.kind); why != "" {
					if e.na[sc.name] == nil {
						e.na[sc.name] = map[string]string{}
					}
					e.na[sc.name][sys] = why
					continue
				}
				if e.count > 1 {
					e.logf("%-17s %s (%d/%d) ...", sc.name, sys, rep+1, e.count)
				} else {
					e.logf("%-17s %s ...", sc.name, sys)
				}
				m, err := e.runOne(sc, sys)
				for retry := 1; err == nil && e.retryLoad > 0 && m[mOtherLoad] > e.retryLoad && retry <= 5; retry++ {
					e.logf("%-17s %s: other load %.2f CPUs, again (%d/5) ...", sc.name, sys, m[mOtherLoad], retry)
					time.Sleep(time.Duration(retry) * 5 * time.Second)
					m, err = e.runOne(sc, sys)
				}
				if e.errs[sc.name] == nil {
					e.errs[sc.name] = map[string]error{}
				}
				if err != nil {
					e.errs[sc.name][sys] = err
					fmt.Fprintf(os.Stderr, "benchcmp: %s %s: %v\n", sc.name, sys, err)
					continue
				}
				runs[sys] = append(runs[sys], m)
			}
		}
		for sys, ms := range runs {
			if e.errs[sc.name][sys] != nil {
				continue
			}
			if e.results[sc.name] == nil {
				e.results[sc.name] = map[string]metrics{}
			}
			e.results[sc.name][sys] = median(ms)
		}
		e.runs[sc.name] = runs
	}
	e.logf("done in %v", time.Since(start).Round(time.Second))

	var out bytes.Buffer
	e.report(&out)
	os.Stdout.Write(out.Bytes())
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(map[string]any{"machine": machine(), "median": e.results, "runs": e.runs, "not_applicable": e.na}, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "benchcmp:", err)
		}
	}
	for _, errs := range e.errs {
		if len(errs) > 0 {
			os.Exit(1)
		}
	}
}

// median returns, for every metric, its median over runs.
func median(runs []metrics) metrics {
	out := metrics{}
	for name := range runs[0] {
		vs := make([]float64, 0, len(runs))
		for _, m := range runs {
			vs = append(vs, m[name])
		}
		slices.Sort(vs)
		if n := len(vs); n%2 == 1 {
			out[name] = vs[n/2]
		} else {
			out[name] = (vs[n/2-1] + vs[n/2]) / 2
		}
	}
	return out
}

// runOne starts a fresh server of sys, runs the scenario against it and
// stops the server.
func (e *env) runOne(sc scenario, sys string) (metrics, error) {
	ips := 1
	if sc.ips != nil {
		ips = sc.ips(e)
	}
	srv, err := startChild(sys, ips)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	return sc.run(e, sys, srv)
}

// machine describes the host for the report.
func machine() string {
	model := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%d CPUs (GOMAXPROCS %d), %s, Linux %s, %s %s/%s",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), model, kernel, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
