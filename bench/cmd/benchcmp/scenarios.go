package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether/bench"
	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
)

// metrics are one scenario's results for one system, by metric name.
type metrics map[string]float64

// Metric names.
const (
	mRate       = "rate"        // calls, messages or round trips per second
	mMBps       = "mbps"        // payload MB/s (10^6 bytes)
	mP50        = "p50"         // latency, microseconds
	mP99        = "p99"         // latency, microseconds
	mCliAllocs  = "cli_allocs"  // client allocations per unit
	mSrvAllocs  = "srv_allocs"  // server allocations per unit
	mCliBytes   = "cli_bytes"   // client bytes allocated per unit
	mSrvBytes   = "srv_bytes"   // server bytes allocated per unit
	mHeld       = "held"        // idle connections the server held
	mRSSPer     = "rss_per"     // server RSS per idle connection, bytes
	mHeapPer    = "heap_per"    // server live Go heap per idle connection, bytes
	mStackPer   = "stack_per"   // server goroutine stacks per idle connection, bytes
	mGoroutines = "goroutines"  // server goroutines per idle connection
	mSetupP50   = "setup_p50"   // connection set-up latency, microseconds
	mCliMemPer  = "cli_mem_per" // client live Go heap and stacks per idle connection, bytes
	mCliCPU     = "cli_cpu"     // client CPU time per unit, microseconds
	mCliGCs     = "cli_gcs"     // client garbage collections per 1,000 units
	mSrvGCs     = "srv_gcs"     // server garbage collections per 1,000 units
	mCliFaults  = "cli_faults"  // client minor page faults per unit
	mSrvFaults  = "srv_faults"  // server minor page faults per unit
	mSrvCPU     = "srv_cpu"     // server CPU time per unit, microseconds
	mOtherLoad  = "other_load"  // CPUs used by other processes during the timed run
	mCliReads   = "cli_reads"   // client read syscalls per unit
	mCliWrites  = "cli_writes"  // client write syscalls per unit
	mSrvReads   = "srv_reads"   // server read syscalls per unit
	mSrvWrites  = "srv_writes"  // server write syscalls per unit
	mConns      = "conns"       // network connections the client opened
	mSetupRate  = "setup_rate"  // push-fleet connections opened per second, each with its first call
	mFailed     = "failed"      // push-fleet calls that failed (10 s timeout), share of all
	mLate       = "late"        // push-fleet calls started over 100 ms late, share of all
)

// scenario is one measurement, run once per system.
type scenario struct {
	name    string
	systems []string // nil: every RPC system
	kind    string   // the calls it makes (bench.Kind*), for bench.Unsupported; "" for unary calls only
	run     func(e *env, sys string, srv *child) (metrics, error)
	ips     func(e *env) int // loopback addresses the server listens on (default 1)
}

var rpcSystems = bench.RPCSystems

func scenarios() []scenario {
	return []scenario{
		{name: "unary-c1", kind: bench.KindUnary, run: func(e *env, sys string, srv *child) (metrics, error) {
			return e.unary(sys, srv, "unary-c1", 1, 1)
		}},
		{name: "unary-c64", kind: bench.KindUnary, run: func(e *env, sys string, srv *child) (metrics, error) {
			return e.unary(sys, srv, "unary-c64", 1, 64)
		}},
		{name: "unary-c64-deadline", kind: bench.KindUnary, run: func(e *env, sys string, srv *child) (metrics, error) {
			return e.unaryWith(sys, srv, "unary-c64-deadline", 1, 64, time.Hour)
		}},
		{name: "unary-c64-8conns", kind: bench.KindUnary, run: func(e *env, sys string, srv *child) (metrics, error) {
			return e.unary(sys, srv, "unary-c64-8conns", 8, 64)
		}},
		{name: "stream-64B", kind: bench.KindServerStream, run: func(e *env, sys string, srv *child) (metrics, error) {
			return e.serverStream(sys, srv, "stream-64B", 64, 20000)
		}},
		{name: "stream-1KiB", kind: bench.KindServerStream, run: func(e *env, sys string, srv *child) (metrics, error) {
			return e.serverStream(sys, srv, "stream-1KiB", 1024, 5000)
		}},
		{name: "stream-64KiB", kind: bench.KindServerStream, run: func(e *env, sys string, srv *child) (metrics, error) {
			return e.serverStream(sys, srv, "stream-64KiB", 64<<10, 200)
		}},
		{name: "upload-64KiB", kind: bench.KindClientStream, run: func(e *env, sys string, srv *child) (metrics, error) {
			return e.clientStream(sys, srv, "upload-64KiB", 64<<10, 200)
		}},
		{name: "bidi-c1", kind: bench.KindBidi, run: func(e *env, sys string, srv *child) (metrics, error) {
			return e.bidi(sys, srv, "bidi-c1", 1)
		}},
		{name: "bidi-c64", kind: bench.KindBidi, run: func(e *env, sys string, srv *child) (metrics, error) {
			return e.bidi(sys, srv, "bidi-c64", 64)
		}},
		{name: "idle", run: (*env).idle, ips: func(e *env) int {
			if e.idleIPs > 0 {
				return e.idleIPs
			}
			return 1 + (e.idleConns-1)/15000 // an ephemeral port range holds ~28k
		}},
		{name: "setup", kind: bench.KindUnary, run: (*env).setup},
		{name: "push-fleet", kind: bench.KindUnary, run: (*env).pushFleet, ips: func(e *env) int {
			return 1 + (e.fleet.conns-1)/15000
		}},
		{name: "raw-c1", systems: []string{bench.Raw}, run: func(e *env, _ string, srv *child) (metrics, error) {
			return e.rawPingPong(srv)
		}},
		{name: "raw-pipelined", systems: []string{bench.Raw}, run: func(e *env, _ string, srv *child) (metrics, error) {
			return e.rawPipelined(srv, 64)
		}},
		{name: "raw-stream-1KiB", systems: []string{bench.Raw}, run: func(e *env, _ string, srv *child) (metrics, error) {
			return e.rawStream(srv, "raw-stream-1KiB", 1024, 5000)
		}},
		{name: "raw-stream-64KiB", systems: []string{bench.Raw}, run: func(e *env, _ string, srv *child) (metrics, error) {
			return e.rawStream(srv, "raw-stream-64KiB", 64<<10, 200)
		}},
		{name: "raw-upload-64KiB", systems: []string{bench.Raw}, run: func(e *env, _ string, srv *child) (metrics, error) {
			return e.rawUpload(srv, "raw-upload-64KiB", 64<<10, 200)
		}},
		{name: "raw-mux-bidi-c64", systems: []string{bench.Raw}, run: func(e *env, _ string, srv *child) (metrics, error) {
			return e.rawMuxBidi(srv, "raw-mux-bidi-c64", 64)
		}},
	}
}

func (e *env) dial(sys string, srv *child, n int) ([]bench.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conns := make([]bench.Conn, 0, n)
	for i := range n {
		c, err := bench.Dial(ctx, sys, srv.Targets[i%len(srv.Targets)], true)
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// dialed counts the network connections conns opened.
func dialed(conns []bench.Conn) float64 {
	var n int64
	for _, c := range conns {
		n += bench.Dialed(c)
	}
	return float64(n)
}

// closeAll closes connections, 64 at a time.
func closeAll(conns []bench.Conn) {
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, c := range conns {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_ = c.Close()
		})
	}
	wg.Wait()
}

func payload(size int) *benchv1.Payload { return &benchv1.Payload{Body: make([]byte, size)} }

func latencyMetrics(m measured) metrics {
	return metrics{
		mRate:      m.rate(),
		mP50:       us(m.percentile(50)),
		mP99:       us(m.percentile(99)),
		mCliAllocs: m.clientAllocs,
		mSrvAllocs: m.serverAllocs,
		mCliBytes:  m.clientBytes,
		mSrvBytes:  m.serverBytes,
		mCliCPU:    m.clientCPU,
		mSrvCPU:    m.serverCPU,
		mCliGCs:    m.clientGCs,
		mSrvGCs:    m.serverGCs,
		mCliFaults: m.clientFaults,
		mSrvFaults: m.serverFaults,
		mOtherLoad: m.otherLoad,
		mCliReads:  m.clientReads,
		mCliWrites: m.clientWrites,
		mSrvReads:  m.serverReads,
		mSrvWrites: m.serverWrites,
	}
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// unary: workers goroutines make unary calls with a 16-byte body over nConns
// connections.
func (e *env) unary(sys string, srv *child, name string, nConns, workers int) (metrics, error) {
	return e.unaryWith(sys, srv, name, nConns, workers, 0)
}

// unaryWith is unary with a deadline of timeout on every call's context (0:
// none), as gRPC's guidance asks of every call: each system propagates it
// to its server as it does (a timer per call on both ends for most).
func (e *env) unaryWith(sys string, srv *child, name string, nConns, workers int, timeout time.Duration) (metrics, error) {
	conns, err := e.dial(sys, srv, nConns)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	reqs := make([]*benchv1.Payload, workers)
	for i := range reqs {
		reqs[i] = payload(bench.PayloadSize)
	}
	ctx := context.Background()
	m, err := e.measure(srv, name, workers, true, func(w int) (int, error) {
		ctx := ctx
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		_, err := conns[w%nConns].Unary(ctx, reqs[w])
		return 1, err
	})
	if err != nil {
		return nil, err
	}
	mt := latencyMetrics(m)
	mt[mConns] = dialed(conns)
	return mt, nil
}

// serverStream: one connection, server-stream calls one after the other,
// each asking for count payloads of size bytes.
func (e *env) serverStream(sys string, srv *child, name string, size, count int) (metrics, error) {
	req := &benchv1.StreamRequest{Count: uint32(count), Size: uint32(size)}
	return e.streamCalls(sys, srv, name, size, count, func(ctx context.Context, c bench.Conn) (int, error) {
		return c.ServerStream(ctx, req)
	})
}

// clientStream: one connection, client-stream calls one after the other,
// each sending count payloads of size bytes (the server counts them).
func (e *env) clientStream(sys string, srv *child, name string, size, count int) (metrics, error) {
	msg := payload(size)
	return e.streamCalls(sys, srv, name, size, count, func(ctx context.Context, c bench.Conn) (int, error) {
		return c.ClientStream(ctx, msg, count)
	})
}

// streamCalls measures calls that each move count payloads of size bytes
// one way over one connection, one call at a time: call makes one and
// returns how many payloads arrived.
func (e *env) streamCalls(sys string, srv *child, name string, size, count int, call func(context.Context, bench.Conn) (int, error)) (metrics, error) {
	conns, err := e.dial(sys, srv, 1)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	ctx := context.Background()
	m, err := e.measure(srv, name, 1, false, func(int) (int, error) {
		n, err := call(ctx, conns[0])
		if err == nil && n != count {
			err = fmt.Errorf("%d messages arrived, want %d", n, count)
		}
		return n, err
	})
	if err != nil {
		return nil, err
	}
	mt := streamMetrics(m, size)
	mt[mConns] = dialed(conns)
	return mt, nil
}

// streamMetrics is what a streaming run reports: payload MB/s one way
// besides the per-message costs; no latencies (one call is many messages).
func streamMetrics(m measured, size int) metrics {
	mt := latencyMetrics(m)
	mt[mMBps] = m.rate() * float64(size) / 1e6
	delete(mt, mP50)
	delete(mt, mP99)
	return mt
}

// bidi: workers bidirectional streams on one connection, each sending a
// 16-byte body and waiting for its echo.
func (e *env) bidi(sys string, srv *child, name string, workers int) (metrics, error) {
	conns, err := e.dial(sys, srv, 1)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	ctx := context.Background()
	streams := make([]bench.BidiStream, workers)
	defer func() {
		for _, s := range streams {
			if s != nil {
				_ = s.Close()
			}
		}
	}()
	for i := range streams {
		if streams[i], err = conns[0].Bidi(ctx); err != nil {
			return nil, err
		}
	}
	mt, err := e.measureBidi(srv, name, streams)
	if err != nil {
		return nil, err
	}
	mt[mConns] = dialed(conns)
	return mt, nil
}

// measureBidi times round trips on streams, a worker each sending a
// 16-byte body and waiting for its echo.
func (e *env) measureBidi(srv *child, name string, streams []bench.BidiStream) (metrics, error) {
	reqs := make([]*benchv1.Payload, len(streams))
	for i := range reqs {
		reqs[i] = payload(bench.PayloadSize)
	}
	m, err := e.measure(srv, name, len(streams), true, func(w int) (int, error) {
		if err := streams[w].Send(reqs[w]); err != nil {
			return 0, err
		}
		_, err := streams[w].Recv()
		return 1, err
	})
	if err != nil {
		return nil, err
	}
	return latencyMetrics(m), nil
}

// rawMuxBidi is bidi on the minimal multiplexer (bench.RawMuxConn): workers
// streams on one connection, each sending a 16-byte message and waiting
// for its echo, measured as the bidi scenarios are.
func (e *env) rawMuxBidi(srv *child, name string, workers int) (metrics, error) {
	conn, err := bench.DialRawMux(context.Background(), bench.RawMuxURL(srv.Targets[0]))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	streams := make([]bench.BidiStream, workers)
	for i := range streams {
		streams[i] = conn.Bidi()
	}
	return e.measureBidi(srv, name, streams)
}

// idle: e.idleConns connections, each after one unary call, held open
// while the server's memory is measured.
func (e *env) idle(sys string, srv *child) (metrics, error) {
	base, err := srv.stats(true)
	if err != nil {
		return nil, err
	}
	cliBase := bench.ReadProcStats(true)
	n := e.idleConns
	conns := make([]bench.Conn, n)
	defer func() {
		var open []bench.Conn
		for _, c := range conns {
			if c != nil {
				open = append(open, c)
			}
		}
		closeAll(open)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range 32 {
		wg.Go(func() {
			req := payload(bench.PayloadSize)
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := bench.Dial(ctx, sys, srv.Targets[i%len(srv.Targets)], true)
				if err == nil {
					conns[i] = c
					_, err = c.Unary(ctx, req)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("connection %d: %w", i, err); cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	e.logf("%s: %d connections open in %v", sys, n, time.Since(start).Round(time.Millisecond))
	time.Sleep(time.Second) // let the connections settle into idleness
	after, err := srv.stats(true)
	if err != nil {
		return nil, err
	}
	cliAfter := bench.ReadProcStats(true)
	if e.profileDir != "" {
		e.saveServerProfile(srv, "idle", "heap")
		e.saveServerProfile(srv, "idle", "goroutine")
	}
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
	return metrics{
		mHeld:       float64(after.OpenFDs - base.OpenFDs),
		mRSSPer:     per(after.RSS, base.RSS),
		mHeapPer:    per(after.HeapAlloc, base.HeapAlloc),
		mStackPer:   per(after.StackInuse, base.StackInuse),
		mGoroutines: float64(after.Goroutines-base.Goroutines) / float64(n),
		mCliMemPer:  per(cliAfter.HeapAlloc+cliAfter.StackInuse, cliBase.HeapAlloc+cliBase.StackInuse),
	}, nil
}

// setup: e.setupWorkers goroutines each connect, make one unary call and
// close, over and over. The rate counts completed set-ups per second; the
// latency is from the start of the connection to the end of its first call.
// CPU and allocations per set-up are both processes', Close included.
func (e *env) setup(sys string, srv *child) (metrics, error) {
	req := payload(bench.PayloadSize)
	// Time the set-up alone for the latency, the whole loop for the rate;
	// the warm-up's latencies are dropped afterwards (by start time).
	type sample struct {
		start time.Time
		d     time.Duration
	}
	var mu sync.Mutex
	var samples []sample
	m, err := e.measure(srv, "setup", e.setupWorkers, false, func(int) (int, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		t0 := time.Now()
		c, err := bench.Dial(ctx, sys, srv.Targets[0], false)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		if _, err = c.Unary(ctx, req); err != nil {
			return 0, err
		}
		d := time.Since(t0)
		mu.Lock()
		samples = append(samples, sample{t0, d})
		mu.Unlock()
		return 1, nil
	})
	if err != nil {
		return nil, err
	}
	timed := time.Now().Add(-m.elapsed)
	for _, s := range samples {
		if !s.start.Before(timed) {
			m.lat = append(m.lat, s.d)
		}
	}
	slices.Sort(m.lat)
	return metrics{
		mRate: m.rate(), mSetupP50: us(m.percentile(50)),
		mCliCPU: m.clientCPU, mSrvCPU: m.serverCPU,
		mCliAllocs: m.clientAllocs, mSrvAllocs: m.serverAllocs,
		mOtherLoad: m.otherLoad,
	}, nil
}

// rawPingPong: one gorilla/websocket connection, a 16-byte binary message
// and its echo at a time.
func (e *env) rawPingPong(srv *child) (metrics, error) {
	ws, err := bench.DialRaw(context.Background(), srv.Targets[0])
	if err != nil {
		return nil, err
	}
	defer ws.Close()
	msg, buf := make([]byte, bench.PayloadSize), make([]byte, 0, 64)
	m, err := e.measure(srv, "raw-c1", 1, true, func(int) (int, error) {
		var err error
		buf, err = bench.RawEcho(ws, msg, buf)
		return 1, err
	})
	if err != nil {
		return nil, err
	}
	return latencyMetrics(m), nil
}

// rawStream: the streaming scenarios' ceiling, one gorilla/websocket
// connection to the Raw server's stream endpoint, which marshals and writes
// count payloads of size bytes, one WebSocket message each; the client
// decodes each into a new Payload (bench.RawStream). Same application work
// as serverStream, no RPC layer.
func (e *env) rawStream(srv *child, name string, size, count int) (metrics, error) {
	ws, err := bench.DialRaw(context.Background(), bench.RawStreamURL(srv.Targets[0]))
	if err != nil {
		return nil, err
	}
	defer ws.Close()
	req := &benchv1.StreamRequest{Count: uint32(count), Size: uint32(size)}
	var buf []byte
	m, err := e.measure(srv, name, 1, false, func(int) (int, error) {
		var n int
		n, buf, err = bench.RawStream(ws, req, buf)
		return n, err
	})
	if err != nil {
		return nil, err
	}
	return streamMetrics(m, size), nil
}

// rawUpload is clientStream over a raw gorilla/websocket connection to
// the Raw server's upload endpoint.
func (e *env) rawUpload(srv *child, name string, size, count int) (metrics, error) {
	ws, err := bench.DialRawUpload(context.Background(), bench.RawUploadURL(srv.Targets[0]))
	if err != nil {
		return nil, err
	}
	defer ws.Close()
	msg := payload(size)
	var buf []byte
	m, err := e.measure(srv, name, 1, false, func(int) (int, error) {
		var n int
		n, buf, err = bench.RawUpload(ws, msg, count, buf)
		if err == nil && n != count {
			err = fmt.Errorf("the server received %d messages, want %d", n, count)
		}
		return n, err
	})
	if err != nil {
		return nil, err
	}
	return streamMetrics(m, size), nil
}

// rawPipelined: one gorilla/websocket connection with a writer that keeps
// window 16-byte messages in flight and a reader that takes their echoes.
func (e *env) rawPipelined(srv *child, window int) (metrics, error) {
	ws, err := bench.DialRaw(context.Background(), srv.Targets[0])
	if err != nil {
		return nil, err
	}
	defer ws.Close()
	// phase runs the pipeline for d and returns the echoes received in d.
	phase := func(d time.Duration) (int64, time.Duration, error) {
		tokens := make(chan struct{}, window)
		for range window {
			tokens <- struct{}{}
		}
		done := make(chan struct{})
		var sent atomic.Int64
		writeErr := make(chan error, 1)
		go func() {
			msg := make([]byte, bench.PayloadSize)
			for {
				select {
				case <-tokens:
				case <-done:
					writeErr <- nil
					return
				}
				select {
				case <-done:
					writeErr <- nil
					return
				default:
				}
				if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
					writeErr <- err
					return
				}
				sent.Add(1)
			}
		}()
		start := time.Now()
		buf := make([]byte, 0, 64)
		var recvd int64
		for time.Since(start) < d {
			if buf, err = bench.RawRead(ws, buf); err != nil {
				close(done)
				<-writeErr
				return 0, 0, err
			}
			recvd++
			tokens <- struct{}{} // never blocks: one token per message in flight
		}
		elapsed := time.Since(start)
		counted := recvd
		close(done)
		if err := <-writeErr; err != nil {
			return 0, 0, err
		}
		for recvd < sent.Load() { // drain the echoes still in flight
			if buf, err = bench.RawRead(ws, buf); err != nil {
				return 0, 0, err
			}
			recvd++
		}
		return counted, elapsed, nil
	}
	if _, _, err := phase(e.warmup); err != nil {
		return nil, err
	}
	n, elapsed, err := phase(e.duration)
	if err != nil {
		return nil, err
	}
	return metrics{mRate: float64(n) / elapsed.Seconds()}, nil
}
