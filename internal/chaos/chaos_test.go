package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/dlq/dlqbolt"
	chaosv1 "github.com/tetherrpc/tether/gen/tether/testing/chaos/v1"
	"github.com/tetherrpc/tether/internal/faultproxy"
	"github.com/tetherrpc/tether/server"
)

var (
	flagSeed     = flag.Uint64("chaos.seed", 0, "run only this seed (0: the fixed seeds plus one random seed)")
	flagDuration = flag.Duration("chaos.duration", 10*time.Second, "TestChaos: total load time, split over its seeds")
	flagProcDur  = flag.Duration("chaos.process.duration", 4*time.Second, "TestChaosProcess: load time")
	flagDisable  = flag.String("chaos.disable", "", "comma-separated fault kinds not to inject (e.g. abandon,kill)")
	flagHistory  = flag.Bool("chaos.history", false, "log every operation of the history")
	flagClients  = flag.Int("chaos.clients", 3, "TestChaos: in-process clients (separate client.Client values)")
	flagWorkers  = flag.Int("chaos.workers", 3, "concurrent callers per client")
	flagCache    = flag.String("chaos.cache", "seed", "idempotency cache of the server: small (evicts under load), big (never evicts in a run), or seed (drawn from the seed)")
)

// fixedSeeds run in CI on every change; one random seed runs beside them.
var fixedSeeds = []uint64{1, 2, 3}

// Heap bounds of a run (HeapInuse, from a sample every 50 ms, over the
// baseline taken before the server starts): the peak while calls and faults
// run (plus 1 KiB for each operation of the history, which the test keeps),
// and what is left after everything is closed and collected.
const (
	heapPeakBound = 256 << 20
	heapEndBound  = 32 << 20
)

func TestMain(m *testing.M) {
	switch os.Getenv("CHAOS_ROLE") {
	case "server":
		os.Exit(serverMain())
	case "client":
		os.Exit(clientMain())
	}
	goleak.VerifyTestMain(m)
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func disabled() map[string]bool {
	m := map[string]bool{}
	for _, k := range strings.Split(*flagDisable, ",") {
		if k = strings.TrimSpace(k); k != "" {
			m[k] = true
		}
	}
	return m
}

func seeds() []uint64 {
	if *flagSeed != 0 {
		return []uint64{*flagSeed}
	}
	return append(append([]uint64{}, fixedSeeds...), 1000+rand.Uint64N(1<<40))
}

// TestChaos runs the ledger with in-process clients and an in-process
// server (graceful restarts, abrupt Close and restart) under a seeded
// schedule of faults, and checks the histories against the effect log.
func TestChaos(t *testing.T) {
	ss := seeds()
	per := *flagDuration / time.Duration(len(ss))
	for _, seed := range ss {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			run(t, runConfig{seed: seed, load: per, clients: *flagClients, workers: *flagWorkers})
		})
	}
}

// TestChaosProcess runs the server as a separate process (so that it can
// be killed with SIGKILL) with a durable effect log, and one of the clients
// as a separate process with a bbolt dead-letter queue.
func TestChaosProcess(t *testing.T) {
	seed := *flagSeed
	if seed == 0 {
		seed = 7
	}
	run(t, runConfig{seed: seed, load: *flagProcDur, clients: 2, workers: *flagWorkers, serverProcess: true, clientProcess: true})
}

type runConfig struct {
	seed          uint64
	load          time.Duration
	clients       int
	workers       int
	serverProcess bool
	clientProcess bool
}

// serverRunner is the server under test, in this process or another.
type serverRunner interface {
	start(epoch int) error
	// stop stops the server: gracefully (Shutdown: drain, then close), or
	// abruptly (SIGKILL, or Close in process).
	stop(graceful bool)
	stats() (server.Stats, error)
}

type history struct {
	mu  sync.Mutex
	ops []Op
}

func (h *history) record(op Op) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

func run(t *testing.T, cfg runConfig) {
	dis := disabled()
	r := rand.New(rand.NewPCG(cfg.seed, 1))
	smallCache := r.IntN(2) == 1
	switch *flagCache {
	case "small":
		smallCache = true
	case "big":
		smallCache = false
	}
	dir := t.TempDir()
	logPath := filepath.Join(dir, "effects.log")
	addr := freeAddr(t)
	sched := Schedule(cfg.seed, cfg.load, dis)
	rerun := fmt.Sprintf("go test -race ./internal/chaos -run '%s$' -chaos.seed=%d", t.Name(), cfg.seed)
	if !strings.HasPrefix(t.Name(), "TestChaosProcess") {
		rerun = fmt.Sprintf("go test -race ./internal/chaos -run 'TestChaos$' -chaos.seed=%d -chaos.duration=%v", cfg.seed, cfg.load)
	}
	if *flagClients != 3 {
		rerun += fmt.Sprintf(" -chaos.clients=%d", *flagClients)
	}
	if *flagWorkers != 3 {
		rerun += fmt.Sprintf(" -chaos.workers=%d", *flagWorkers)
	}
	if *flagCache != "seed" {
		rerun += " -chaos.cache=" + *flagCache
	}
	if *flagDisable != "" {
		rerun += " -chaos.disable=" + *flagDisable
	}
	t.Logf("seed %d (%s), %d clients x %d workers%s, load %v, idempotency cache small=%v, %d faults scheduled",
		cfg.seed, rerun, cfg.clients, cfg.workers, map[bool]string{true: " + 1 client process", false: ""}[cfg.clientProcess], cfg.load, smallCache, len(sched))
	// The small cache: twice the callers, so that refusals (a cache full of
	// running calls) stay the exception.
	cacheKeys := 0
	if smallCache {
		cacheKeys = max(16, 2*cfg.workers*(cfg.clients+1))
	}

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)

	var srv serverRunner
	var effLog *EffectLog
	if cfg.serverProcess {
		srv = &procServer{t: t, addr: addr, logPath: logPath, cacheKeys: cacheKeys}
	} else {
		var err error
		if effLog, err = OpenEffectLog(logPath); err != nil {
			t.Fatal(err)
		}
		srv = &inprocServer{addr: addr, log: effLog, cacheKeys: cacheKeys}
	}
	epoch := 1
	if err := srv.start(epoch); err != nil {
		t.Fatal(err)
	}
	proxy, err := faultproxy.New(addr)
	if err != nil {
		t.Fatal(err)
	}

	hist := &history{}
	until := time.Now().Add(cfg.load)
	var clients []*client.Client
	var stores []*dlq.MemoryStore
	var names []string
	var wg sync.WaitGroup
	for i := range cfg.clients {
		name := fmt.Sprintf("p%d", i)
		store := dlq.NewMemoryStore()
		var opts []client.Option
		if i == 0 {
			// A client-wide policy that dead-letters: replays must still
			// never park a new copy (DELIVERY.md, InvokeRaw).
			opts = append(opts, client.WithDefaultRetryPolicy(&client.RetryPolicy{MaxAttempts: 2, InitialBackoff: 20 * time.Millisecond, DeadLetter: true}))
		}
		c, err := newClient("ws://"+proxy.Addr(), name, store, opts...)
		if err != nil {
			t.Fatal(err)
		}
		clients, stores, names = append(clients, c), append(stores, store), append(names, name)
		w := &Workload{Client: c, Name: name, Seed: cfg.seed, Workers: cfg.workers, Until: until, MaxOps: 1 << 20, Disabled: dis, Record: hist.record}
		wg.Add(1)
		go func() { defer wg.Done(); w.Run() }()
	}
	var child *clientProc
	if cfg.clientProcess {
		child = startClientProc(t, dir, "ws://"+proxy.Addr(), "q0", cfg.seed, cfg.workers, until, *flagDisable)
	}

	// Heap sampler.
	var peak atomic.Uint64
	stopSampler := make(chan struct{})
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		var ms runtime.MemStats
		for {
			select {
			case <-stopSampler:
				return
			case <-tk.C:
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
			}
		}
	}()

	// The scheduler.
	faults := map[string]int{}
	var hostileWG sync.WaitGroup
	var hostileMu sync.Mutex
	var hostileOps []Op
	hostileCodes := map[int]int{}
	start := time.Now()
	serverUp := true
	for i, ev := range sched {
		if d := time.Until(start.Add(ev.At)); d > 0 {
			time.Sleep(d)
		}
		faults[ev.Kind]++
		switch ev.Kind {
		case FaultCut:
			proxy.CutAll()
		case FaultCutOne:
			proxy.CutOne(ev.Variant)
		case FaultStall:
			proxy.Stall()
			time.Sleep(ev.For)
			proxy.Resume()
		case FaultRestart, FaultKill:
			srv.stop(ev.Kind == FaultRestart)
			time.Sleep(ev.For)
			epoch++
			if err := srv.start(epoch); err != nil {
				t.Errorf("restart: %v", err)
				serverUp = false
			}
		case FaultHostile:
			key := fmt.Sprintf("hostile-%d-%d", cfg.seed, i)
			hostileWG.Add(1)
			go func() {
				defer hostileWG.Done()
				res, err := Hostile(addr, ev.Variant, key, cfg.seed+uint64(i))
				hostileMu.Lock()
				defer hostileMu.Unlock()
				if err != nil {
					hostileCodes[-1]++ // could not connect: the server was down
					t.Logf("hostile %s: %v", HostileAttacks[ev.Variant%len(HostileAttacks)], err)
				} else {
					hostileCodes[res.CloseCode]++
					if res.Op != nil {
						hostileOps = append(hostileOps, *res.Op)
					}
				}
			}()
		}
	}
	wg.Wait()
	var childOps []Op
	if child != nil {
		childOps = child.wait(t)
	}
	hostileWG.Wait()
	proxy.Resume()
	if !serverUp {
		epoch++
		if err := srv.start(epoch); err != nil {
			t.Fatal(err)
		}
	}

	// Streams the callers dropped without Close hold stream slots until the
	// client releases them, after a garbage collection: collect now, so
	// that the replays do not wait for slots a misbehaving caller holds.
	runtime.GC()
	runtime.GC()

	// Replay every dead letter, against the healthy server.
	var replays []Replayed
	for i, c := range clients {
		replays = append(replays, replayAll(t, names[i], stores[i], c, map[bool]int{true: 4, false: 16}[smallCache])...)
	}
	if child != nil {
		replays = append(replays, child.replay(t, "ws://"+addr)...)
	}

	// No stream left open on the server: a stream the clients dropped must
	// be released too, so collect garbage while waiting.
	open := -1
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		runtime.GC()
		st, err := srv.stats()
		if err != nil {
			t.Errorf("server stats: %v", err)
			break
		}
		if open = st.ActiveStreams; open == 0 {
			break
		}
	}
	close(stopSampler)
	<-samplerDone

	for _, c := range clients {
		_ = c.Close()
	}
	srv.stop(true)
	proxy.Close()
	if effLog != nil {
		_ = effLog.Close()
	}

	effects, err := ReadEffects(logPath)
	if err != nil {
		t.Fatal(err)
	}
	ops := append(append(append([]Op{}, hist.ops...), childOps...), hostileOps...)
	// p0 has a client-wide retry policy: it retries streams too.
	violations := Check(CheckConfig{NoEviction: !smallCache, StreamRetries: map[string]bool{"p0": true}}, ops, replays, effects)
	if open > 0 {
		abandoned := 0
		for _, op := range ops {
			if op.Result == ResultAbandoned {
				abandoned++
			}
		}
		violations = append(violations, fmt.Sprintf("%d streams still open on the server 10 s after the load ended (%d streams were abandoned by their callers)", open, abandoned))
	}

	// Summary.
	t.Logf("%s", summary(ops, replays, effects, faults, hostileCodes, epoch))
	if *flagHistory {
		for _, op := range ops {
			t.Log(op)
		}
	}

	// The heap: the peak may include the history itself (about 1 KiB an
	// operation, kept for the check); after the run, with the history
	// dropped, only the baseline is left.
	nops := len(ops)
	hist.ops, childOps, hostileOps, ops, replays, effects = nil, nil, nil, nil, nil, nil
	runtime.GC()
	runtime.GC()
	var end runtime.MemStats
	runtime.ReadMemStats(&end)
	if p, bound := peak.Load(), base.HeapInuse+heapPeakBound+uint64(nops)<<10; p > bound {
		violations = append(violations, fmt.Sprintf("heap in use peaked at %d MiB, over the baseline %d MiB + %d MiB + 1 KiB for each of the %d operations", p>>20, base.HeapInuse>>20, heapPeakBound>>20, nops))
	}
	if end.HeapInuse > base.HeapInuse+heapEndBound {
		violations = append(violations, fmt.Sprintf("heap in use %d MiB after the run, over the baseline %d MiB + %d MiB", end.HeapInuse>>20, base.HeapInuse>>20, heapEndBound>>20))
	}
	t.Logf("heap in use: baseline %d MiB, peak %d MiB, after %d MiB", base.HeapInuse>>20, peak.Load()>>20, end.HeapInuse>>20)
	if len(violations) > 0 {
		shown := violations
		if len(shown) > 40 {
			shown = shown[:40]
		}
		t.Errorf("seed %d: %d violations of the delivery promise (showing %d):\n  %s\nschedule (seed %d):\n%sreplay with: %s",
			cfg.seed, len(violations), len(shown), strings.Join(shown, "\n  "), cfg.seed, FormatSchedule(sched), rerun)
	}
	// Goroutines back to the baseline: every client, server, proxy and
	// stream goroutine is gone.
	goleak.VerifyNone(t)
}

func summary(ops []Op, replays []Replayed, effects []Effect, faults map[string]int, hostileCodes map[int]int, epochs int) string {
	var b strings.Builder
	byMethod := map[string]map[string]int{}
	clientFaults := map[string]int{}
	for _, op := range ops {
		if byMethod[op.Method] == nil {
			byMethod[op.Method] = map[string]int{}
		}
		byMethod[op.Method][op.Result]++
		if op.Fault != "" {
			clientFaults[op.Fault]++
		}
	}
	fmt.Fprintf(&b, "%d calls:", len(ops))
	for _, m := range sortedKeys(byMethod) {
		fmt.Fprintf(&b, " %s %v;", m, byMethod[m])
	}
	fmt.Fprintf(&b, "\nserver faults %v (%d server epochs); client faults %v; hostile close codes %v (-1: server down)", faults, epochs, clientFaults, hostileCodes)
	rep := map[string]int{}
	for _, r := range replays {
		rep[r.Result+" "+r.Code]++
	}
	kinds := map[string]int{}
	late := 0
	for _, e := range effects {
		kinds[e.Kind]++
		if e.Late {
			late++
		}
	}
	fmt.Fprintf(&b, "\nreplays %v; effect log %v; %d lines written by the handlers of a stopped in-process server", rep, kinds, late)
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func newClient(url, name string, store dlq.Store, opts ...client.Option) (*client.Client, error) {
	return client.New(url, append([]client.Option{
		client.WithLogger(discard()),
		client.WithHandshakeHeader(http.Header{"Authorization": {"Bearer " + Token(name)}}),
		client.WithDeadLetterQueue(store),
		client.WithHeartbeat(200*time.Millisecond, 400*time.Millisecond),
		client.WithBackoff(client.BackoffConfig{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond}),
	}, opts...)...)
}

// replayAll replays every entry of a dead-letter queue, conc at a time (4
// with the small idempotency cache, which holds only about ten running
// calls and refuses more), each with a 5 s deadline: against a healthy
// server a replay is answered at once, but for the sleep its request
// carries (the parked calls are mostly the slow ones), so a replay that
// runs out of time is a finding.
func replayAll(t *testing.T, name string, store dlq.Store, inv dlq.Invoker, conc int) []Replayed {
	lctx, lcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer lcancel()
	entries, err := store.List(lctx, dlq.ListOptions{})
	if err != nil {
		t.Errorf("dead letters of %s: %v", name, err)
		return nil
	}
	// A budget for the whole queue: a minute, plus 20 ms an entry, plus
	// the sleeps the replayed requests ask the handler for, conc at a time.
	budget := time.Minute + time.Duration(len(entries))*20*time.Millisecond
	for _, e := range entries {
		budget += requestSleep(e) / time.Duration(conc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	out := make([]Replayed, len(entries))
	var wg sync.WaitGroup
	sem := make(chan struct{}, conc)
	for i, e := range entries {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r := Replayed{Client: name, ID: e.ID, Key: e.IdempotencyKey, Method: methodOf(e.Procedure), Result: ResultOK}
			if ctx.Err() != nil {
				r.Result = ResultSkipped
				out[i] = r
				return
			}
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := dlq.Replay(rctx, store, inv, e.ID)
			rcancel()
			switch {
			case err != nil && ctx.Err() != nil:
				r.Result = ResultSkipped // the budget ran out, not this replay's 5 s
			case err != nil:
				r.Result, r.Code, r.Err = ResultFail, tether.CodeOf(err).String(), err.Error()
				if c, ok := inv.(*client.Client); ok {
					st := c.Stats()
					r.Err += fmt.Sprintf(" [client %s: state %v, %d connects, %d attempts]", name, st.State, st.Connects, st.ConnectAttempts)
				}
			}
			out[i] = r
		}()
	}
	wg.Wait()
	// A replay never parks a new copy: the queue holds nothing but the
	// entries whose replay failed.
	replayed := map[string]bool{}
	for _, r := range out {
		replayed[r.ID] = true
	}
	actx, acancel := context.WithTimeout(context.Background(), 30*time.Second) // the replays may outlast lctx
	defer acancel()
	after, err := store.List(actx, dlq.ListOptions{})
	if err != nil {
		t.Errorf("dead letters of %s: %v", name, err)
	}
	for _, e := range after {
		if !replayed[e.ID] {
			out = append(out, Replayed{Client: name, ID: e.ID, Key: e.IdempotencyKey, Method: methodOf(e.Procedure), Result: ResultReparked})
		}
	}
	return out
}

// requestSleep is the sleep a dead letter's request asks the handler for
// (a Credit's fault), which its replay waits for again.
func requestSleep(e *dlq.Entry) time.Duration {
	if e.Procedure != chaosv1.ChaosLedgerServiceCreditProcedure {
		return 0
	}
	var req chaosv1.CreditRequest
	if proto.Unmarshal(e.Request, &req) != nil {
		return 0
	}
	return time.Duration(req.GetFault().GetSleepMillis()) * time.Millisecond
}

func methodOf(procedure string) string {
	return strings.ToLower(procedure[strings.LastIndex(procedure, "/")+1:])
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func listen(addr string) (net.Listener, error) {
	var err error
	for range 100 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, err
}

// inprocServer is the server in this process; its effect log outlives it,
// as a database would.
type inprocServer struct {
	addr      string
	log       *EffectLog
	cacheKeys int
	epoch     int // the running server's

	srv *server.Server
	hs  *http.Server
}

func (s *inprocServer) start(epoch int) error {
	ln, err := listen(s.addr)
	if err != nil {
		return err
	}
	s.epoch = epoch
	s.srv = NewServer(s.log, epoch, s.cacheKeys, discard())
	hs := &http.Server{Handler: s.srv}
	s.hs = hs
	go func() { _ = hs.Serve(ln) }()
	return nil
}

func (s *inprocServer) stop(graceful bool) {
	if s.srv == nil {
		return
	}
	if graceful {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.srv.Shutdown(ctx)
		cancel()
	}
	// From here the server's handlers may outlive it (Close does not wait
	// for them): what they write is late.
	s.log.Stopped(s.epoch)
	_ = s.hs.Close()
	_ = s.srv.Close()
	s.srv, s.hs = nil, nil
}

func (s *inprocServer) stats() (server.Stats, error) {
	if s.srv == nil {
		return server.Stats{}, fmt.Errorf("server down")
	}
	return s.srv.Stats(), nil
}

// procServer is the server in a child process (this test binary, re-run
// with CHAOS_ROLE=server).
type procServer struct {
	t         *testing.T
	addr      string
	logPath   string
	cacheKeys int
	cmd       *exec.Cmd
}

func (s *procServer) start(epoch int) error {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "CHAOS_ROLE=server", "CHAOS_ADDR="+s.addr, "CHAOS_LOG="+s.logPath,
		"CHAOS_EPOCH="+strconv.Itoa(epoch), "CHAOS_CACHE_KEYS="+strconv.Itoa(s.cacheKeys))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := sc.Scan() && sc.Text() == "READY"
		ready <- ok
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case ok := <-ready:
		if !ok {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return fmt.Errorf("server process did not start")
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("server process not ready after 20 s")
	}
	s.cmd = cmd
	return nil
}

func (s *procServer) stop(graceful bool) {
	if s.cmd == nil {
		return
	}
	if graceful {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
	} else {
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
	}
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
		// A race found in the server process shows in its exit code (66).
		if code := s.cmd.ProcessState.ExitCode(); graceful && code != 0 {
			s.t.Errorf("server process exited with %d after SIGTERM (66: the race detector found a race, see its output above)", code)
		}
	case <-time.After(15 * time.Second):
		s.t.Errorf("server process did not exit 15 s after SIGTERM")
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

func (s *procServer) stats() (server.Stats, error) {
	var st server.Stats
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + s.addr + "/chaos/stats")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// serverMain is the server process: it serves the ledger on CHAOS_ADDR
// with the effect log at CHAOS_LOG until SIGTERM (graceful) or SIGKILL.
func serverMain() int {
	epoch, _ := strconv.Atoi(os.Getenv("CHAOS_EPOCH"))
	log, err := OpenEffectLog(os.Getenv("CHAOS_LOG"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cacheKeys, _ := strconv.Atoi(os.Getenv("CHAOS_CACHE_KEYS"))
	srv := NewServer(log, epoch, cacheKeys, discard())
	mux := http.NewServeMux()
	mux.HandleFunc("/chaos/stats", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(srv.Stats())
	})
	mux.Handle("/", srv)
	ln, err := listen(os.Getenv("CHAOS_ADDR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	hs := &http.Server{Handler: mux}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() { _ = hs.Serve(ln) }()
	fmt.Println("READY")
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	_ = hs.Close()
	_ = srv.Close()
	_ = log.Close()
	return 0
}

// clientProc is a client in a child process (CHAOS_ROLE=client): it runs a
// Workload, writes its history as JSON lines, and keeps its dead letters in
// a bbolt file that this process replays afterwards.
type clientProc struct {
	name, history, dlqPath string
	cmd                    *exec.Cmd
	done                   chan struct{}
	until                  time.Time
}

func startClientProc(t *testing.T, dir, url, name string, seed uint64, workers int, until time.Time, disable string) *clientProc {
	p := &clientProc{name: name, history: filepath.Join(dir, name+".history"), dlqPath: filepath.Join(dir, name+".dlq"), done: make(chan struct{}), until: until}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "CHAOS_ROLE=client", "CHAOS_URL="+url, "CHAOS_NAME="+name,
		"CHAOS_SEED="+strconv.FormatUint(seed, 10), "CHAOS_WORKERS="+strconv.Itoa(workers),
		"CHAOS_UNTIL="+strconv.FormatInt(until.UnixNano(), 10), "CHAOS_HISTORY="+p.history, "CHAOS_DLQ="+p.dlqPath,
		"CHAOS_DISABLE="+disable)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.cmd = cmd
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p
}

func (p *clientProc) wait(t *testing.T) []Op {
	select {
	case <-p.done:
	case <-time.After(time.Until(p.until) + 60*time.Second):
		t.Errorf("client process %s still running 60 s after its load ended: killed", p.name)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("client process %s exited with %d", p.name, code)
	}
	f, err := os.Open(p.history)
	if err != nil {
		t.Errorf("client process history: %v", err)
		return nil
	}
	defer f.Close()
	var ops []Op
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var op Op
		if err := json.Unmarshal(sc.Bytes(), &op); err != nil {
			t.Errorf("client process history: %v", err)
			return ops
		}
		ops = append(ops, op)
	}
	return ops
}

func (p *clientProc) replay(t *testing.T, url string) []Replayed {
	store, err := dlqbolt.Open(p.dlqPath)
	if err != nil {
		t.Errorf("client process dead letters: %v", err)
		return nil
	}
	defer store.Close()
	c, err := newClient(url, p.name, dlq.NewMemoryStore())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return replayAll(t, p.name, store, c, 4)
}

// clientMain is the client process.
func clientMain() int {
	seed, _ := strconv.ParseUint(os.Getenv("CHAOS_SEED"), 10, 64)
	workers, _ := strconv.Atoi(os.Getenv("CHAOS_WORKERS"))
	untilNs, _ := strconv.ParseInt(os.Getenv("CHAOS_UNTIL"), 10, 64)
	name := os.Getenv("CHAOS_NAME")
	store, err := dlqbolt.Open(os.Getenv("CHAOS_DLQ"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer store.Close()
	c, err := newClient(os.Getenv("CHAOS_URL"), name, store)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	f, err := os.Create(os.Getenv("CHAOS_HISTORY"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer f.Close()
	dis := map[string]bool{}
	for _, k := range strings.Split(os.Getenv("CHAOS_DISABLE"), ",") {
		if k != "" {
			dis[k] = true
		}
	}
	var mu sync.Mutex
	enc := json.NewEncoder(f)
	w := &Workload{Client: c, Name: name, Seed: seed, Workers: workers, Until: time.Unix(0, untilNs), MaxOps: 1 << 20, Disabled: dis,
		Record: func(op Op) { mu.Lock(); _ = enc.Encode(op); mu.Unlock() }}
	w.Run()
	return 0
}
