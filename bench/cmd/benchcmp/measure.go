package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync"
	"time"

	"github.com/tetherrpc/tether/bench"
)

// runResult is what one timed run of a scenario's operation produced.
type runResult struct {
	units   int64           // calls, messages or round trips completed
	ops     int64           // operations (calls of op)
	elapsed time.Duration   // from the start until the last worker stopped
	lat     []time.Duration // one per op when latencies are recorded
}

func (r runResult) rate() float64 { return float64(r.units) / r.elapsed.Seconds() }

// percentile returns the p-th percentile (0..100) of the recorded latencies.
func (r runResult) percentile(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	i := int(float64(len(r.lat)-1) * p / 100)
	return r.lat[i]
}

// run calls op from workers goroutines until d has passed; op returns the
// units it completed (1 for a call, n for a stream of n messages). With
// lat (one slice per worker), each worker appends its latencies to its
// slice, left in lat: made by the caller with room enough before the
// process's counters are read, since a slice made or grown during the run
// is the harness's allocation, counted as the system's bytes per call.
func run(d time.Duration, workers int, lat [][]time.Duration, op func(worker int) (int, error)) (runResult, error) {
	type workerResult struct {
		worker     int
		units, ops int64
		lat        []time.Duration
		err        error
	}
	results := make([]workerResult, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			res := &results[w]
			res.worker = w
			recordLatency := lat != nil
			if recordLatency {
				res.lat = lat[w][:0]
			}
			for t0 := time.Now(); t0.Sub(start) < d; {
				n, err := op(w)
				t1 := time.Now()
				if err != nil {
					res.err = err
					return
				}
				if recordLatency {
					res.lat = append(res.lat, t1.Sub(t0))
				}
				res.units += int64(n)
				res.ops++
				t0 = t1
			}
		})
	}
	wg.Wait()
	out := runResult{elapsed: time.Since(start)}
	for _, r := range results {
		if r.err != nil {
			return out, r.err
		}
		out.units += r.units
		out.ops += r.ops
		if lat != nil {
			lat[r.worker] = r.lat
		}
	}
	return out, nil
}

// measured is a warm-up run and a timed run of op, with the allocations of
// client and server during the timed run, and profiles if requested.
type measured struct {
	runResult
	clientAllocs, serverAllocs float64 // allocations per unit
	clientBytes, serverBytes   float64 // bytes allocated per unit
	clientCPU, serverCPU       float64 // CPU time per unit, microseconds
	clientGCs, serverGCs       float64 // garbage collections per 1,000 units
	clientFaults, serverFaults float64 // minor page faults per unit
	// syscalls per unit: read and write, client and server
	clientReads, clientWrites, serverReads, serverWrites float64
	// otherLoad is the CPU the rest of the machine used during the timed
	// run, in CPUs (0.5 = half a CPU busy with something else on average).
	otherLoad float64
}

func (e *env) measure(srv *child, name string, workers int, recordLatency bool, op func(worker int) (int, error)) (measured, error) {
	var m measured
	warm, err := run(e.warmup, workers, nil, op)
	if err != nil {
		return m, fmt.Errorf("warm-up: %w", err)
	}
	var lat [][]time.Duration
	perWorker := 1 << 14
	if recordLatency {
		// Room for the timed run's latencies: the warm-up's rate per
		// worker, twice over (workers of one run do not all go at the
		// same pace).
		if warm.elapsed > 0 {
			perWorker = max(perWorker, int(float64(warm.ops)*2*float64(e.duration)/float64(warm.elapsed))/workers+1)
		}
		lat = make([][]time.Duration, workers)
		for w := range lat {
			lat[w] = make([]time.Duration, 0, perWorker)
		}
	}
	prof := e.startProfiles(srv, name, e.duration)
	srv0, err := srv.stats(false)
	if err != nil {
		return m, err
	}
	cli0 := bench.ReadProcStats(false)
	busy0, _ := bench.MachineBusyNanos()
	m.runResult, err = run(e.duration, workers, lat, op)
	busy1, _ := bench.MachineBusyNanos()
	cli1 := bench.ReadProcStats(false)
	srv1, serr := srv.stats(false)
	prof.stop()
	// Gathered and sorted only now: the sort of a run's latencies (0.7
	// million at bidi c=64) took 3% of the client's CPU samples inside the
	// timed window, charged to the system as CPU per call.
	grew := 0
	for _, l := range lat {
		m.lat = append(m.lat, l...)
		if cap(l) != perWorker {
			grew++
		}
	}
	if grew > 0 {
		e.logf("%s: %d workers' latency slices grew during the timed run (its bytes per call include the growth)", name, grew)
	}
	slices.Sort(m.lat)
	if err != nil {
		return m, err
	}
	if serr != nil {
		return m, serr
	}
	own := (cli1.CPUNanos - cli0.CPUNanos) + (srv1.CPUNanos - srv0.CPUNanos)
	m.otherLoad = max(0, float64(busy1-busy0-own)/float64(m.elapsed))
	if u := float64(m.units); u > 0 {
		m.clientAllocs = float64(cli1.Mallocs-cli0.Mallocs) / u
		m.clientBytes = float64(cli1.TotalAlloc-cli0.TotalAlloc) / u
		m.serverAllocs = float64(srv1.Mallocs-srv0.Mallocs) / u
		m.serverBytes = float64(srv1.TotalAlloc-srv0.TotalAlloc) / u
		m.clientCPU = float64(cli1.CPUNanos-cli0.CPUNanos) / 1e3 / u
		m.serverCPU = float64(srv1.CPUNanos-srv0.CPUNanos) / 1e3 / u
		m.clientGCs = float64(cli1.NumGC-cli0.NumGC) * 1e3 / u
		m.serverGCs = float64(srv1.NumGC-srv0.NumGC) * 1e3 / u
		m.clientFaults = float64(cli1.MinorFaults-cli0.MinorFaults) / u
		m.serverFaults = float64(srv1.MinorFaults-srv0.MinorFaults) / u
		m.clientReads = float64(cli1.ReadSyscalls-cli0.ReadSyscalls) / u
		m.clientWrites = float64(cli1.WriteSyscalls-cli0.WriteSyscalls) / u
		m.serverReads = float64(srv1.ReadSyscalls-srv0.ReadSyscalls) / u
		m.serverWrites = float64(srv1.WriteSyscalls-srv0.WriteSyscalls) / u
	}
	return m, nil
}

// profiles collects CPU and allocation profiles of both processes for the
// timed run, into -profile DIR as <scenario>-<system>-{client,server}-*.pprof.
// The allocation profiles are cumulative; compare them with their -base
// files: go tool pprof -sample_index=alloc_space -base X-allocs-base.pprof X-allocs.pprof
type profiles struct {
	e      *env
	srv    *child
	prefix string
	cpu    *os.File
	done   chan error
}

func (e *env) startProfiles(srv *child, name string, d time.Duration) *profiles {
	if e.profileDir == "" {
		return nil
	}
	p := &profiles{e: e, srv: srv, prefix: filepath.Join(e.profileDir, name+"-"+srv.System), done: make(chan error, 1)}
	p.writeAllocs("allocs-base")
	secs := int((d + time.Second - 1) / time.Second)
	go func() {
		b, err := srv.get(fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), d+time.Minute)
		if err == nil {
			err = os.WriteFile(p.prefix+"-server-cpu.pprof", b, 0o644)
		}
		p.done <- err
	}()
	f, err := os.Create(p.prefix + "-client-cpu.pprof")
	if err == nil {
		if err = pprof.StartCPUProfile(f); err != nil {
			f.Close()
		} else {
			p.cpu = f
		}
	}
	if err != nil {
		e.logf("client CPU profile: %v", err)
	}
	return p
}

func (p *profiles) writeAllocs(suffix string) {
	if f, err := os.Create(p.prefix + "-client-" + suffix + ".pprof"); err == nil {
		_ = pprof.Lookup("allocs").WriteTo(f, 0)
		f.Close()
	}
	if b, err := p.srv.get("/debug/pprof/allocs", time.Minute); err == nil {
		_ = os.WriteFile(p.prefix+"-server-"+suffix+".pprof", b, 0o644)
	} else {
		p.e.logf("server allocs profile: %v", err)
	}
}

func (p *profiles) stop() {
	if p == nil {
		return
	}
	if p.cpu != nil {
		pprof.StopCPUProfile()
		p.cpu.Close()
	}
	if err := <-p.done; err != nil {
		p.e.logf("server CPU profile: %v", err)
	}
	p.writeAllocs("allocs")
}

// saveServerProfile writes one of the server's named profiles (heap,
// goroutine, ...) into -profile DIR as <scenario>-<system>-server-<name>.pprof.
func (e *env) saveServerProfile(srv *child, scenario, name string) {
	b, err := srv.get("/debug/pprof/"+name, time.Minute)
	if err == nil {
		err = os.WriteFile(filepath.Join(e.profileDir, scenario+"-"+srv.System+"-server-"+name+".pprof"), b, 0o644)
	}
	if err != nil {
		e.logf("server %s profile: %v", name, err)
	}
}
