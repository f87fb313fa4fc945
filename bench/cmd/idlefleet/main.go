// Command idlefleet holds many idle connections across several processes
// and shows what they cost and whether anything degrades: server memory per
// connection, heartbeat lateness, and the latency of calls sampled on
// random connections while all are held.
//
//	cd bench && go run ./cmd/idlefleet -servers 1 -conns 19000
//	cd bench && go run ./cmd/idlefleet -servers 5 -conns 19000 -hold 60s
//
// It starts -servers server processes (re-executing itself with -serve),
// each listening on its own loopback address (127.0.0.10, .11, ...), and
// client processes (-client) that together open -conns connections to
// every server, from source addresses 127.0.0.100 and up (four per client
// process, so that no server sees more than its per-address limit from one
// address, and ephemeral ports are plenty). Every process is capped at
// 20,000 open files, so one process holds at most about 19,000 sockets.
//
// Before the fleet connects, the usual latency of a call on an idle
// connection is measured the same way on -baseline connections alone. Once every connection has made one
// call, the servers' RSS, Go heap, goroutine stacks and goroutines are read
// (after a GC) and divided by the connections each holds. Then, for -hold,
// the clients make -rate calls per second on random connections, and every
// process records the lateness of its heartbeats (each PING against its
// schedule) and their round trips (mux.Heartbeats). docs/BENCHMARKS.md,
// "Round 2: idle connections at scale", has results.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherrpc/tether/bench"
	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
	"github.com/tetherrpc/tether/internal/mux"
)

// maxPerProcess is the most sockets one client process opens: every
// process may hold 20,000 open files.
const maxPerProcess = 19000

// srcPerClient is how many source addresses each client process uses.
const srcPerClient = 4

type options struct {
	system       string
	servers      int
	conns        int // per server
	clients      int
	hold         time.Duration
	rate         float64
	baseline     int
	baselineTime time.Duration
	settle       time.Duration // pause before measuring memory and after the baseline
	jsonOut      string
}

func main() {
	var o options
	flag.StringVar(&o.system, "system", bench.Tether, "RPC system: tether or grpc-go")
	flag.IntVar(&o.servers, "servers", 1, "server processes")
	flag.IntVar(&o.conns, "conns", 19000, "idle connections per server")
	flag.IntVar(&o.clients, "clients", 0, "client processes (0: enough to hold at most 19,000 connections each)")
	flag.DurationVar(&o.hold, "hold", 30*time.Second, "how long the connections are held while calls are sampled (at least 2 heartbeat intervals)")
	flag.Float64Var(&o.rate, "rate", 200, "sampled calls per second over the whole fleet")
	flag.IntVar(&o.baseline, "baseline", 100, "idle connections on which calls are sampled (-rate, -baseline-time) before the fleet connects: the usual latency (0: none)")
	flag.DurationVar(&o.baselineTime, "baseline-time", 10*time.Second, "how long the baseline samples calls")
	flag.DurationVar(&o.settle, "settle", 2*time.Second, "pause after the connections open before the memory is measured")
	flag.StringVar(&o.jsonOut, "json", "", "also write the results as JSON to `file`")
	serve := flag.String("serve", "", "internal: run as a server of `system`")
	ip := flag.String("ip", "127.0.0.1", "internal: the server's loopback address")
	isClient := flag.Bool("client", false, "internal: run as a client process")
	targets := flag.String("targets", "", "internal: the client's targets, comma-separated")
	srcs := flag.String("src", "", "internal: the client's source addresses, comma-separated")
	flag.Parse()

	var err error
	switch {
	case *serve != "":
		err = serveMain(*serve, *ip)
	case *isClient:
		err = clientMain(o, strings.Split(*targets, ","), strings.Split(*srcs, ","))
	default:
		var res *result
		res, err = run(o)
		if res != nil {
			res.print(os.Stdout)
			if o.jsonOut != "" {
				b, _ := json.MarshalIndent(res, "", "  ")
				if werr := os.WriteFile(o.jsonOut, b, 0o644); werr != nil && err == nil {
					err = werr
				}
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "idlefleet:", err)
		os.Exit(1)
	}
}

// --- server process ---

type serverInfo struct {
	Target string `json:"target"`
	Debug  string `json:"debug"`
}

type serverStats struct {
	Proc       bench.ProcStats    `json:"proc"`
	Heartbeats mux.HeartbeatStats `json:"heartbeats"`
}

func serveMain(system, ip string) error {
	srv, err := bench.Serve(system, ip)
	if err != nil {
		return err
	}
	defer srv.Close()
	debugAddr, stop, err := bench.ServeDebug(func(r *http.Request) any {
		if r.URL.Query().Get("free") != "" {
			debug.FreeOSMemory() // a GC, and every free page back to the OS
		}
		return serverStats{Proc: bench.ReadProcStats(r.URL.Query().Get("gc") != ""), Heartbeats: mux.Heartbeats()}
	})
	if err != nil {
		return err
	}
	defer stop()
	if err := json.NewEncoder(os.Stdout).Encode(serverInfo{Target: srv.Targets[0], Debug: debugAddr}); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, os.Stdin) // serve until the parent closes stdin
	return nil
}

// --- client process ---

// clientReady is a client process's first line: its connections are open.
type clientReady struct {
	Held   int     `json:"held"`
	DialS  float64 `json:"dial_s"`
	Failed string  `json:"failed,omitempty"`
}

// clientDone is its last line, after the hold.
type clientDone struct {
	Calls      int                `json:"calls"`
	Errors     int                `json:"errors"`
	FirstError string             `json:"first_error,omitempty"`
	Lat        []int64            `json:"lat_ns"` // sorted
	Heartbeats mux.HeartbeatStats `json:"heartbeats"`
	OpenFDs    int                `json:"open_fds"`
	CPUNanos   int64              `json:"cpu_ns"` // CPU time used during the hold
}

func clientMain(o options, targets, srcs []string) error {
	n := o.conns
	conns := make([]bench.Conn, n)
	defer func() {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for _, c := range conns {
			if c != nil {
				sem <- struct{}{}
				wg.Go(func() { defer func() { <-sem }(); _ = c.Close() })
			}
		}
		wg.Wait()
	}()
	req := &benchv1.Payload{Body: make([]byte, bench.PayloadSize)}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	var next atomic.Int64
	var failOnce sync.Once
	var failed string
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				target := targets[i%len(targets)]
				src := srcs[(i/len(targets))%len(srcs)]
				c, err := bench.DialFrom(o.system, target, src)
				if err == nil {
					conns[i] = c
					cctx, ccancel := context.WithTimeout(ctx, 2*time.Minute)
					_, err = c.Unary(cctx, req)
					ccancel()
				}
				if err != nil {
					failOnce.Do(func() { failed = fmt.Sprintf("connection %d to %s from %s: %v", i, target, src, err); cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	out := json.NewEncoder(os.Stdout)
	if err := out.Encode(clientReady{Held: n, DialS: time.Since(start).Seconds(), Failed: failed}); err != nil || failed != "" {
		return err
	}

	// Wait for "go", sample calls until "stop" (or stdin closes).
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() && in.Text() != "go" {
	}
	base := mux.Heartbeats()
	cpu0 := bench.ReadProcStats(false).CPUNanos
	stop := make(chan struct{})
	go func() {
		for in.Scan() && in.Text() != "stop" {
		}
		close(stop)
	}()
	var done clientDone
	done.Calls, done.Errors, done.FirstError, done.Lat = sample(conns, o.rate, stop)
	hb := mux.Heartbeats()
	done.Heartbeats = mux.HeartbeatStats{PingLateness: hb.PingLateness.Sub(base.PingLateness), PongRTT: hb.PongRTT.Sub(base.PongRTT)}
	end := bench.ReadProcStats(false)
	done.OpenFDs, done.CPUNanos = end.OpenFDs, end.CPUNanos-cpu0
	if err := out.Encode(done); err != nil {
		return err
	}
	for in.Scan() { // hold the connections until stdin closes
	}
	return nil
}

// sample makes rate calls per second, each on a random connection of
// conns, until stop is closed; it returns the calls made, the failed ones,
// the first error and the latencies of the others, sorted.
func sample(conns []bench.Conn, rate float64, stop <-chan struct{}) (calls, errs int, firstErr string, lat []int64) {
	req := &benchv1.Payload{Body: make([]byte, bench.PayloadSize)}
	var mu sync.Mutex
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Duration(float64(time.Second) / max(rate, 0.1)))
	defer tick.Stop()
	for {
		select {
		case <-stop:
			wg.Wait()
			slices.Sort(lat)
			return calls, errs, firstErr, lat
		case <-tick.C:
		}
		c := conns[rand.IntN(len(conns))]
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			t0 := time.Now()
			_, err := c.Unary(ctx, req)
			d := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			calls++
			if err != nil {
				errs++
				if firstErr == "" {
					firstErr = err.Error()
				}
				return
			}
			lat = append(lat, int64(d))
		})
	}
}

// --- coordinator ---

// childEnv is set in the environment of the processes the driver starts
// (the test binary runs main when it finds it).
const childEnv = "IDLEFLEET_CHILD"

type proc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func start(args ...string) (*proc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &proc{cmd: cmd, stdin: stdin, out: bufio.NewReaderSize(stdout, 1<<20)}, nil
}

// readJSON reads the process's next line into v.
func (p *proc) readJSON(v any) error {
	line, err := p.out.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("process %d: %w", p.cmd.Process.Pid, err)
	}
	return json.Unmarshal(line, v)
}

// stop closes the process's stdin and waits for it to exit.
func (p *proc) stop() {
	_ = p.stdin.Close()
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, p.out); _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

type server struct {
	*proc
	serverInfo
}

// statsClient reads the servers' stats, one connection per request, so
// that none stays open in a server's count of sockets.
var statsClient = &http.Client{Timeout: time.Minute, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

func (s *server) stats(gc bool) (serverStats, error) {
	u := "http://" + s.Debug + "/stats"
	if gc {
		u += "?gc=1"
	}
	return s.get(u)
}

// statsFreed returns the server's stats after debug.FreeOSMemory.
func (s *server) statsFreed() (serverStats, error) {
	return s.get("http://" + s.Debug + "/stats?gc=1&free=1")
}

func (s *server) get(u string) (serverStats, error) {
	var st serverStats
	resp, err := statsClient.Get(u)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

// result is what a run measured.
type result struct {
	System        string  `json:"system"`
	Servers       int     `json:"servers"`
	ConnsPerSrv   int     `json:"conns_per_server"`
	Clients       int     `json:"client_processes"`
	DialSeconds   float64 `json:"dial_s"`
	Held          int     `json:"held"`               // server sockets after the hold, over all servers
	RSSPerConn    float64 `json:"rss_per_conn"`       // bytes, mean over the servers
	RSSFreedPer   float64 `json:"rss_freed_per_conn"` // bytes, after debug.FreeOSMemory
	RSSHoldPer    float64 `json:"rss_hold_per_conn"`  // bytes, at the end of the hold (no GC forced)
	HeapPerConn   float64 `json:"heap_per_conn"`      // bytes
	StackPerConn  float64 `json:"stack_per_conn"`     // bytes
	GoroutinesPer float64 `json:"goroutines_per_conn"`
	BaselineP50   float64 `json:"baseline_p50_us"`
	BaselineP99   float64 `json:"baseline_p99_us"`
	Hold          string  `json:"hold"`
	Calls         int     `json:"calls"`
	Errors        int     `json:"errors"`
	FirstError    string  `json:"first_error,omitempty"`
	P50, P99      float64 // µs, sampled calls during the hold
	P999, Max     float64
	OverBaseP99   float64 `json:"over_baseline_p99"` // share of sampled calls slower than the baseline p99

	ServerPings, ClientPings mux.HeartbeatStats
	ServerCPU                float64 `json:"server_cpu"` // CPUs used during the hold, all server processes together
	ClientCPU                float64 `json:"client_cpu"` // the same, client processes
	LoadAvg                  string  `json:"loadavg"`
}

func run(o options) (res *result, err error) {
	if o.clients <= 0 {
		o.clients = (o.servers*o.conns + maxPerProcess - 1) / maxPerProcess
	}
	if 100+o.clients*srcPerClient > 255 {
		return nil, errors.New("too many client processes for 127.0.0.100-254")
	}
	perClient := (o.servers*o.conns + o.clients - 1) / o.clients
	if perClient > maxPerProcess {
		return nil, fmt.Errorf("%d connections per client process: more than %d", perClient, maxPerProcess)
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "idlefleet %s: "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	var servers []*server
	var clients []*proc
	defer func() {
		for _, c := range clients {
			c.stop()
		}
		for _, s := range servers {
			s.stop()
		}
	}()
	var targets []string
	for i := range o.servers {
		p, err := start("-serve", o.system, "-ip", fmt.Sprintf("127.0.0.%d", 10+i))
		if err != nil {
			return nil, err
		}
		s := &server{proc: p}
		servers = append(servers, s)
		if err := p.readJSON(&s.serverInfo); err != nil {
			return nil, err
		}
		targets = append(targets, s.Target)
	}
	res = &result{System: o.system, Servers: o.servers, ConnsPerSrv: o.conns, Clients: o.clients, Hold: o.hold.String()}

	// The usual latency: one connection, calls one at a time, nothing else.
	if o.baseline > 0 {
		lat, err := baseline(o.system, targets[0], o.baseline, o.rate, o.baselineTime, o.settle)
		if err != nil {
			return nil, fmt.Errorf("baseline: %w", err)
		}
		res.BaselineP50, res.BaselineP99 = us(pct(lat, 50)), us(pct(lat, 99))
		logf("baseline, %d idle connections: p50 %.0f µs, p99 %.0f µs", o.baseline, res.BaselineP50, res.BaselineP99)
		time.Sleep(o.settle) // the baseline's connections close
	}
	var base []serverStats
	for _, s := range servers {
		st, err := s.stats(true)
		if err != nil {
			return nil, err
		}
		base = append(base, st)
	}

	t0 := time.Now()
	for j := range o.clients {
		var srcs []string
		for k := range srcPerClient {
			srcs = append(srcs, fmt.Sprintf("127.0.0.%d", 100+j*srcPerClient+k))
		}
		n := min(perClient, o.servers*o.conns-j*perClient)
		// Each client spreads its connections over every server, so that
		// every server gets its share from every client.
		p, err := start("-client", "-system", o.system, "-conns", strconv.Itoa(n), "-rate", strconv.FormatFloat(o.rate/float64(o.clients), 'f', -1, 64),
			"-targets", strings.Join(targets, ","), "-src", strings.Join(srcs, ","))
		if err != nil {
			return nil, err
		}
		clients = append(clients, p)
	}
	for _, c := range clients {
		var r clientReady
		if err := c.readJSON(&r); err != nil {
			return nil, err
		}
		if r.Failed != "" {
			return nil, errors.New(r.Failed)
		}
	}
	res.DialSeconds = time.Since(t0).Seconds()
	logf("%d connections open and called once in %.1f s", o.servers*o.conns, res.DialSeconds)
	time.Sleep(o.settle) // let them settle into idleness

	var after []serverStats
	for i, s := range servers {
		st, err := s.stats(true)
		if err != nil {
			return nil, err
		}
		after = append(after, st)
		held := float64(st.Proc.OpenFDs - base[i].Proc.OpenFDs)
		res.RSSPerConn += (float64(st.Proc.RSS) - float64(base[i].Proc.RSS)) / held / float64(o.servers)
		res.HeapPerConn += (float64(st.Proc.HeapAlloc) - float64(base[i].Proc.HeapAlloc)) / held / float64(o.servers)
		res.StackPerConn += (float64(st.Proc.StackInuse) - float64(base[i].Proc.StackInuse)) / held / float64(o.servers)
		res.GoroutinesPer += float64(st.Proc.Goroutines-base[i].Proc.Goroutines) / held / float64(o.servers)
	}
	heldAtStart := 0
	for i := range servers {
		heldAtStart += after[i].Proc.OpenFDs - base[i].Proc.OpenFDs
	}
	logf("%d connections held; per connection: %.1f KiB RSS, %.1f KiB heap, %.1f KiB stacks, %.2f goroutines",
		heldAtStart, res.RSSPerConn/1024, res.HeapPerConn/1024, res.StackPerConn/1024, res.GoroutinesPer)

	for i, s := range servers {
		st, err := s.statsFreed()
		if err != nil {
			return nil, err
		}
		res.RSSFreedPer += (float64(st.Proc.RSS) - float64(base[i].Proc.RSS)) / float64(after[i].Proc.OpenFDs-base[i].Proc.OpenFDs) / float64(o.servers)
	}
	logf("per connection after debug.FreeOSMemory: %.1f KiB RSS", res.RSSFreedPer/1024)

	// The hold: sampled calls, heartbeats counted.
	logf("holding for %v, %.0f sampled calls/s", o.hold, o.rate)
	var holdStart []serverStats
	for _, s := range servers {
		st, err := s.stats(false)
		if err != nil {
			return nil, err
		}
		holdStart = append(holdStart, st)
	}
	t1 := time.Now()
	for _, c := range clients {
		if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
			return nil, err
		}
	}
	time.Sleep(o.hold)
	for _, c := range clients {
		if _, err := io.WriteString(c.stdin, "stop\n"); err != nil {
			return nil, err
		}
	}
	var lat []int64
	for _, c := range clients {
		var d clientDone
		if err := c.readJSON(&d); err != nil {
			return nil, err
		}
		res.Calls += d.Calls
		res.Errors += d.Errors
		if res.FirstError == "" {
			res.FirstError = d.FirstError
		}
		lat = append(lat, d.Lat...)
		res.ClientCPU += float64(d.CPUNanos) / float64(o.hold)
		res.ClientPings = addStats(res.ClientPings, d.Heartbeats)
	}
	slices.Sort(lat)
	ds := make([]time.Duration, len(lat))
	for i, v := range lat {
		ds[i] = time.Duration(v)
	}
	res.P50, res.P99, res.P999 = us(pct(ds, 50)), us(pct(ds, 99)), us(pct(ds, 99.9))
	if len(ds) > 0 {
		res.Max = us(ds[len(ds)-1])
		slow := len(ds) - sortSearch(ds, time.Duration(res.BaselineP99*1000))
		res.OverBaseP99 = float64(slow) / float64(len(ds))
	}
	for i, s := range servers {
		st, err := s.stats(false)
		if err != nil {
			return nil, err
		}
		res.Held += st.Proc.OpenFDs - base[i].Proc.OpenFDs
		res.RSSHoldPer += (float64(st.Proc.RSS) - float64(base[i].Proc.RSS)) / float64(st.Proc.OpenFDs-base[i].Proc.OpenFDs) / float64(o.servers)
		res.ServerPings = addStats(res.ServerPings, mux.HeartbeatStats{
			PingLateness: st.Heartbeats.PingLateness.Sub(holdStart[i].Heartbeats.PingLateness),
			PongRTT:      st.Heartbeats.PongRTT.Sub(holdStart[i].Heartbeats.PongRTT),
		})
		res.ServerCPU += float64(st.Proc.CPUNanos-holdStart[i].Proc.CPUNanos) / float64(time.Since(t1))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		res.LoadAvg = strings.TrimSpace(string(b))
	}
	return res, nil
}

// sortSearch returns the number of durations in sorted ds up to d.
func sortSearch(ds []time.Duration, d time.Duration) int {
	i, _ := slices.BinarySearch(ds, d+1)
	return i
}

func addStats(a, b mux.HeartbeatStats) mux.HeartbeatStats {
	add := func(x, y mux.LatencyHistogram) mux.LatencyHistogram {
		for i := range x.Buckets {
			x.Buckets[i] += y.Buckets[i]
		}
		x.Max = max(x.Max, y.Max)
		return x
	}
	return mux.HeartbeatStats{PingLateness: add(a.PingLateness, b.PingLateness), PongRTT: add(a.PongRTT, b.PongRTT)}
}

// baseline measures the usual latency of a call on an idle connection:
// n connections to target, one call each, then calls sampled at rate on
// random ones for d, with nothing else running.
func baseline(system, target string, n int, rate float64, d, settle time.Duration) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req := &benchv1.Payload{Body: make([]byte, bench.PayloadSize)}
	conns := make([]bench.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range n {
		c, err := bench.DialFrom(system, target, "127.0.0.1")
		if err != nil {
			return nil, err
		}
		conns = append(conns, c)
		if _, err := c.Unary(ctx, req); err != nil {
			return nil, err
		}
	}
	time.Sleep(settle) // idle, as the fleet's will be
	stop := make(chan struct{})
	time.AfterFunc(d, func() { close(stop) })
	_, errs, firstErr, lat := sample(conns, rate, stop)
	if errs > 0 {
		return nil, errors.New(firstErr)
	}
	ds := make([]time.Duration, len(lat))
	for i, v := range lat {
		ds[i] = time.Duration(v)
	}
	return ds, nil
}

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func (r *result) print(w io.Writer) {
	fmt.Fprintf(w, "%s: %d server process(es) x %d connections, %d client process(es), %s (GOMAXPROCS %d), load %s\n\n",
		r.System, r.Servers, r.ConnsPerSrv, r.Clients, r.Hold, runtime.GOMAXPROCS(0), r.LoadAvg)
	fmt.Fprintf(w, "| measure | value |\n|---|---:|\n")
	row := func(k, f string, args ...any) { fmt.Fprintf(w, "| %s | "+f+" |\n", append([]any{k}, args...)...) }
	row("connections opened and called once", "%d in %.1f s", r.Servers*r.ConnsPerSrv, r.DialSeconds)
	row("connections held by the servers after the hold", "%d", r.Held)
	row("server RSS per connection (after a GC, as benchcmp measures)", "%.1f KiB", r.RSSPerConn/1024)
	row("server RSS per connection after debug.FreeOSMemory", "%.1f KiB", r.RSSFreedPer/1024)
	row("server RSS per connection at the end of the hold", "%.1f KiB", r.RSSHoldPer/1024)
	row("server Go heap per connection", "%.1f KiB", r.HeapPerConn/1024)
	row("server goroutine stacks per connection", "%.1f KiB", r.StackPerConn/1024)
	row("server goroutines per connection", "%.2f", r.GoroutinesPer)
	if r.BaselineP99 > 0 {
		row("usual latency of a call on an idle connection (sampled the same way on 100 connections before the fleet): p50 / p99", "%.0f / %.0f µs", r.BaselineP50, r.BaselineP99)
	}
	row("sampled calls during the hold (errors)", "%d (%d)", r.Calls, r.Errors)
	row("sampled calls: p50 / p99 / p99.9 / max", "%.0f / %.0f / %.0f / %.0f µs", r.P50, r.P99, r.P999, r.Max)
	row("sampled calls slower than the usual p99", "%.2f%%", 100*r.OverBaseP99)
	hb := func(name string, h mux.HeartbeatStats) {
		if h.PingLateness.Count() == 0 {
			return
		}
		row(name+" PINGs sent during the hold", "%d", h.PingLateness.Count())
		row(name+" PING lateness against schedule: p50 / p99 / p99.9 (bucket bound), max", "≤%v / ≤%v / ≤%v, %v",
			h.PingLateness.Quantile(0.5), h.PingLateness.Quantile(0.99), h.PingLateness.Quantile(0.999), h.PingLateness.Max.Round(time.Microsecond))
		row(name+" PING round trips: p50 / p99 / p99.9 (bucket bound), max", "≤%v / ≤%v / ≤%v, %v",
			h.PongRTT.Quantile(0.5), h.PongRTT.Quantile(0.99), h.PongRTT.Quantile(0.999), h.PongRTT.Max.Round(time.Microsecond))
	}
	row("CPUs used during the hold: servers / clients (2 on this machine)", "%.2f / %.2f", r.ServerCPU, r.ClientCPU)
	hb("server", r.ServerPings)
	hb("client", r.ClientPings)
	if r.FirstError != "" {
		row("first error", "%s", r.FirstError)
	}
}
