package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetherrpc/tether/bench"
)

// The push-fleet scenario: many connections, each making one small unary
// call every -fleet-interval, the way a fleet of devices reports in. What
// counts is the server's CPU per call and the latency a device sees, not
// throughput. The connections live in -fleet-procs client processes
// (benchcmp re-executes itself with -fleet-client), so that no process holds
// more than 15,000 sockets: every process here is capped at 20,000 open
// files. The server listens on one 127.0.0.x address per 15,000 connections
// (tether's client has no dialer option to pick a source address, so the
// destination addresses spread the connections over ephemeral port ranges
// instead).

// fdReserve is what a server process needs in open files besides its
// connections: listeners, the debug endpoint, the runtime's own.
const fdReserve = 100

// fleetConfig is the push-fleet scenario's set-up.
type fleetConfig struct {
	conns    int           // connections in all
	procs    int           // client processes (0: one per 15,000 connections)
	interval time.Duration // between two calls of one connection
	duration time.Duration // timed run
}

// lateAfter is how far behind its schedule a call may start before it
// counts as late: a client process that cannot keep up shows here.
const lateAfter = 100 * time.Millisecond

// fleetReady is the first line a fleet client prints: its connections are
// open (each after one call) or Err says why not.
type fleetReady struct {
	Conns int    `json:"conns"`
	Err   string `json:"err,omitempty"`
}

// fleetResult is the second line a fleet client prints, after the run.
type fleetResult struct {
	Calls    int64   `json:"calls"`
	Errors   int64   `json:"errors"`
	Late     int64   `json:"late"`
	LatNanos []int64 `json:"lat_ns"`
	CPUNanos int64   `json:"cpu_ns"` // the client process's CPU during the run
	FirstErr string  `json:"first_err,omitempty"`
}

// runFleetClient is a fleet client process's main: it opens cfg.conns
// connections to targets, collects its garbage, prints fleetReady, waits
// for a line on stdin,
// runs the schedule, prints fleetResult and closes its connections when
// stdin closes.
func runFleetClient(sys string, targets []string, cfg fleetConfig) error {
	out := json.NewEncoder(os.Stdout)
	conns, err := openFleet(sys, targets, cfg.conns)
	if err != nil {
		_ = out.Encode(fleetReady{Err: err.Error()})
		return err
	}
	defer closeAll(conns)
	// The set-up's garbage collected before the run, as testing.B does
	// before it times: a process of 10,000 connections otherwise ran its
	// first large collection (a heap of ~110 MB, a 173 ms mark phase with
	// 156 ms of assists) in the run's first seconds, and whether it fell
	// in the window decided the late share and the p99 of the run
	// (docs/benchmarks/HISTORY.md, "The harness: the push fleet's
	// collections").
	runtime.GC()
	if err := out.Encode(fleetReady{Conns: len(conns)}); err != nil {
		return err
	}
	in := bufio.NewReader(os.Stdin)
	if _, err := in.ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for go: %w", err)
	}
	if err := out.Encode(runFleet(conns, cfg)); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, in)
	return nil
}

// openFleet opens n connections, 32 at a time, each after one unary call.
func openFleet(sys string, targets []string, n int) ([]bench.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conns := make([]bench.Conn, n)
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			req := payload(bench.PayloadSize)
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				// A connection that is refused keeps retrying: give up on it
				// after a minute rather than the whole set-up's five.
				cctx, ccancel := context.WithTimeout(ctx, time.Minute)
				c, err := bench.Dial(cctx, sys, targets[i%len(targets)], true)
				if err == nil {
					conns[i] = c
					_, err = c.Unary(cctx, req)
				}
				ccancel()
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("connection %d: %w", i, err); cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		var open []bench.Conn
		for _, c := range conns {
			if c != nil {
				open = append(open, c)
			}
		}
		closeAll(open)
		return nil, firstErr
	}
	return conns, nil
}

// runFleet makes every connection call once per cfg.interval for
// cfg.duration, the connections' schedules spread evenly over an interval.
func runFleet(conns []bench.Conn, cfg fleetConfig) fleetResult {
	cpu0 := bench.ReadProcStats(false).CPUNanos
	type connResult struct {
		calls, errs, late int64
		lat               []int64
		err               error
	}
	results := make([]connResult, len(conns))
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			r := &results[i]
			req := payload(bench.PayloadSize)
			offset := time.Duration(i) * cfg.interval / time.Duration(len(conns))
			for k := time.Duration(0); ; k++ {
				at := start.Add(offset + k*cfg.interval)
				if at.Sub(start) >= cfg.duration {
					return
				}
				time.Sleep(time.Until(at))
				t0 := time.Now()
				if t0.Sub(at) > lateAfter {
					r.late++
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := c.Unary(ctx, req)
				cancel()
				r.calls++
				if err != nil {
					r.errs++
					if r.err == nil {
						r.err = err
					}
					continue
				}
				r.lat = append(r.lat, int64(time.Since(t0)))
			}
		})
	}
	wg.Wait()
	var res fleetResult
	res.CPUNanos = bench.ReadProcStats(false).CPUNanos - cpu0 // before the harness's own gathering
	for _, r := range results {
		res.Calls += r.calls
		res.Errors += r.errs
		res.Late += r.late
		res.LatNanos = append(res.LatNanos, r.lat...)
		if r.err != nil && res.FirstErr == "" {
			res.FirstErr = r.err.Error()
		}
	}
	return res
}

// fleetProc is a fleet client process, seen from the parent.
type fleetProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func (p *fleetProc) stop() {
	_ = p.stdin.Close()
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// readJSON reads one JSON line of p into v, within timeout.
func (p *fleetProc) readJSON(v any, timeout time.Duration) error {
	type line struct {
		b   []byte
		err error
	}
	ch := make(chan line, 1)
	go func() {
		b, err := p.out.ReadBytes('\n')
		ch <- line{b, err}
	}()
	select {
	case l := <-ch:
		if l.err != nil {
			return l.err
		}
		return json.Unmarshal(l.b, v)
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		return errors.New("fleet client process timed out")
	}
}

func startFleetProc(sys string, targets []string, cfg fleetConfig, conns int) (*fleetProc, error) {
	cmd, stdin, stdout, err := startSelf("-fleet-client", sys, "-fleet-targets", strings.Join(targets, ","),
		"-fleet-conns", strconv.Itoa(conns), "-fleet-interval", cfg.interval.String(),
		"-fleet-duration", cfg.duration.String())
	if err != nil {
		return nil, err
	}
	return &fleetProc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}, nil
}

// pushFleet runs the push-fleet scenario against srv.
func (e *env) pushFleet(sys string, srv *child) (metrics, error) {
	cfg := e.fleet
	// The server holds every connection in one process.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && uint64(cfg.conns)+fdReserve > lim.Cur {
		return nil, fmt.Errorf("%d connections need about %d open files in the server process; the cap is %d", cfg.conns, uint64(cfg.conns)+fdReserve, lim.Cur)
	}
	procs := cfg.procs
	if procs <= 0 {
		procs = 1 + (cfg.conns-1)/15000
	}
	var ps []*fleetProc
	defer func() {
		var wg sync.WaitGroup
		for _, p := range ps {
			wg.Go(p.stop)
		}
		wg.Wait()
	}()
	base, err := srv.stats(false)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	for i := range procs {
		share := cfg.conns / procs
		if i < cfg.conns%procs {
			share++
		}
		p, err := startFleetProc(sys, srv.Targets, cfg, share)
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	for _, p := range ps {
		var r fleetReady
		if err := p.readJSON(&r, 6*time.Minute); err != nil {
			return nil, fmt.Errorf("fleet client: %w", err)
		}
		if r.Err != "" {
			return nil, fmt.Errorf("fleet client: %s", r.Err)
		}
	}
	setup := time.Since(t0)
	e.logf("%s: %d connections in %d processes open in %v", sys, cfg.conns, procs, setup.Round(time.Millisecond))

	// With -profile: the server's CPU and allocation profiles of the timed
	// run (the "client" ones are of this process, which only waits), taken
	// outside the stats' bracket as measure does.
	// The server collects its set-up's garbage too (stats(true): two
	// collections, finished when it answers), as every fleet client
	// process did before it reported ready.
	if _, err := srv.stats(true); err != nil {
		return nil, err
	}
	prof := e.startProfiles(srv, "push-fleet", cfg.duration)
	srv0, err := srv.stats(false)
	if err != nil {
		return nil, err
	}
	busy0, _ := bench.MachineBusyNanos()
	start := time.Now()
	for _, p := range ps {
		if _, err := io.WriteString(p.stdin, "go\n"); err != nil {
			return nil, err
		}
	}
	var all fleetResult
	for _, p := range ps {
		var r fleetResult
		if err := p.readJSON(&r, cfg.duration+5*time.Minute); err != nil {
			return nil, fmt.Errorf("fleet client: %w", err)
		}
		all.Calls += r.Calls
		all.Errors += r.Errors
		all.Late += r.Late
		all.CPUNanos += r.CPUNanos
		all.LatNanos = append(all.LatNanos, r.LatNanos...)
		if all.FirstErr == "" {
			all.FirstErr = r.FirstErr
		}
	}
	elapsed := time.Since(start)
	busy1, _ := bench.MachineBusyNanos()
	srv1, err := srv.stats(false)
	prof.stop()
	if err != nil {
		return nil, err
	}
	if all.Calls == all.Errors {
		return nil, fmt.Errorf("none of %d calls succeeded, first error: %s", all.Calls, all.FirstErr)
	}
	if all.Errors > 0 {
		// A saturated system fails calls (10 s timeout): the table shows
		// the share; the latencies are those of the calls that succeeded.
		e.logf("%s: %d of %d calls failed, first: %s", sys, all.Errors, all.Calls, all.FirstErr)
	}
	res := runResult{units: all.Calls - all.Errors, elapsed: elapsed}
	for _, ns := range all.LatNanos {
		res.lat = append(res.lat, time.Duration(ns))
	}
	slices.Sort(res.lat)
	calls := float64(all.Calls)
	srvCPU := srv1.CPUNanos - srv0.CPUNanos
	return metrics{
		mRate:      res.rate(),
		mP50:       us(res.percentile(50)),
		mP99:       us(res.percentile(99)),
		mSrvCPU:    float64(srvCPU) / 1e3 / calls,
		mCliCPU:    float64(all.CPUNanos) / 1e3 / calls,
		mSrvAllocs: float64(srv1.Mallocs-srv0.Mallocs) / calls,
		mLate:      float64(all.Late) / calls,
		mFailed:    float64(all.Errors) / calls,
		mHeld:      float64(srv1.OpenFDs - base.OpenFDs),
		mSetupRate: float64(cfg.conns) / setup.Seconds(),
		mOtherLoad: max(0, float64(busy1-busy0-srvCPU-all.CPUNanos)/float64(elapsed)),
	}, nil
}
