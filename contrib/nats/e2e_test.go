package tethernats_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	tethernats "github.com/tetherrpc/tether/contrib/nats"
	"github.com/tetherrpc/tether/examples/ledger"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/idempotency"
)

// replica is one tether server with the NATS-backed dedup.
type replica struct {
	srv *server.Server
	hs  *httptest.Server
	log *syncBuffer
}

func startReplica(t *testing.T, js jetstream.JetStream, bucket string, h ledgerv1.LedgerServiceHandler, opts ...idempotency.Option) *replica {
	t.Helper()
	store, err := tethernats.NewIdempotencyStore(bg, js, tethernats.WithBucket(bucket), tethernats.WithTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{log: &syncBuffer{}}
	opts = append([]idempotency.Option{idempotency.WithStore(store), idempotency.WithLogger(slog.New(slog.NewTextHandler(r.log, nil)))}, opts...)
	r.srv = server.New(server.WithInterceptors(idempotency.New(opts...)))
	ledgerv1.RegisterLedgerServiceHandler(r.srv, h)
	r.hs = httptest.NewServer(r.srv)
	t.Cleanup(func() {
		r.srv.Close()
		r.hs.Close()
	})
	return r
}

// proxy sends each new connection to the next backend: a load balancer
// that moves a client's reconnection to another replica.
func proxy(t *testing.T, backends ...*replica) string {
	t.Helper()
	var n atomic.Int64
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		b := backends[int(n.Add(1)-1)%len(backends)]
		u, _ := url.Parse(b.hs.URL)
		r.SetURL(u)
	}}
	hs := httptest.NewServer(rp)
	t.Cleanup(hs.Close)
	return "ws" + strings.TrimPrefix(hs.URL, "http")
}

// cutting is a ledger replica whose Credit applies the credit to the shared
// book, then loses its connection (the server closes) before the answer
// leaves, and answers once the cut has reached the call.
type cutting struct {
	ledger.Handler
	srv  func() *server.Server
	runs atomic.Int64
}

func (c *cutting) Credit(ctx context.Context, req *ledgerv1.CreditRequest) (*ledgerv1.CreditResponse, error) {
	c.runs.Add(1)
	res, err := c.Handler.Credit(ctx, req)
	go c.srv().Close()
	<-ctx.Done()
	return res, err
}

// counting is a ledger replica that counts its runs.
type counting struct {
	ledger.Handler
	runs atomic.Int64
}

func (c *counting) Credit(ctx context.Context, req *ledgerv1.CreditRequest) (*ledgerv1.CreditResponse, error) {
	c.runs.Add(1)
	return c.Handler.Credit(ctx, req)
}

// A keyed call is cut after its handler ran on replica A; the client's
// retry lands on replica B, which answers from the shared store: the
// handler ran once.
func TestRetryLandsOnAnotherReplica(t *testing.T) {
	_, js := connect(t, startNode(t))
	bucket := bucketName()
	book := ledger.NewBook() // the replicas' shared database
	var a *replica
	ha := &cutting{Handler: ledger.Handler{Book: book}, srv: func() *server.Server { return a.srv }}
	hb := &counting{Handler: ledger.Handler{Book: book}}
	a = startReplica(t, js, bucket, ha)
	b := startReplica(t, js, bucket, hb)

	c, err := client.New(proxy(t, a, b))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lc := ledgerv1.NewLedgerServiceClient(c)
	ctx, cancel := context.WithTimeout(bg, time.Minute)
	defer cancel()
	res, err := lc.Credit(ctx, &ledgerv1.CreditRequest{Account: "acct", Amount: 5}, client.WithIdempotencyKey("pay-1"))
	if err != nil {
		t.Fatal(err)
	}
	if res.GetBalance() != 5 || book.Applied("pay-1") != 1 {
		t.Fatalf("balance %d, applied %d times", res.GetBalance(), book.Applied("pay-1"))
	}
	if ha.runs.Load() != 1 || hb.runs.Load() != 0 {
		t.Fatalf("handler ran %d times on A and %d on B; want 1 and 0 (B answers from the store)", ha.runs.Load(), hb.runs.Load())
	}
}

// stuck is a replica whose Credit hangs until released and then fails
// before applying: its server died in the middle.
type stuck struct {
	ledgerv1.UnimplementedLedgerServiceHandler
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

func (s *stuck) Credit(ctx context.Context, req *ledgerv1.CreditRequest) (*ledgerv1.CreditResponse, error) {
	s.once.Do(func() { close(s.started) })
	<-s.release
	return nil, tether.Errorf(tether.CodeInternal, "this replica is dead")
}

// Replica A claims a key and dies (its NATS connection and its server go
// away; its handler never finishes). The client's retry lands on B, which
// waits for A's lease to expire and then runs the handler exactly once.
func TestDeadReplicasClaimExpires(t *testing.T) {
	url := startNode(t)
	ncA, jsA := connect(t, url)
	_, jsB := connect(t, url)
	bucket := bucketName()
	book := ledger.NewBook()
	ha := &stuck{started: make(chan struct{}), release: make(chan struct{})}
	hb := &counting{Handler: ledger.Handler{Book: book}}
	a := startReplica(t, jsA, bucket, ha, idempotency.WithLease(time.Second))
	b := startReplica(t, jsB, bucket, hb, idempotency.WithLease(time.Second))
	defer close(ha.release) // before the replicas' cleanups

	c, err := client.New(proxy(t, a, b))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lc := ledgerv1.NewLedgerServiceClient(c)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(bg, time.Minute)
		defer cancel()
		_, err := lc.Credit(ctx, &ledgerv1.CreditRequest{Account: "acct", Amount: 3}, client.WithIdempotencyKey("pay-2"))
		done <- err
	}()
	<-ha.started
	// A dies: no more lease renewals, no more connections.
	ncA.Close()
	go a.srv.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if hb.runs.Load() != 1 || book.Applied("pay-2") != 1 {
		t.Fatalf("B ran the handler %d times; applied %d", hb.runs.Load(), book.Applied("pay-2"))
	}
	// Another repeat is answered from the store.
	if _, err := lc.Credit(bg, &ledgerv1.CreditRequest{Account: "acct", Amount: 3}, client.WithIdempotencyKey("pay-2")); err != nil {
		t.Fatal(err)
	}
	if hb.runs.Load() != 1 {
		t.Fatalf("the repeat ran the handler again")
	}
}

// When NATS is unreachable, calls keep working: each runs its handler
// without deduplication after the store's timeout, and says so in the log.
func TestNATSUnreachable(t *testing.T) {
	s, url := startNodeServer(t)
	_, js := connect(t, url)
	book := ledger.NewBook()
	h := &counting{Handler: ledger.Handler{Book: book}}
	r := startReplica(t, js, bucketName(), h)
	c, err := client.New("ws" + strings.TrimPrefix(r.hs.URL, "http"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lc := ledgerv1.NewLedgerServiceClient(c)
	if _, err := lc.Credit(bg, &ledgerv1.CreditRequest{Account: "a", Amount: 1}, client.WithIdempotencyKey("k")); err != nil {
		t.Fatal(err)
	}
	s.Shutdown()
	s.WaitForShutdown()
	for j := range 2 {
		if _, err := lc.Credit(bg, &ledgerv1.CreditRequest{Account: "a", Amount: 1}, client.WithIdempotencyKey("new")); err != nil {
			t.Fatalf("call %d with NATS down: %v", j, err)
		}
	}
	if n := h.runs.Load(); n != 3 {
		t.Fatalf("handler ran %d times, want 3 (no dedup while NATS is down)", n)
	}
	if !strings.Contains(r.log.String(), "WITHOUT deduplication") {
		t.Fatalf("log: %q", r.log.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var _ http.Handler = (*server.Server)(nil)
