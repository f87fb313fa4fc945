// Package fleet is tether's fleet test, also runnable as a demo (go run
// ./cmd/fleetdemo in contrib/nats): three server replicas as separate OS
// processes (re-executions of the running binary, see MaybeReplica) share
// an embedded three-node NATS cluster (the idempotency store, the effects
// and the clients' dead letters live on JetStream) behind a reverse proxy
// that speaks WebSocket (nginx when it is installed, else
// net/http/httputil's ReverseProxy; the report says which ran). Clients
// make keyed unary calls (Credit, with side effects, and Put, IDEMPOTENT)
// and hold server streams while the replicas are restarted one at a time
// (SIGTERM, drain, start) and one is SIGKILLed; Run then checks that no
// call failed that a user would see fail, that no effect was applied twice
// and that every acknowledged call's effect is there, and reports latency
// during restarts against steady state and the longest time a client had
// no ready connection.
package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	tethernats "github.com/tetherrpc/tether/contrib/nats"
	"github.com/tetherrpc/tether/contrib/nats/natsembed"
	"github.com/tetherrpc/tether/dlq"
	chaosv1 "github.com/tetherrpc/tether/gen/tether/testing/chaos/v1"
)

// slowCall is how long one Credit in ten sleeps after its effect.
const slowCall = time.Second

// Config sets the size and the schedule of a run.
type Config struct {
	// Dir holds the NATS files and the proxy's configuration.
	Dir string
	// Clients is the number of clients, each with one caller and one held
	// server stream (default 50).
	Clients int
	// Interval is the pause between one client's unary calls (default 100 ms).
	Interval time.Duration
	// Steady is the load time before the first restart and after the last
	// (default 5 s).
	Steady time.Duration
	// Rounds is how many times every replica is restarted (default 1).
	Rounds int
	// MinDuration extends the run (with load and held streams) until it has
	// lasted at least this long (default 0).
	MinDuration time.Duration
	// Lease is the replicas' idempotency lease (default 2 s): a call whose
	// replica was killed after its effect is answered once it expires. The
	// store's renewals must succeed within it, so a machine too loaded to
	// run NATS smoothly (the race detector on shared CI) needs a longer one.
	Lease time.Duration
	// Log receives progress lines and the report (default io.Discard).
	Log io.Writer
}

func (c *Config) defaults() {
	if c.Clients == 0 {
		c.Clients = 50
	}
	if c.Interval == 0 {
		c.Interval = 100 * time.Millisecond
	}
	if c.Steady == 0 {
		c.Steady = 5 * time.Second
	}
	if c.Rounds == 0 {
		c.Rounds = 1
	}
	if c.Lease == 0 {
		c.Lease = defaultLease
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
}

// Report is what a run measured.
type Report struct {
	Proxy    string        // the proxy that ran: "nginx" or "httputil.ReverseProxy"
	Duration time.Duration // load time
	Restarts int           // graceful restarts (SIGTERM, drain, start)
	Kills    int           // SIGKILLs
	Calls    int           // unary calls made
	Repeats  int           // of these, Credits sent again with the same key by another client
	Failed   int           // calls that ended with an error a user sees (not parked)
	Parked   int           // calls parked in the dead-letter queue
	Replayed int           // parked calls replayed successfully at the end
	Lost     int           // acknowledged (or replayed) calls whose effect is missing
	Effects  int           // effects in the shared bucket
	Twice    int           // effects applied twice (must be 0; the bucket's create refuses a second)
	Reruns   int           // handler runs that found their key applied (a call whose replica was killed after the effect, retried once its lease expired)
	// StrayReruns counts reruns of effects that the killed replica did not
	// apply: repeats the shared idempotency store should have answered
	// (must be 0).
	StrayReruns int
	Streams     int   // server streams opened (the held ones, and their reopenings)
	StreamCut   int   // held streams that ended with an error and were reopened
	Ticks       int64 // stream messages received

	SteadyP50, SteadyP99   time.Duration // latency of calls started outside restart windows
	RestartP50, RestartP99 time.Duration // latency of calls started within one
	MaxNotReady            time.Duration // the longest time a client had no ready connection
	Errors                 []string      // the first errors seen (at most 10)
}

// String formats the report.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "proxy: %s\n", r.Proxy)
	fmt.Fprintf(&b, "load: %v, graceful restarts: %d, SIGKILLs: %d\n", r.Duration.Round(time.Second), r.Restarts, r.Kills)
	fmt.Fprintf(&b, "unary calls: %d (%d Credits also sent again by another client), failed: %d, parked: %d (replayed: %d), lost effects: %d\n", r.Calls, r.Repeats, r.Failed, r.Parked, r.Replayed, r.Lost)
	fmt.Fprintf(&b, "effects: %d, applied twice: %d, handler reruns that found their effect applied: %d (calls cut by the SIGKILL after the effect), other reruns: %d\n", r.Effects, r.Twice, r.Reruns-r.StrayReruns, r.StrayReruns)
	fmt.Fprintf(&b, "server streams: %d opened, %d cut by a restart and reopened, %d messages\n", r.Streams, r.StreamCut, r.Ticks)
	fmt.Fprintf(&b, "latency steady: p50 %v p99 %v; during restarts: p50 %v p99 %v\n", r.SteadyP50, r.SteadyP99, r.RestartP50, r.RestartP99)
	fmt.Fprintf(&b, "longest time a client had no ready connection: %v\n", r.MaxNotReady)
	for _, e := range r.Errors {
		fmt.Fprintf(&b, "error: %s\n", e)
	}
	return b.String()
}

// OK reports whether the run kept the promise: no failed call, no effect
// applied twice, no acknowledged effect lost, every parked call replayed.
func (r *Report) OK() bool {
	return r.Failed == 0 && r.Twice == 0 && r.Lost == 0 && r.StrayReruns == 0 && r.Replayed == r.Parked && r.Calls > 0
}

// replicaProc is one replica process.
type replicaProc struct {
	name, addr, urls string
	lease            time.Duration
	life             int // starts so far
	cmd              *exec.Cmd
	exited           chan struct{}
}

func (p *replicaProc) start(log io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	p.life++
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envReplica+"="+p.name, envNATS+"="+p.urls, envAddr+"="+p.addr, fmt.Sprintf("%s=%d", envLife, p.life), envLease+"="+p.lease.String())
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return err
	}
	p.cmd, p.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(p.exited) }()
	return nil
}

// ready waits until the replica's readiness endpoint answers 200.
func (p *replicaProc) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr+"/readyz", nil)
		res, err := probe.Do(req)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("replica %s not ready: %w", p.name, ctx.Err())
		case <-p.exited:
			return fmt.Errorf("replica %s exited before it was ready", p.name)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stats reads the replica's /stats endpoint.
func (p *replicaProc) stats(ctx context.Context) (replicaStats, error) {
	var st replicaStats
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr+"/stats", nil)
	res, err := probe.Do(req)
	if err != nil {
		return st, err
	}
	defer res.Body.Close()
	return st, json.NewDecoder(res.Body).Decode(&st)
}

func (p *replicaProc) stop(sig syscall.Signal) {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	<-p.exited
}

// probe is the readiness checks' HTTP client (no idle connections left).
var probe = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// window is a time span during which a replica was restarting.
type window struct{ from, to time.Time }

// call is one unary call's outcome.
type call struct {
	method, key string
	start       time.Time
	took        time.Duration
	slow        bool // asked the handler to sleep after the effect
	repeated    bool // sent again, with its key, by another client
	err         error
	parkedID    string
}

// Run runs the fleet and returns its report; an error means the run could
// not be set up (the report says whether the promise held).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	log := cfg.Log
	cluster, err := natsembed.StartCluster(3, cfg.Dir+"/nats")
	if err != nil {
		return nil, err
	}
	defer cluster.Shutdown()
	urls := cluster.URLs()
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	// Buckets first, so that the replicas open them rather than race to
	// create them.
	if _, err := tethernats.NewIdempotencyStore(ctx, js, tethernats.WithBucket(idemBucket), tethernats.WithReplicas(3)); err != nil {
		return nil, err
	}
	effects, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: effectsBucket, Replicas: 3, History: 8})
	if err != nil {
		return nil, err
	}
	letters, err := tethernats.NewDLQ(ctx, js, tethernats.WithDLQBucket(dlqBucket), tethernats.WithDLQReplicas(3))
	if err != nil {
		return nil, err
	}

	procs := make([]*replicaProc, 3)
	var backends []string
	for i := range procs {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		procs[i] = &replicaProc{name: fmt.Sprintf("r%d", i+1), addr: addr, urls: urls, lease: cfg.Lease}
		backends = append(backends, addr)
	}
	defer func() {
		for _, p := range procs {
			p.stop(syscall.SIGKILL)
		}
	}()
	for _, p := range procs {
		if err := p.start(log); err != nil {
			return nil, err
		}
	}
	for _, p := range procs {
		if err := p.ready(ctx); err != nil {
			return nil, err
		}
	}
	px, err := startProxy(ctx, cfg.Dir, backends, log)
	if err != nil {
		return nil, err
	}
	defer px.stop()
	rep := &Report{Proxy: px.Kind}
	fmt.Fprintf(log, "fleet: 3 replicas (%s) on a 3-node NATS cluster, behind %s at %s; %d clients\n", strings.Join(backends, ", "), px.Kind, px.URL, cfg.Clients)

	// Clients.
	var (
		mu       sync.Mutex
		calls    []call
		notReady time.Duration
		streams  int
		cuts     int
		ticks    int64
	)
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	clients := make([]*client.Client, cfg.Clients)
	started := time.Now()
	others := make([]chaosv1.ChaosLedgerServiceClient, cfg.Clients)
	for i := range clients {
		var down time.Time // guarded by mu
		c, err := client.New(px.URL,
			client.WithDeadLetterQueue(letters),
			client.WithStateListener(func(s client.State, _ error) {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case s == client.StateReady && !down.IsZero():
					d := time.Since(down)
					notReady = max(notReady, d)
					if d > 500*time.Millisecond {
						fmt.Fprintf(log, "fleet: client %d had no ready connection for %v from %v into the run\n", i, d.Round(time.Millisecond), down.Sub(started).Round(time.Millisecond))
					}
					down = time.Time{}
				case s != client.StateReady && s != client.StateClosed && s != client.StateIdle && down.IsZero():
					down = time.Now()
				}
			}))
		if err != nil {
			stopLoad()
			return nil, err
		}
		clients[i] = c
		others[i] = chaosv1.NewChaosLedgerServiceClient(c)
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i, c := range clients {
		lc := chaosv1.NewChaosLedgerServiceClient(c)
		wg.Add(2)
		go func() { // the caller
			defer wg.Done()
			// Spread the clients' calls over the interval.
			time.Sleep(cfg.Interval * time.Duration(i) / time.Duration(len(clients)))
			for n := 0; loadCtx.Err() == nil; n++ {
				cl := call{start: time.Now()}
				cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				if n%2 == 0 {
					cl.method, cl.key = "credit", fmt.Sprintf("c%d-%d", i, n)
					req := &chaosv1.CreditRequest{Account: "a", Amount: 1}
					if (n/2+i)%5 == 0 {
						// Slow after the effect: some are in flight when a
						// replica is killed.
						req.Fault = &chaosv1.Fault{SleepMillis: uint32(slowCall / time.Millisecond)}
						cl.slow = true
					}
					_, cl.err = lc.Credit(cctx, req, client.WithIdempotencyKey(cl.key))
					if cl.err == nil && (n/2+i)%5 == 2 {
						// The same key again from the next client (another
						// connection, most often another replica), as a user
						// whose answer was lost would: the shared store must
						// answer it without running the handler.
						_, cl.err = others[(i+1)%len(others)].Credit(cctx, &chaosv1.CreditRequest{Account: "a", Amount: 1}, client.WithIdempotencyKey(cl.key))
						cl.repeated = true
					}
				} else {
					cl.method, cl.key = "put", fmt.Sprintf("p%d-%d", i, n)
					_, cl.err = lc.Put(cctx, &chaosv1.PutRequest{Id: cl.key, Account: "a", Amount: 1}, client.WithIdempotencyKey(cl.key))
				}
				cancel()
				cl.took = time.Since(cl.start)
				var dl *client.DeadLetterError
				if errors.As(cl.err, &dl) {
					cl.parkedID = dl.ID
				}
				mu.Lock()
				calls = append(calls, cl)
				mu.Unlock()
				select {
				case <-loadCtx.Done():
				case <-time.After(cfg.Interval):
				}
			}
		}()
		go func() { // the held stream, reopened when a restart cuts it
			defer wg.Done()
			for loadCtx.Err() == nil {
				mu.Lock()
				streams++
				mu.Unlock()
				s, err := lc.Watch(loadCtx, &chaosv1.WatchRequest{Account: "a", Count: 1 << 30})
				for err == nil {
					if _, err = s.Receive(); err == nil {
						mu.Lock()
						ticks++
						mu.Unlock()
					}
				}
				if s != nil {
					s.Close()
				}
				if loadCtx.Err() != nil {
					return
				}
				mu.Lock()
				cuts++
				mu.Unlock()
			}
		}()
	}

	// The schedule: steady load, graceful restarts one at a time, one
	// SIGKILL, steady load.
	var windows []window
	var killed string // the killed replica's life, as Effect.Replica names it
	sleep := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	restart := func(p *replicaProc, sig syscall.Signal) error {
		w := window{from: time.Now()}
		p.stop(sig)
		if err := p.start(log); err != nil {
			return err
		}
		if err := p.ready(ctx); err != nil {
			return err
		}
		// Calls that start within a second of the return still meet the
		// restart (reconnections, the killed replica's leases).
		w.to = time.Now().Add(time.Second)
		windows = append(windows, w)
		fmt.Fprintf(log, "fleet: %v %s at %v: back in %v\n", sig, p.name, w.from.Sub(started).Round(time.Millisecond), time.Since(w.from).Round(time.Millisecond))
		return sleep(2 * time.Second)
	}
	runErr := func() error {
		if err := sleep(cfg.Steady); err != nil {
			return err
		}
		for range cfg.Rounds {
			for _, p := range procs {
				if err := restart(p, syscall.SIGTERM); err != nil {
					return err
				}
				rep.Restarts++
			}
		}
		// Kill the replica with the most calls running: the most side
		// effects cut between the effect and the stored result.
		victim, most := procs[0], -1
		for _, p := range procs {
			st, err := p.stats(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(log, "fleet: %s: %d connections, %d calls running, heap in use %d KiB, %d goroutines\n", p.name, st.Connections, st.ActiveStreams, st.HeapInuse>>10, st.Goroutines)
			if st.ActiveStreams > most {
				victim, most = p, st.ActiveStreams
			}
		}
		killed = fmt.Sprintf("%s/%d", victim.name, victim.life)
		if err := restart(victim, syscall.SIGKILL); err != nil {
			return err
		}
		rep.Kills++
		rest := cfg.Steady
		if d := cfg.MinDuration - time.Since(started); d > rest {
			rest = d
		}
		return sleep(rest)
	}()
	stopLoad()
	wg.Wait()
	rep.Duration = time.Since(started)
	if runErr != nil {
		return nil, runErr
	}

	// Replay what was parked, through the fleet.
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for i := range calls {
		if calls[i].parkedID == "" {
			continue
		}
		rep.Parked++
		if _, err := dlq.Replay(rctx, letters, clients[0], calls[i].parkedID); err != nil {
			rep.addError(fmt.Sprintf("replay of %s (%s): %v", calls[i].key, calls[i].parkedID, err))
			continue
		}
		rep.Replayed++
		calls[i].err = nil
	}

	// Check the effects against the calls.
	applied, by, reruns, err := readEffects(rctx, effects)
	if err != nil {
		return nil, err
	}
	rep.Effects, rep.Reruns = len(applied), len(reruns)
	for _, k := range reruns {
		if by[k] != killed {
			rep.StrayReruns++
			rep.addError(fmt.Sprintf("%s ran again, but %s applied it, not the killed %s", k, by[k], killed))
		}
	}
	for _, n := range applied {
		if n > 1 {
			rep.Twice++
		}
	}
	var steady, during []time.Duration
	for _, c := range calls {
		rep.Calls++
		if c.err != nil {
			if c.parkedID == "" {
				rep.Failed++
				rep.addError(fmt.Sprintf("%s %s: %v (code %v)", c.method, c.key, c.err, tether.CodeOf(c.err)))
			}
			continue
		}
		if applied[effectKey(c.method, c.key)] == 0 {
			rep.Lost++
			rep.addError(fmt.Sprintf("%s %s succeeded but its effect is missing", c.method, c.key))
		}
		if c.took > slowCall+time.Second {
			fmt.Fprintf(log, "fleet: %s %s took %v from %v into the run\n", c.method, c.key, c.took.Round(time.Millisecond), c.start.Sub(started).Round(time.Millisecond))
		}
		if c.repeated {
			rep.Repeats++
		}
		if c.parkedID != "" || c.slow || c.repeated {
			continue // replayed (its first latency is the parking's) or slow on purpose
		}
		in := slices.ContainsFunc(windows, func(w window) bool { return !c.start.Before(w.from) && c.start.Before(w.to) })
		if in {
			during = append(during, c.took)
		} else {
			steady = append(steady, c.took)
		}
	}
	rep.SteadyP50, rep.SteadyP99 = quantile(steady, 0.5), quantile(steady, 0.99)
	rep.RestartP50, rep.RestartP99 = quantile(during, 0.5), quantile(during, 0.99)
	rep.MaxNotReady = notReady
	rep.Streams, rep.StreamCut, rep.Ticks = streams, cuts, ticks
	return rep, nil
}

func (r *Report) addError(s string) {
	if len(r.Errors) < 10 {
		r.Errors = append(r.Errors, s)
	}
}

// readEffects reads the bucket's whole history in one pass: how many times
// each effect key was written, which replica wrote it first, and the
// effect key of every rerun.
func readEffects(ctx context.Context, kv jetstream.KeyValue) (applied map[string]int, by map[string]string, reruns []string, err error) {
	w, err := kv.WatchAll(ctx, jetstream.IncludeHistory(), jetstream.IgnoreDeletes())
	if err != nil {
		return nil, nil, nil, err
	}
	defer w.Stop()
	applied, by = map[string]int{}, map[string]string{}
	for {
		var e jetstream.KeyValueEntry
		select {
		case e = <-w.Updates():
		case <-ctx.Done():
			return nil, nil, nil, ctx.Err()
		}
		if e == nil {
			return applied, by, reruns, nil // the history is read
		}
		if k, ok := strings.CutPrefix(e.Key(), "rerun."); ok {
			reruns = append(reruns, k[:strings.LastIndexByte(k, '.')])
			continue
		}
		var eff Effect
		if err := json.Unmarshal(e.Value(), &eff); err != nil {
			return nil, nil, nil, fmt.Errorf("effect %s: %w", e.Key(), err)
		}
		if applied[e.Key()] == 0 {
			by[e.Key()] = eff.Replica
		}
		applied[e.Key()]++ // every write of the key is an application
	}
}

// quantile returns the q-quantile of ds (0 when empty).
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}
