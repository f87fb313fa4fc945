package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/dlq/dlqbolt"
	"github.com/tetherrpc/tether/examples/ledger"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/internal/faultproxy"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/idempotency"
)

// ledgerServer is a ledger service on a fixed loopback port that can be
// killed and started again; its Book survives, as a database would.
type ledgerServer struct {
	t    *testing.T
	addr string
	book *ledger.Book

	mu  sync.Mutex
	srv *server.Server
	hs  *http.Server
}

func newLedgerServer(t *testing.T) *ledgerServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ls := &ledgerServer{t: t, addr: ln.Addr().String(), book: ledger.NewBook()}
	ls.serve(ln)
	t.Cleanup(func() { ls.kill() })
	return ls
}

func (ls *ledgerServer) url() string { return "ws://" + ls.addr }

func (ls *ledgerServer) serve(ln net.Listener) {
	// A fresh process would have a fresh, empty deduplication cache.
	srv := server.New(server.WithInterceptors(idempotency.New()), server.WithLogger(discardLogger()))
	ledgerv1.RegisterLedgerServiceHandler(srv, &ledger.Handler{Book: ls.book})
	hs := &http.Server{Handler: srv}
	go func() { _ = hs.Serve(ln) }()
	ls.mu.Lock()
	ls.srv, ls.hs = srv, hs
	ls.mu.Unlock()
}

// kill stops the server abruptly: listener and connections closed, calls in
// flight cut.
func (ls *ledgerServer) kill() {
	ls.mu.Lock()
	srv, hs := ls.srv, ls.hs
	ls.srv, ls.hs = nil, nil
	ls.mu.Unlock()
	if srv == nil {
		return
	}
	_ = hs.Close()
	_ = srv.Close()
}

// restart starts the server again on the same address.
func (ls *ledgerServer) restart() {
	var ln net.Listener
	var err error
	for range 50 {
		if ln, err = net.Listen("tcp", ls.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		ls.t.Fatalf("restart: %v", err)
	}
	ls.serve(ln)
}

func newProxy(t *testing.T, target string) *faultproxy.Proxy {
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func newClient(t *testing.T, url string, opts ...client.Option) *client.Client {
	c, err := client.New(url, append([]client.Option{client.WithLogger(discardLogger())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRestartDuringIdempotentLoad: 2,000 calls of an IDEMPOTENT method from
// 20 goroutines while the connections are cut by a proxy and the server is
// killed and restarted. Every call succeeds and the server applied exactly
// 2,000 effects.
func TestRestartDuringIdempotentLoad(t *testing.T) {
	ls := newLedgerServer(t)
	proxy := newProxy(t, ls.addr)
	cli := newClient(t, "ws://"+proxy.Addr(), client.WithHeartbeat(200*time.Millisecond, 400*time.Millisecond))
	ledgerCli := ledgerv1.NewLedgerServiceClient(cli)

	const workers, perWorker = 20, 100
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := ledgerCli.Record(ctx, &ledgerv1.RecordRequest{Id: fmt.Sprintf("w%d-%d", w, i), Account: "acme", Amount: 1})
				cancel()
				if err != nil {
					errs <- err
				}
				done.Add(1)
			}
		}()
	}
	waitFor := func(n int64) {
		for done.Load() < n {
			time.Sleep(time.Millisecond)
		}
	}
	waitFor(400)
	proxy.CutAll()
	waitFor(900)
	ls.kill()
	time.Sleep(300 * time.Millisecond)
	ls.restart()
	waitFor(1400)
	proxy.CutAll()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("call failed: %v", err)
	}
	if got := ls.book.Records(); got != workers*perWorker {
		t.Fatalf("server applied %d effects, want exactly %d", got, workers*perWorker)
	}
	st := cli.Stats()
	t.Logf("2000 calls, %d effects applied, %d retries, %d connects", ls.book.Records(), st.Retries, st.Connects)
	if st.Connects < 3 {
		t.Fatalf("expected reconnects after the faults, got %d connects", st.Connects)
	}
}

// TestLedgerDeadLetters: calls of a method of unknown idempotency with a
// dead-letter policy, through connection cuts and an outage. Every call ends
// in exactly one of succeeded, failed visibly, dead-lettered; after the dead
// letters are replayed each logical call was applied exactly once.
func TestLedgerDeadLetters(t *testing.T) {
	ls := newLedgerServer(t)
	proxy := newProxy(t, ls.addr)
	store := dlq.NewMemoryStore()
	cli := newClient(t, "ws://"+proxy.Addr(),
		client.WithDeadLetterQueue(store),
		client.WithHeartbeat(200*time.Millisecond, 400*time.Millisecond),
		client.WithBackoff(client.BackoffConfig{Initial: 50 * time.Millisecond, Max: 200 * time.Millisecond}))
	ledgerCli := ledgerv1.NewLedgerServiceClient(cli)

	const workers, perWorker = 20, 50
	const calls = workers * perWorker
	var succeeded, failed, deadLettered atomic.Int64
	var done atomic.Int64
	var wg sync.WaitGroup
	keyOf := func(w, i int) string { return fmt.Sprintf("credit-%d-%d", w, i) }
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
				_, err := ledgerCli.Credit(ctx, &ledgerv1.CreditRequest{Account: "acme", Amount: 1}, client.WithIdempotencyKey(keyOf(w, i)))
				cancel()
				switch {
				case err == nil:
					succeeded.Add(1)
				case errors.Is(err, client.ErrDeadLettered):
					deadLettered.Add(1)
				default:
					failed.Add(1)
					t.Logf("failed visibly: %v", err)
				}
				done.Add(1)
			}
		}()
	}
	waitFor := func(n int64) {
		for done.Load() < n {
			time.Sleep(time.Millisecond)
		}
	}
	waitFor(200)
	proxy.CutAll()
	waitFor(400)
	// Outage: every call waiting now runs out of time and is dead-lettered.
	proxy.Refuse(true)
	proxy.CutAll()
	time.Sleep(2 * time.Second)
	proxy.Refuse(false)
	waitFor(700)
	proxy.CutAll()
	wg.Wait()

	n := succeeded.Load() + failed.Load() + deadLettered.Load()
	t.Logf("ledger: %d calls: %d succeeded, %d failed visibly, %d dead-lettered (sum %d)", calls, succeeded.Load(), failed.Load(), deadLettered.Load(), n)
	if n != calls {
		t.Fatalf("outcomes sum to %d, want %d", n, calls)
	}
	if deadLettered.Load() == 0 {
		t.Fatal("the outage dead-lettered no call; the test did not test the queue")
	}
	if l, _ := store.Len(context.Background()); int64(l) != deadLettered.Load() {
		t.Fatalf("queue holds %d entries, %d calls were dead-lettered", l, deadLettered.Load())
	}
	ctx := testCtx(t)
	ok, bad, err := dlq.ReplayAll(ctx, store, cli, dlq.ListOptions{})
	if err != nil || bad != 0 {
		t.Fatalf("replay: %d ok, %d failed, %v", ok, bad, err)
	}
	t.Logf("replayed %d dead letters", ok)
	for w := range workers {
		for i := range perWorker {
			if got := ls.book.Applied(keyOf(w, i)); got != 1 {
				t.Errorf("call %s applied %d times, want exactly once", keyOf(w, i), got)
			}
		}
	}
	if l, _ := store.Len(ctx); l != 0 {
		t.Fatalf("%d entries left after replay", l)
	}
}

// TestDeadLetterSurvivesSIGKILL: a client process dead-letters a call into a
// bbolt file and is killed with SIGKILL; a new process lists and replays it.
func TestDeadLetterSurvivesSIGKILL(t *testing.T) {
	down := newProxy(t, "127.0.0.1:1") // a server that is down
	down.Refuse(true)
	path := filepath.Join(t.TempDir(), "dlq.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperDeadLetterClient$", "-test.v")
	cmd.Env = append(os.Environ(), "TETHER_HELPER_DLQ="+path, "TETHER_HELPER_URL=ws://"+down.Addr())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	id := ""
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "DEADLETTERED" {
			id = f[1]
			break
		}
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	if id == "" {
		t.Fatal("the child process did not dead-letter its call")
	}

	store, err := dlqbolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	entries, err := store.List(context.Background(), dlq.ListOptions{})
	if err != nil || len(entries) != 1 || entries[0].ID != id {
		t.Fatalf("after SIGKILL: %d entries (%v), want the one with ID %s", len(entries), err, id)
	}
	e := entries[0]
	if e.Procedure != ledgerv1.LedgerServiceCreditProcedure || e.IdempotencyKey != "sigkill-key" || e.Attempts < 1 {
		t.Fatalf("entry = %+v", e)
	}
	ls := newLedgerServer(t)
	cli := newClient(t, ls.url())
	if _, err := dlq.Replay(testCtx(t), store, cli, id); err != nil {
		t.Fatalf("replay: %v", err)
	}
	if got := ls.book.Applied("sigkill-key"); got != 1 {
		t.Fatalf("replayed call applied %d times", got)
	}
}

// TestHelperDeadLetterClient is the child process of
// TestDeadLetterSurvivesSIGKILL.
func TestHelperDeadLetterClient(t *testing.T) {
	path, url := os.Getenv("TETHER_HELPER_DLQ"), os.Getenv("TETHER_HELPER_URL")
	if path == "" {
		t.Skip("helper process only")
	}
	store, err := dlqbolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(url, client.WithDeadLetterQueue(store), client.WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err = ledgerv1.NewLedgerServiceClient(c).Credit(ctx, &ledgerv1.CreditRequest{Account: "acme", Amount: 5}, client.WithIdempotencyKey("sigkill-key"))
	var dl *client.DeadLetterError
	if !errors.As(err, &dl) {
		t.Fatalf("err = %v, want dead-lettered", err)
	}
	fmt.Printf("DEADLETTERED %s\n", dl.ID)
	select {} // wait for SIGKILL
}

// TestHalfOpenReconnect: a connection whose peer goes silent without FIN is
// detected within the heartbeat timeout and replaced.
func TestHalfOpenReconnect(t *testing.T) {
	ls := newLedgerServer(t)
	proxy := newProxy(t, ls.addr)
	interval, timeout := 100*time.Millisecond, 200*time.Millisecond
	cli := newClient(t, "ws://"+proxy.Addr(), client.WithHeartbeat(interval, timeout))
	lc := ledgerv1.NewLedgerServiceClient(cli)
	ctx := testCtx(t)
	if _, err := lc.Balance(ctx, &ledgerv1.BalanceRequest{Account: "a"}); err != nil {
		t.Fatal(err)
	}
	proxy.Stall()
	at := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if st := cli.WaitForStateChange(wctx, client.StateReady); st == client.StateReady {
		t.Fatal("half-open connection not detected")
	}
	d := time.Since(at)
	t.Logf("half-open connection detected after %v (heartbeat %v + %v)", d, interval, timeout)
	if d > interval+timeout+time.Second {
		t.Fatalf("detected after %v", d)
	}
	proxy.Resume()
	if _, err := lc.Balance(ctx, &ledgerv1.BalanceRequest{Account: "a"}); err != nil {
		t.Fatalf("after reconnect: %v", err)
	}
	if c := cli.Stats().Connects; c < 2 {
		t.Fatalf("connects = %d, want a reconnect", c)
	}
}

// TestReconnectSpread: 50 clients lose their server for 10 s. They keep
// trying, at jittered times rather than in lockstep, and all come back.
func TestReconnectSpread(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s outage")
	}
	t.Parallel()
	ls := newLedgerServer(t)
	proxy := newProxy(t, ls.addr)
	const n = 50
	var mu sync.Mutex
	attempts := make([][]time.Time, n)
	clients := make([]*client.Client, n)
	for i := range n {
		clients[i] = newClient(t, "ws://"+proxy.Addr(),
			client.WithBackoff(client.BackoffConfig{Initial: 100 * time.Millisecond, Max: 2 * time.Second}),
			client.WithStateListener(func(s client.State, _ error) {
				if s == client.StateConnecting {
					mu.Lock()
					attempts[i] = append(attempts[i], time.Now())
					mu.Unlock()
				}
			}))
	}
	ctx := testCtx(t)
	for _, c := range clients {
		if _, err := ledgerv1.NewLedgerServiceClient(c).Balance(ctx, &ledgerv1.BalanceRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	proxy.Refuse(true)
	outage := time.Now()
	proxy.CutAll()
	time.Sleep(10 * time.Second)
	proxy.Refuse(false)
	back := time.Now()
	for i, c := range clients {
		if _, err := ledgerv1.NewLedgerServiceClient(c).Balance(ctx, &ledgerv1.BalanceRequest{}); err != nil {
			t.Fatalf("client %d did not come back: %v", i, err)
		}
	}
	t.Logf("all %d clients back %v after the server", n, time.Since(back).Round(time.Millisecond))

	mu.Lock()
	defer mu.Unlock()
	// Attempts during the outage, in 10 ms bins: in lockstep all 50 would
	// share bins.
	bins := map[int64]int{}
	total, minPer := 0, 1<<30
	for _, ts := range attempts {
		k := 0
		for _, at := range ts {
			if at.After(outage) && at.Before(back) {
				bins[at.Sub(outage).Milliseconds()/10]++
				total++
				k++
			}
		}
		minPer = min(minPer, k)
	}
	busiest := 0
	for _, c := range bins {
		busiest = max(busiest, c)
	}
	// First attempts after the cut.
	var firsts []time.Duration
	for _, ts := range attempts {
		for _, at := range ts {
			if at.After(outage) {
				firsts = append(firsts, at.Sub(outage))
				break
			}
		}
	}
	sort.Slice(firsts, func(i, j int) bool { return firsts[i] < firsts[j] })
	t.Logf("outage: %d attempts by %d clients (fewest per client %d), busiest 10ms bin %d, first attempts spread over %v..%v",
		total, n, minPer, busiest, firsts[0].Round(time.Millisecond), firsts[len(firsts)-1].Round(time.Millisecond))
	if minPer < 4 {
		t.Fatalf("a client made only %d attempts in 10 s: it gave up or backed off too far", minPer)
	}
	// Lockstep shows in every round of attempts: the k-th attempts of all
	// clients would fall close together, round after round. A loaded
	// machine that stalls the test for a moment bunches the timers that
	// expire meanwhile, but only in the rounds of that stall; so the test
	// looks at the median, over rounds, of how far apart the clients' k-th
	// attempts are (their interquartile range). With the backoff's jitter
	// (±50% of 100 ms growing to 2 s) it is hundreds of milliseconds (about
	// 400 ms measured); with the jitter at 0.001 it was 45 ms, only the
	// spread of the first attempts carried along.
	var iqrs []time.Duration
	for k := 1; k < minPer; k++ {
		var at []time.Duration
		for _, ts := range attempts {
			var during []time.Time
			for _, a := range ts {
				if a.After(outage) && a.Before(back) {
					during = append(during, a)
				}
			}
			at = append(at, during[k].Sub(outage))
		}
		sort.Slice(at, func(i, j int) bool { return at[i] < at[j] })
		iqrs = append(iqrs, at[3*len(at)/4]-at[len(at)/4])
	}
	sort.Slice(iqrs, func(i, j int) bool { return iqrs[i] < iqrs[j] })
	median := iqrs[len(iqrs)/2]
	t.Logf("spread of the clients' k-th attempts (interquartile range) by round: %v, median %v", iqrs, median)
	if median < 100*time.Millisecond {
		t.Fatalf("the clients' k-th attempts fall within %v of each other in most rounds (busiest 10 ms bin %d): lockstep", median, busiest)
	}
	if spread := firsts[len(firsts)-1] - firsts[0]; spread < 30*time.Millisecond {
		t.Fatalf("first reconnect attempts spread over only %v", spread)
	}
}

// flakyEcho fails every Say with a given error and counts the attempts.
type flakyEcho struct {
	echov1.UnimplementedEchoServiceHandler
	calls atomic.Int64
	err   error
}

func (f *flakyEcho) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	f.calls.Add(1)
	return nil, f.err
}

func TestRetryLimits(t *testing.T) {
	unavailable := tether.Errorf(tether.CodeUnavailable, "try later")
	t.Run("max attempts", func(t *testing.T) {
		h := &flakyEcho{err: unavailable}
		e := newEnv(t, envConfig{handler: h})
		ctx := testCtx(t)
		_, err := e.echo.Say(ctx, &echov1.SayRequest{}) // NO_SIDE_EFFECTS: 3 attempts by default
		if tether.CodeOf(err) != tether.CodeUnavailable || h.calls.Load() != 3 {
			t.Fatalf("err = %v after %d attempts, want unavailable after 3", err, h.calls.Load())
		}
		h.calls.Store(0)
		_, _ = e.echo.Say(ctx, &echov1.SayRequest{}, client.WithRetryPolicy(&client.RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Millisecond}))
		if got := h.calls.Load(); got != 5 {
			t.Fatalf("%d attempts, want 5", got)
		}
		h.calls.Store(0)
		_, _ = e.echo.Say(ctx, &echov1.SayRequest{}, client.WithoutRetries())
		if got := h.calls.Load(); got != 1 {
			t.Fatalf("%d attempts, want 1", got)
		}
	})
	t.Run("not retryable code", func(t *testing.T) {
		h := &flakyEcho{err: tether.Errorf(tether.CodeInvalidArgument, "bad")}
		e := newEnv(t, envConfig{handler: h})
		if _, err := e.echo.Say(testCtx(t), &echov1.SayRequest{}); tether.CodeOf(err) != tether.CodeInvalidArgument || h.calls.Load() != 1 {
			t.Fatalf("err = %v after %d attempts", err, h.calls.Load())
		}
	})
	t.Run("deadline", func(t *testing.T) {
		h := &flakyEcho{err: unavailable}
		e := newEnv(t, envConfig{handler: h})
		if _, err := e.echo.Say(testCtx(t), &echov1.SayRequest{}, client.WithoutRetries()); err == nil {
			t.Fatal("want error") // connects first
		}
		// Many short backoffs: attempts stop at the deadline. (Wall-clock
		// bounds here are loose: CI machines under -race are slow; the
		// second case is the sharp one.)
		before := h.calls.Load()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := e.echo.Say(ctx, &echov1.SayRequest{}, client.WithRetryPolicy(&client.RetryPolicy{MaxAttempts: 1000, InitialBackoff: 40 * time.Millisecond, BackoffMultiplier: 1}))
		elapsed := time.Since(start)
		attempts := h.calls.Load() - before
		if err == nil || elapsed > time.Second {
			t.Fatalf("err = %v after %v and %d attempts: retries outlived the 300ms deadline", err, elapsed, attempts)
		}
		t.Logf("%d attempts in %v before the deadline", attempts, elapsed.Round(time.Millisecond))
		// One backoff longer than the time left: the call must end at
		// once (or at its deadline), not sleep the backoff out.
		ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel2()
		start = time.Now()
		_, err = e.echo.Say(ctx2, &echov1.SayRequest{}, client.WithRetryPolicy(&client.RetryPolicy{MaxAttempts: 5, InitialBackoff: 3 * time.Second, BackoffMultiplier: 1}))
		if elapsed := time.Since(start); err == nil || elapsed > 1500*time.Millisecond {
			t.Fatalf("err = %v after %v: the call slept a 3 s backoff past its 300ms deadline", err, elapsed)
		}
	})
	t.Run("budget stops a retry storm", func(t *testing.T) {
		h := &flakyEcho{err: unavailable}
		e := newEnv(t, envConfig{handler: h, cliOpts: []client.Option{client.WithRetryBudget(client.RetryBudget{MaxTokens: 10, Ratio: 0.1})}})
		ctx := testCtx(t)
		const calls, maxAttempts = 50, 5
		for range calls {
			_, _ = e.echo.Say(ctx, &echov1.SayRequest{}, client.WithRetryPolicy(&client.RetryPolicy{MaxAttempts: maxAttempts, InitialBackoff: time.Millisecond}))
		}
		got := h.calls.Load()
		t.Logf("%d calls against a failing server: %d attempts (without a budget: %d)", calls, got, calls*maxAttempts)
		if got > calls+10 {
			t.Fatalf("%d attempts: the budget did not stop the retries", got)
		}
	})
}
