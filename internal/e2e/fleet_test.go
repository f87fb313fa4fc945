package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// holdHandler is the echo service whose Say("hold") runs until release is
// closed, so that a test can keep a drain going for as long as it likes.
type holdHandler struct {
	echo.Handler
	started chan struct{} // receives one value when a held call starts
	release chan struct{}
	calls   atomic.Int64 // Say calls served
}

func newHoldHandler() *holdHandler {
	return &holdHandler{started: make(chan struct{}, 16), release: make(chan struct{})}
}

func (h *holdHandler) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	h.calls.Add(1)
	if req.GetText() == "hold" {
		h.started <- struct{}{}
		select {
		case <-h.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return h.Handler.Say(ctx, req)
}

// replica is one tether server of a fleet, with its held-call handler.
type replica struct {
	srv  *server.Server
	hold *holdHandler
}

func newReplica(t *testing.T, opts ...server.Option) *replica {
	r := &replica{srv: server.New(append([]server.Option{server.WithLogger(discardLogger())}, opts...)...), hold: newHoldHandler()}
	echov1.RegisterEchoServiceHandler(r.srv, r.hold)
	t.Cleanup(func() { _ = r.srv.Close() })
	return r
}

// balancer is a load balancer in miniature: one URL, and every new
// connection goes to the current replica.
type balancer struct {
	current atomic.Pointer[replica]
	url     string
}

func newBalancer(t *testing.T, first *replica) *balancer {
	b := &balancer{}
	b.current.Store(first)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.current.Load().srv.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	b.url = "ws" + strings.TrimPrefix(hs.URL, "http")
	return b
}

// load makes one Say call every interval, each in its own goroutine, until
// stop; it counts the calls that succeeded and keeps the errors.
type load struct {
	ok    atomic.Int64
	mu    sync.Mutex
	errs  []error
	calls []timedCall // the successful calls
	wg    sync.WaitGroup
	stop  chan struct{}
}

// timedCall is when a call started and how long it took.
type timedCall struct {
	start time.Time
	took  time.Duration
}

// latency summarizes the calls that started in [from, to).
func (l *load) latency(from, to time.Time) string {
	l.mu.Lock()
	var ds []time.Duration
	for _, c := range l.calls {
		if !c.start.Before(from) && c.start.Before(to) {
			ds = append(ds, c.took)
		}
	}
	l.mu.Unlock()
	if len(ds) == 0 {
		return "no calls"
	}
	slices.Sort(ds)
	q := func(p float64) time.Duration {
		return ds[min(len(ds)-1, int(p*float64(len(ds))))].Round(10 * time.Microsecond)
	}
	return fmt.Sprintf("%d calls, p50 %v, p99 %v, max %v", len(ds), q(0.5), q(0.99), ds[len(ds)-1].Round(10*time.Microsecond))
}

func startLoad(cli echov1.EchoServiceClient, interval time.Duration) *load {
	l := &load{stop: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				start := time.Now()
				_, err := cli.Say(ctx, &echov1.SayRequest{Text: fmt.Sprint("call ", i)})
				took := time.Since(start)
				l.mu.Lock()
				defer l.mu.Unlock()
				if err != nil {
					l.errs = append(l.errs, err)
					return
				}
				l.calls = append(l.calls, timedCall{start, took})
				l.ok.Add(1)
			}()
		}
	}()
	return l
}

// finish stops the load, waits for its calls and returns their errors.
func (l *load) finish() []error {
	close(l.stop)
	l.wg.Wait()
	return l.errs
}

// waitUntil polls cond until it holds or 30 s pass.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestGoAwayMovesCallsAtOnce: a replica drains (Shutdown: GOAWAY, then it
// waits for a call held in flight) while 100 calls a second run through one
// balancer URL. The client opens its next connection at once, to the other
// replica, and new calls go there: 100 calls succeed there while the drain
// is still held, none fails, and the held call finishes on the old
// connection. The client's reconnection backoff is an hour: before, the
// reconnection after a GOAWAY waited a random part of it, and the calls
// waited with it.
func TestGoAwayMovesCallsAtOnce(t *testing.T) {
	a, b := newReplica(t), newReplica(t)
	lb := newBalancer(t, a)
	cli := newClient(t, lb.url, client.WithBackoff(client.BackoffConfig{Initial: time.Hour, Max: time.Hour}))
	ec := echov1.NewEchoServiceClient(cli)
	ctx := testCtx(t)
	if _, err := ec.Say(ctx, &echov1.SayRequest{Text: "warm up"}); err != nil {
		t.Fatal(err)
	}
	held := make(chan error, 1)
	go func() {
		_, err := ec.Say(context.Background(), &echov1.SayRequest{Text: "hold"})
		held <- err
	}()
	<-a.hold.started

	l := startLoad(ec, 10*time.Millisecond)
	t0 := time.Now()
	waitUntil(t, "20 calls succeeded on the first replica", func() bool { return l.ok.Load() >= 20 })
	goaway := time.Now()
	lb.current.Store(b)
	drained := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		drained <- a.srv.Shutdown(sctx)
	}()
	before := l.ok.Load()
	waitUntil(t, "the client connected to the second replica", func() bool { return b.srv.ConnCount() == 1 })
	waitUntil(t, "100 more calls succeeded during the drain", func() bool { return l.ok.Load() >= before+100 })
	select {
	case err := <-drained:
		t.Fatalf("the drain ended (%v) while a call was held", err)
	default:
	}
	held0 := time.Now()
	close(a.hold.release)
	if err := <-held; err != nil {
		t.Errorf("the call in flight during the drain failed: %v", err)
	}
	if err := <-drained; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	errs := l.finish()
	for _, err := range errs {
		t.Errorf("call failed: %v", err)
	}
	t.Logf("%d calls, %d failed; the drained replica has %d connections", l.ok.Load()+int64(len(errs)), len(errs), a.srv.ConnCount())
	t.Logf("before the GOAWAY: %s", l.latency(t0, goaway))
	t.Logf("during the drain (%v, held open): %s", held0.Sub(goaway).Round(time.Millisecond), l.latency(goaway, held0))
}

// TestMaxConnectionAge: a server whose connections age out after 300 ms
// drains each with GOAWAY; the client moves to a new connection each time
// while 100 calls a second run, and none fails.
func TestMaxConnectionAge(t *testing.T) {
	a := newReplica(t, server.WithMaxConnectionAge(300*time.Millisecond, 0))
	lb := newBalancer(t, a)
	ec := echov1.NewEchoServiceClient(newClient(t, lb.url))
	l := startLoad(ec, 10*time.Millisecond)
	waitUntil(t, "three connections aged out", func() bool { return a.srv.Stats().ConnectionsAgedOut >= 3 })
	waitUntil(t, "a fourth connection", func() bool { return a.srv.Stats().ConnectionsAccepted >= 4 })
	after := l.ok.Load()
	waitUntil(t, "10 calls on it", func() bool { return l.ok.Load() >= after+10 })
	errs := l.finish()
	for _, err := range errs {
		t.Errorf("call failed: %v", err)
	}
	st := a.srv.Stats()
	t.Logf("%d calls, %d failed, %d connections accepted, %d aged out", l.ok.Load()+int64(len(errs)), len(errs), st.ConnectionsAccepted, st.ConnectionsAgedOut)
	if st.ConnectionsAccepted < 4 {
		t.Fatalf("%d connections accepted after 3 aged out, want at least 4", st.ConnectionsAccepted)
	}
}

// TestMaxConnectionAgeGrace: a call still running the grace after its
// connection aged out is ended (its context canceled) and the connection
// closes; without the grace it would hold the connection forever.
func TestMaxConnectionAgeGrace(t *testing.T) {
	a := newReplica(t, server.WithMaxConnectionAge(200*time.Millisecond, 200*time.Millisecond))
	lb := newBalancer(t, a)
	cli := newClient(t, lb.url)
	ec := echov1.NewEchoServiceClient(cli)
	res := make(chan error, 1)
	go func() {
		// Retries off: the held call would be held again on the next
		// connection.
		_, err := ec.Say(context.Background(), &echov1.SayRequest{Text: "hold"}, client.WithoutRetries())
		res <- err
	}()
	<-a.hold.started
	select {
	case err := <-res:
		if err == nil {
			t.Fatal("the held call succeeded")
		}
		t.Logf("held call ended with: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the held call was not ended by the grace")
	}
	if got := a.srv.Stats().ConnectionsAgedOut; got < 1 {
		t.Fatalf("%d connections aged out", got)
	}
}

// listen serves r's server on its own 127.0.0.1 listener and returns its
// URL and a function that kills it: listener and connections closed.
func listen(t *testing.T, r *replica) (string, func()) {
	hs := httptest.NewServer(r.srv)
	var once sync.Once
	kill := func() { once.Do(func() { _ = r.srv.Close(); hs.Close() }) }
	t.Cleanup(kill)
	return "ws" + strings.TrimPrefix(hs.URL, "http"), kill
}

// TestFailoverOnDeath: a client with two endpoints, under 100 calls a
// second; the replica it is connected to dies (its connections closed, its
// port refusing). The client fails over to the other one and no call
// fails.
func TestFailoverOnDeath(t *testing.T) {
	a, b := newReplica(t), newReplica(t)
	urlA, killA := listen(t, a)
	urlB, killB := listen(t, b)
	ec := echov1.NewEchoServiceClient(newClient(t, urlA, client.WithEndpoints(urlB)))
	l := startLoad(ec, 10*time.Millisecond)
	waitUntil(t, "20 calls succeeded", func() bool { return l.ok.Load() >= 20 })
	live, kill := b, killA
	if a.srv.ConnCount() == 0 {
		live, kill = a, killB
	}
	death := time.Now()
	kill()
	before := l.ok.Load()
	waitUntil(t, "the client connected to the other replica", func() bool { return live.srv.ConnCount() == 1 })
	waitUntil(t, "50 calls succeeded after the death", func() bool { return l.ok.Load() >= before+50 })
	errs := l.finish()
	for _, err := range errs {
		t.Errorf("call failed: %v", err)
	}
	t.Logf("%d calls, %d failed", l.ok.Load()+int64(len(errs)), len(errs))
	t.Logf("before the death: %s", l.latency(time.Time{}, death))
	t.Logf("after it: %s", l.latency(death, time.Now()))
}

// TestFailoverOnRefusal: of two endpoints, one refuses connections (its
// port is closed). Clients that start at either fail over within one round
// of attempts: they never enter transient_failure, and a fail-fast call
// succeeds.
func TestFailoverOnRefusal(t *testing.T) {
	a := newReplica(t)
	urlA, _ := listen(t, a)
	dead := newReplica(t)
	urlDead, killDead := listen(t, dead)
	killDead()
	ctx := testCtx(t)
	for i := range 8 {
		var failed atomic.Bool
		cli := newClient(t, urlDead, client.WithEndpoints(urlA), client.WithStateListener(func(s client.State, err error) {
			if s == client.StateTransientFailure {
				failed.Store(true)
			}
		}))
		if _, err := echov1.NewEchoServiceClient(cli).Say(ctx, &echov1.SayRequest{Text: "hi"}, client.FailFast()); err != nil {
			t.Fatalf("client %d: fail-fast call: %v", i, err)
		}
		if failed.Load() {
			t.Fatalf("client %d entered transient_failure with a live endpoint", i)
		}
	}
	if st := a.srv.Stats(); st.ConnectionsAccepted != 8 {
		t.Fatalf("the live replica accepted %d connections, want 8", st.ConnectionsAccepted)
	}
}

// TestResolverFollowsFleet: a resolver's answer changes (replica a is
// replaced by b) and a drains; the client asks the resolver again and moves
// to b, and no call fails.
func TestResolverFollowsFleet(t *testing.T) {
	a, b := newReplica(t), newReplica(t)
	urlA, _ := listen(t, a)
	urlB, _ := listen(t, b)
	var current atomic.Value
	current.Store(urlA)
	var asked atomic.Int64
	res := client.ResolverFunc(func(_ context.Context, target string) ([]client.Endpoint, error) {
		asked.Add(1)
		if target != "ws://fleet.invalid/" {
			return nil, fmt.Errorf("target %q", target)
		}
		return []client.Endpoint{{URL: current.Load().(string)}}, nil
	})
	ec := echov1.NewEchoServiceClient(newClient(t, "ws://fleet.invalid/", client.WithResolver(res)))
	l := startLoad(ec, 10*time.Millisecond)
	waitUntil(t, "20 calls succeeded on a", func() bool { return l.ok.Load() >= 20 })
	current.Store(urlB)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	before := l.ok.Load()
	waitUntil(t, "the client connected to b", func() bool { return b.srv.ConnCount() == 1 })
	waitUntil(t, "50 calls succeeded on b", func() bool { return l.ok.Load() >= before+50 })
	errs := l.finish()
	for _, err := range errs {
		t.Errorf("call failed: %v", err)
	}
	if asked.Load() < 2 {
		t.Fatalf("resolver asked %d times, want at least 2", asked.Load())
	}
}

// TestDNSResolverDialsAddress: the DNS resolver's endpoints dial the
// address it found and keep the name in the Host header.
func TestDNSResolverDialsAddress(t *testing.T) {
	a := newReplica(t)
	var host atomic.Value
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host.Store(r.Host)
		a.srv.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { _ = a.srv.Close(); hs.Close() })
	port := hs.URL[strings.LastIndex(hs.URL, ":")+1:]
	target := "ws://fleet.invalid:" + port + "/rpc"
	res := client.DNSResolver{LookupHost: func(_ context.Context, name string) ([]string, error) {
		if name != "fleet.invalid" {
			return nil, fmt.Errorf("lookup %q", name)
		}
		return []string{"127.0.0.1"}, nil
	}}
	eps, err := res.Resolve(context.Background(), target)
	if err != nil || len(eps) != 1 || eps[0].Addr != "127.0.0.1:"+port || eps[0].URL != target {
		t.Fatalf("Resolve = %+v, %v", eps, err)
	}
	ec := echov1.NewEchoServiceClient(newClient(t, target, client.WithResolver(res)))
	if _, err := ec.Say(testCtx(t), &echov1.SayRequest{Text: "hi"}); err != nil {
		t.Fatal(err)
	}
	if got := host.Load(); got != "fleet.invalid:"+port {
		t.Fatalf("Host header %q, want fleet.invalid:%s", got, port)
	}
}

// TestConnectionsSpread: a client keeping two connections over two
// endpoints has one on each, and its calls go to both. When one replica
// drains (held open by a call in flight), calls go on over the other
// connection while the drained one is replaced, and none fails.
func TestConnectionsSpread(t *testing.T) {
	a, b := newReplica(t), newReplica(t)
	urlA, _ := listen(t, a)
	urlB, _ := listen(t, b)
	cli := newClient(t, urlA, client.WithEndpoints(urlB), client.WithConnections(2))
	ec := echov1.NewEchoServiceClient(cli)
	waitUntil(t, "a connection to each replica", func() bool { return a.srv.ConnCount() == 1 && b.srv.ConnCount() == 1 })
	held := make(chan error, 1)
	go func() {
		_, err := ec.Say(context.Background(), &echov1.SayRequest{Text: "hold"})
		held <- err
	}()
	var holder *replica
	select {
	case <-a.hold.started:
		holder = a
	case <-b.hold.started:
		holder = b
	}
	l := startLoad(ec, 10*time.Millisecond)
	waitUntil(t, "20 calls succeeded", func() bool { return l.ok.Load() >= 20 })
	aCalls, bCalls := a.hold.calls.Load(), b.hold.calls.Load()
	if aCalls == 0 || bCalls == 0 {
		t.Fatalf("calls went to one replica only: %d and %d", aCalls, bCalls)
	}
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		drained <- holder.srv.Shutdown(ctx)
	}()
	goaway := time.Now()
	before := l.ok.Load()
	waitUntil(t, "100 calls succeeded during the drain", func() bool { return l.ok.Load() >= before+100 })
	held0 := time.Now()
	close(holder.hold.release)
	if err := <-held; err != nil {
		t.Errorf("the held call failed: %v", err)
	}
	if err := <-drained; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	errs := l.finish()
	for _, err := range errs {
		t.Errorf("call failed: %v", err)
	}
	t.Logf("%d calls, %d failed; before the GOAWAY: %s; during the drain: %s", l.ok.Load()+int64(len(errs)), len(errs), l.latency(time.Time{}, goaway), l.latency(goaway, held0))
}
