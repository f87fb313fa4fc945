package idempotency

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
)

// waitFor polls cond until it holds; the timeout is generous because the
// machine is shared, and only a hang reaches it.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// gated is a ledger whose Credit counts its runs per idempotency key, holds
// calls on account "slow" until release is closed, and panics on the first
// run of a key when the account is "panic".
type gated struct {
	ledgerv1.UnimplementedLedgerServiceHandler
	release chan struct{}
	mu      sync.Mutex
	runs    map[string]int
	balance int64
}

func newGated() *gated { return &gated{release: make(chan struct{}), runs: map[string]int{}} }

func (g *gated) Credit(ctx context.Context, req *ledgerv1.CreditRequest) (*ledgerv1.CreditResponse, error) {
	ci, _ := server.CallInfoFromContext(ctx)
	key := ci.RequestHeader().Get(tether.MetadataIdempotencyKey)
	g.mu.Lock()
	g.runs[key]++
	n := g.runs[key]
	g.mu.Unlock()
	switch req.GetAccount() {
	case "slow":
		<-g.release
	case "panic":
		<-g.release
		if n == 1 {
			panic("credit exploded")
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.balance += req.GetAmount()
	return &ledgerv1.CreditResponse{Balance: g.balance}, nil
}

func (g *gated) runsOf(key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.runs[key]
}

type creditResult struct {
	res *ledgerv1.CreditResponse
	err error
}

func goCredit(lc ledgerv1.LedgerServiceClient, account, key string) <-chan creditResult {
	ch := make(chan creditResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		res, err := lc.Credit(ctx, &ledgerv1.CreditRequest{Account: account, Amount: 1}, client.WithIdempotencyKey(key), client.WithoutRetries())
		ch <- creditResult{res, err}
	}()
	return ch
}

func waiting(i *Interceptor) int { return i.snapshot().blocked }

// TestRunningKeyIsNeverEvicted (issue 10 item 1): a key whose first call is
// still running must stay claimed whatever the cache's entry count, byte
// total or clock says, so that a repeat waits for it instead of running the
// handler a second time. A new key that finds the cache full of running
// calls is refused with unavailable.
func TestRunningKeyIsNeverEvicted(t *testing.T) {
	t.Run("entries", func(t *testing.T) {
		g := newGated()
		i := New(WithMaxEntries(1))
		lc := setup(t, i, g)
		first := goCredit(lc, "slow", "a")
		waitFor(t, "the first call to run", func() bool { return g.runsOf("a") == 1 })
		other := <-goCredit(lc, "fast", "b")
		if tether.CodeOf(other.err) != tether.CodeUnavailable {
			t.Errorf("a new key with the cache full of running calls: %v, %v; want unavailable", other.res, other.err)
		}
		repeat := goCredit(lc, "slow", "a")
		waitFor(t, "the repeat to wait or run", func() bool { return waiting(i) == 1 || g.runsOf("a") == 2 })
		close(g.release)
		r1, r2 := <-first, <-repeat
		if r1.err != nil || r2.err != nil || !proto.Equal(r1.res, r2.res) {
			t.Errorf("first %v %v, repeat %v %v: want the same answer", r1.res, r1.err, r2.res, r2.err)
		}
		if n := g.runsOf("a"); n != 1 {
			t.Errorf("key a ran %d times while its first call was running, want 1", n)
		}
	})
	t.Run("ttl", func(t *testing.T) {
		var mu sync.Mutex
		now := time.Unix(1000, 0)
		clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
		g := newGated()
		i := New(WithTTL(time.Minute), withClock(clock))
		lc := setup(t, i, g)
		first := goCredit(lc, "slow", "a")
		waitFor(t, "the first call to run", func() bool { return g.runsOf("a") == 1 })
		mu.Lock()
		now = now.Add(2 * time.Minute) // the handler runs longer than the TTL
		mu.Unlock()
		repeat := goCredit(lc, "slow", "a")
		waitFor(t, "the repeat to wait or run", func() bool { return waiting(i) == 1 || g.runsOf("a") == 2 })
		close(g.release)
		r1, r2 := <-first, <-repeat
		if r1.err != nil || r2.err != nil || !proto.Equal(r1.res, r2.res) {
			t.Errorf("first %v %v, repeat %v %v: want the same answer", r1.res, r1.err, r2.res, r2.err)
		}
		if n := g.runsOf("a"); n != 1 {
			t.Errorf("key a ran %d times while its first call was running longer than the TTL, want 1", n)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		i := New(WithMaxBytes(1500))
		gate := make(chan struct{})
		var runs atomic.Int32
		first := make(chan error, 1)
		go func() {
			_, err := i.do(context.Background(), ck("a"), nil, func() (proto.Message, error) {
				runs.Add(1)
				<-gate
				return sized(1, 10), nil
			})
			first <- err
		}()
		waitFor(t, "the first call to run", func() bool { _, ok := i.snapshot().entries[ck("a")]; return ok })
		for n := range 5 {
			_, err := i.do(context.Background(), ck(fmt.Sprint("f", n)), nil, func() (proto.Message, error) { return sized(2, 400), nil })
			if err != nil {
				t.Fatal(err)
			}
		}
		repeat := make(chan error, 1)
		go func() {
			_, err := i.do(context.Background(), ck("a"), nil, func() (proto.Message, error) { runs.Add(1); return sized(3, 10), nil })
			repeat <- err
		}()
		waitFor(t, "the repeat to wait or run", func() bool { return waiting(i) == 1 || len(repeat) == 1 })
		close(gate)
		if err1, err2 := <-first, <-repeat; err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if n := runs.Load(); n != 1 {
			t.Errorf("key a ran %d times after byte-limit evictions while its first call was running, want 1", n)
		}
	})
}

// TestByteTotalStaysExact (issue 10 item 2): after running calls were pushed
// out by the entry limit and then settled, the byte total must still be the
// sum of the entries held, and a fresh key must still be deduplicated.
func TestByteTotalStaysExact(t *testing.T) {
	const maxBytes = 2000
	i := New(WithMaxEntries(2), WithMaxBytes(maxBytes))
	check := func(step string) {
		t.Helper()
		s := i.snapshot()
		sum := 0
		for _, h := range s.entries {
			sum += h.size
		}
		if s.bytes != sum || s.bytes > maxBytes {
			t.Errorf("after %s: byte total %d, held entries sum to %d (%d keys), limit %d", step, s.bytes, sum, len(s.entries), maxBytes)
		}
	}
	for c := range 8 {
		gate := make(chan struct{})
		slow := make(chan error, 1)
		go func() {
			_, err := i.do(context.Background(), ck(fmt.Sprint("slow", c)), nil, func() (proto.Message, error) { <-gate; return sized(1, 300), nil })
			slow <- err
		}()
		waitFor(t, "the slow call to run", func() bool { _, ok := i.snapshot().entries[ck(fmt.Sprint("slow", c))]; return ok })
		for n := range 2 {
			// With two entries allowed and one running, these may be
			// refused; that is fine here.
			_, _ = i.do(context.Background(), ck(fmt.Sprint("fast", c, n)), nil, func() (proto.Message, error) { return sized(2, 300), nil })
			check(fmt.Sprintf("cycle %d, fast call %d", c, n))
		}
		close(gate)
		if err := <-slow; err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprintf("cycle %d, slow call settled", c))
	}
	runs := 0
	for range 2 {
		if _, err := i.do(context.Background(), ck("fresh"), nil, func() (proto.Message, error) { runs++; return sized(3, 10), nil }); err != nil {
			t.Fatal(err)
		}
	}
	if runs != 1 {
		t.Errorf("a fresh key ran %d times, want 1", runs)
	}
}

// TestPanicReleasesClaim (issue 10 item 3): a handler that panics must not
// leave its key claimed. The caller gets internal (the panic reached the
// server's recovery), a repeat that was waiting and a later repeat do not
// hang: the key was forgotten, so the handler runs again, as after a crash.
func TestPanicReleasesClaim(t *testing.T) {
	g := newGated()
	i := New()
	lc := setup(t, i, g)
	first := goCredit(lc, "panic", "p")
	waitFor(t, "the first call to run", func() bool { return g.runsOf("p") == 1 })
	waiter := goCredit(lc, "panic", "p")
	waitFor(t, "the repeat to wait", func() bool { return waiting(i) == 1 })
	close(g.release)
	if r := <-first; tether.CodeOf(r.err) != tether.CodeInternal {
		t.Fatalf("panicking call: %v %v, want internal", r.res, r.err)
	}
	select {
	case r := <-waiter:
		if r.err != nil {
			t.Errorf("repeat waiting when the first call panicked: %v", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("repeat waiting when the first call panicked still waits after 10s")
		<-waiter // let the goroutine end (its deadline is 60s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := lc.Credit(ctx, &ledgerv1.CreditRequest{Account: "panic", Amount: 1}, client.WithIdempotencyKey("p"), client.WithoutRetries())
	if err != nil {
		t.Errorf("later repeat: %v", err)
	}
	if n := g.runsOf("p"); n != 2 {
		t.Errorf("handler ran %d times, want 2 (the panicked run, then one run answering every repeat)", n)
	}
	if res.GetBalance() != 1 {
		t.Errorf("balance %d, want 1", res.GetBalance())
	}
}

// TestCachedErrorsCountAgainstMaxBytes (issue 10 item 4): an error that is
// remembered holds its message, details and trailers; they count against
// WithMaxBytes like responses do.
func TestCachedErrorsCountAgainstMaxBytes(t *testing.T) {
	const maxBytes = 64 << 10
	i := New(WithMaxBytes(maxBytes))
	mkErr := func(n int) error {
		e := tether.Errorf(tether.CodeInvalidArgument, "%d %s", n, strings.Repeat("m", 4<<10))
		if err := e.AddDetail(wrapperspb.Bytes(make([]byte, 2<<10))); err != nil {
			t.Fatal(err)
		}
		return e.WithMeta(tether.NewMetadata("why", strings.Repeat("t", 2<<10)))
	}
	for n := range 100 {
		_, err := i.do(context.Background(), ck(fmt.Sprint(n)), nil, func() (proto.Message, error) { return nil, mkErr(n) })
		if tether.CodeOf(err) != tether.CodeInvalidArgument {
			t.Fatal(err)
		}
	}
	s := i.snapshot()
	held := 0
	for _, h := range s.entries {
		if e := tether.AsError(h.err); e != nil {
			held += len(e.Message())
			for _, d := range e.Details() {
				held += proto.Size(d)
			}
			for k, vs := range e.Meta() {
				for _, v := range vs {
					held += len(k) + len(v)
				}
			}
		}
	}
	if held > maxBytes || s.bytes < held {
		t.Errorf("%d cached errors hold at least %d bytes, counted %d, limit %d", len(s.entries), held, s.bytes, maxBytes)
	}
	// A repeat of a remembered error gets it whole.
	for k := range s.entries {
		var n int
		fmt.Sscan(k.key, &n)
		_, err := i.do(context.Background(), k, nil, func() (proto.Message, error) { t.Fatal("remembered key ran again"); return nil, nil })
		want := tether.AsError(mkErr(n))
		got := tether.AsError(err)
		if got.Code() != want.Code() || got.Message() != want.Message() || len(got.Details()) != 1 ||
			!proto.Equal(got.Details()[0], want.Details()[0]) || got.Meta().Get("why") != want.Meta().Get("why") {
			t.Errorf("repeat of %q got %v", k.key, err)
		}
		break
	}
}

// ck is a cache key for tests.
func ck(k string) cacheKey { return cacheKey{"s:p", "/test.v1.S/M", k} }

// sized returns a response whose first 8 bytes hold tag and that encodes to
// about n bytes.
func sized(tag uint64, n int) proto.Message {
	b := make([]byte, max(n, 8))
	for j := range 8 {
		b[j] = byte(tag >> (8 * j))
	}
	return wrapperspb.Bytes(b)
}
