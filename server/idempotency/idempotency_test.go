package idempotency

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/ledger"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func setup(t *testing.T, i *Interceptor, h ledgerv1.LedgerServiceHandler) ledgerv1.LedgerServiceClient {
	t.Helper()
	return serve(t, h, []server.Option{server.WithInterceptors(i)})
}

// serve serves h on a test server with sopts and returns a client of it
// with copts; both are closed when the test ends.
func serve(t *testing.T, h ledgerv1.LedgerServiceHandler, sopts []server.Option, copts ...client.Option) ledgerv1.LedgerServiceClient {
	t.Helper()
	srv := server.New(sopts...)
	ledgerv1.RegisterLedgerServiceHandler(srv, h)
	hs := httptest.NewServer(srv)
	c, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), copts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		srv.Close()
		hs.Close()
	})
	return ledgerv1.NewLedgerServiceClient(c)
}

func TestRepeatGetsFirstResult(t *testing.T) {
	book := ledger.NewBook()
	i := New()
	lc := setup(t, i, &ledger.Handler{Book: book})
	ctx := context.Background()
	first, err := lc.Credit(ctx, &ledgerv1.CreditRequest{Account: "a", Amount: 5}, client.WithIdempotencyKey("k1"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := lc.Credit(ctx, &ledgerv1.CreditRequest{Account: "a", Amount: 5}, client.WithIdempotencyKey("k1"))
	if err != nil {
		t.Fatal(err)
	}
	if first.GetBalance() != 5 || again.GetBalance() != 5 || book.Applied("k1") != 1 {
		t.Fatalf("balances %d, %d; applied %d times", first.GetBalance(), again.GetBalance(), book.Applied("k1"))
	}
	// Another key runs the handler.
	if res, err := lc.Credit(ctx, &ledgerv1.CreditRequest{Account: "a", Amount: 5}, client.WithIdempotencyKey("k2")); err != nil || res.GetBalance() != 10 {
		t.Fatalf("k2: %v %v", res, err)
	}
	// Errors that are answers are remembered too.
	for range 2 {
		if _, err := lc.Credit(ctx, &ledgerv1.CreditRequest{}, client.WithIdempotencyKey("bad")); tether.CodeOf(err) != tether.CodeInvalidArgument {
			t.Fatalf("err = %v", err)
		}
	}
	hits, misses, keys := i.Stats()
	if hits != 2 || misses != 3 || keys != 3 {
		t.Fatalf("hits %d misses %d keys %d", hits, misses, keys)
	}
}

// slowCredit holds the first call until released, to test concurrent repeats.
type slowCredit struct {
	ledger.Handler
	release chan struct{}
	mu      sync.Mutex
	runs    int
}

func (s *slowCredit) Credit(ctx context.Context, req *ledgerv1.CreditRequest) (*ledgerv1.CreditResponse, error) {
	s.mu.Lock()
	s.runs++
	s.mu.Unlock()
	<-s.release
	return s.Handler.Credit(ctx, req)
}

func TestConcurrentRepeatWaits(t *testing.T) {
	h := &slowCredit{Handler: ledger.Handler{Book: ledger.NewBook()}, release: make(chan struct{})}
	lc := setup(t, New(), h)
	var wg sync.WaitGroup
	results := make(chan int64, 5)
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := lc.Credit(context.Background(), &ledgerv1.CreditRequest{Account: "a", Amount: 1}, client.WithIdempotencyKey("same"))
			if err != nil {
				t.Error(err)
				return
			}
			results <- res.GetBalance()
		}()
	}
	time.Sleep(100 * time.Millisecond)
	close(h.release)
	wg.Wait()
	close(results)
	for b := range results {
		if b != 1 {
			t.Fatalf("balance %d, want 1 for every repeat", b)
		}
	}
	if h.runs != 1 {
		t.Fatalf("handler ran %d times", h.runs)
	}
}

func TestBoundsAndTTL(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	book := ledger.NewBook()
	i := New(WithMaxEntries(2), WithTTL(time.Minute), withClock(clock))
	lc := setup(t, i, &ledger.Handler{Book: book})
	ctx := context.Background()
	credit := func(key string) {
		if _, err := lc.Credit(ctx, &ledgerv1.CreditRequest{Account: "a", Amount: 1}, client.WithIdempotencyKey(key)); err != nil {
			t.Fatal(err)
		}
	}
	credit("a")
	credit("b")
	credit("c") // evicts "a"
	if _, _, keys := i.Stats(); keys != 2 {
		t.Fatalf("%d keys, want 2", keys)
	}
	credit("a")
	if book.Applied("a") != 2 {
		t.Fatalf("evicted key applied %d times, want 2 (cache bounded)", book.Applied("a"))
	}
	credit("c")
	if book.Applied("c") != 1 {
		t.Fatal("cached key ran again")
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	credit("c")
	if book.Applied("c") != 2 {
		t.Fatalf("expired key applied %d times, want 2", book.Applied("c"))
	}
}

func TestTransientErrorsAreForgotten(t *testing.T) {
	h := &flaky{}
	lc := setup(t, New(), h)
	for n := 1; n <= 2; n++ {
		_, err := lc.Credit(context.Background(), &ledgerv1.CreditRequest{Account: "a"}, client.WithIdempotencyKey("t"), client.WithoutRetries())
		if n == 1 && tether.CodeOf(err) != tether.CodeUnavailable {
			t.Fatalf("first: %v", err)
		}
		if n == 2 && err != nil {
			t.Fatalf("second: %v", err)
		}
	}
	if h.runs != 2 {
		t.Fatalf("handler ran %d times, want 2 (transient result not cached)", h.runs)
	}
}

type flaky struct {
	ledgerv1.UnimplementedLedgerServiceHandler
	runs int
}

func (f *flaky) Credit(ctx context.Context, req *ledgerv1.CreditRequest) (*ledgerv1.CreditResponse, error) {
	f.runs++
	if f.runs == 1 {
		return nil, tether.Errorf(tether.CodeUnavailable, "try again")
	}
	return &ledgerv1.CreditResponse{Balance: 1}, nil
}
