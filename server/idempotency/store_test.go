package idempotency

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"reflect"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/ledger"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
)

// Two servers that share a store answer a repeat that lands on the other
// one from the store: the handler ran once.
func TestStoreSharedByTwoServers(t *testing.T) {
	store := NewMemoryStore(0)
	book := ledger.NewBook()
	a := setup(t, New(WithStore(store)), &ledger.Handler{Book: book})
	b := setup(t, New(WithStore(store)), &ledger.Handler{Book: book})
	ctx := context.Background()
	first, err := a.Credit(ctx, &ledgerv1.CreditRequest{Account: "x", Amount: 7}, client.WithIdempotencyKey("k"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := b.Credit(ctx, &ledgerv1.CreditRequest{Account: "x", Amount: 7}, client.WithIdempotencyKey("k"))
	if err != nil {
		t.Fatal(err)
	}
	if book.Applied("k") != 1 || first.GetBalance() != 7 || again.GetBalance() != 7 {
		t.Fatalf("applied %d times; balances %d, %d", book.Applied("k"), first.GetBalance(), again.GetBalance())
	}
	// Answers that are errors are shared too.
	for _, lc := range []ledgerv1.LedgerServiceClient{a, b} {
		if _, err := lc.Credit(ctx, &ledgerv1.CreditRequest{}, client.WithIdempotencyKey("bad")); tether.CodeOf(err) != tether.CodeInvalidArgument {
			t.Fatalf("err = %v", err)
		}
	}
}

// Concurrent repeats on two servers: one runs, the others wait for its
// result.
func TestStoreConcurrentRepeats(t *testing.T) {
	store := NewMemoryStore(0)
	g := newGated()
	a := setup(t, New(WithStore(store), WithPollInterval(time.Millisecond)), g)
	b := setup(t, New(WithStore(store), WithPollInterval(time.Millisecond)), g)
	var chans []<-chan creditResult
	for j := range 6 {
		lc := a
		if j%2 == 1 {
			lc = b
		}
		chans = append(chans, goCredit(lc, "slow", "same"))
	}
	waitFor(t, "the first call to run", func() bool { return g.runsOf("same") == 1 })
	close(g.release)
	for _, c := range chans {
		r := <-c
		if r.err != nil || r.res.GetBalance() != 1 {
			t.Fatalf("a repeat got %v, %v", r.res, r.err)
		}
	}
	if n := g.runsOf("same"); n != 1 {
		t.Fatalf("handler ran %d times", n)
	}
}

// A claim whose owner died (it never completes nor releases) blocks its
// repeats until its lease expires; then exactly one repeat runs.
func TestStoreDeadOwnerLeaseExpires(t *testing.T) {
	store := NewMemoryStore(0)
	g := newGated()
	close(g.release)
	lc := setup(t, New(WithStore(store), WithLease(time.Second)), g)
	k := Key{Principal: "", Procedure: ledgerv1.LedgerServiceCreditProcedure, Key: "orphan"}
	if r, err := store.Claim(context.Background(), k, "dead-server", time.Second); err != nil || r.State != StateClaimed {
		t.Fatalf("claim: %+v %v", r, err)
	}
	var chans []<-chan creditResult
	for range 5 {
		chans = append(chans, goCredit(lc, "a", "orphan"))
	}
	for _, c := range chans {
		if r := <-c; r.err != nil || r.res.GetBalance() != 1 {
			t.Fatalf("a repeat got %v, %v", r.res, r.err)
		}
	}
	if n := g.runsOf("orphan"); n != 1 {
		t.Fatalf("handler ran %d times after the lease expired", n)
	}
}

// The lease is renewed while a handler runs longer than it: a repeat meanwhile
// waits, it does not run.
func TestStoreLeaseRenewedWhileRunning(t *testing.T) {
	store := NewMemoryStore(0)
	g := newGated()
	// Renewed every third of a lease: a lease of 1 s leaves the renewal
	// 667 ms of scheduling delay on a loaded machine before it expires
	// (300 ms, with 200 ms of slack, failed once under -race and load).
	lc := setup(t, New(WithStore(store), WithLease(time.Second)), g)
	first := goCredit(lc, "slow", "long")
	waitFor(t, "the first call to run", func() bool { return g.runsOf("long") == 1 })
	repeat := goCredit(lc, "slow", "long")
	time.Sleep(2500 * time.Millisecond) // two and a half leases
	close(g.release)
	for _, c := range []<-chan creditResult{first, repeat} {
		if r := <-c; r.err != nil || r.res.GetBalance() != 1 {
			t.Fatalf("got %v, %v", r.res, r.err)
		}
	}
	if n := g.runsOf("long"); n != 1 {
		t.Fatalf("handler ran %d times", n)
	}
}

// A panic or a transient error releases the claim: a repeat runs again.
func TestStorePanicReleasesClaim(t *testing.T) {
	store := NewMemoryStore(0)
	g := newGated()
	close(g.release)
	lc := setup(t, New(WithStore(store)), g)
	if r := <-goCredit(lc, "panic", "p"); tether.CodeOf(r.err) != tether.CodeInternal {
		t.Fatalf("first call: %v", r.err)
	}
	if r, _ := store.Get(context.Background(), Key{"", ledgerv1.LedgerServiceCreditProcedure, "p"}); r.State != StateNone {
		t.Fatalf("after the panic the store holds %+v", r)
	}
	if r := <-goCredit(lc, "panic", "p"); r.err != nil {
		t.Fatalf("repeat: %v", r.err)
	}
	if n := g.runsOf("p"); n != 2 {
		t.Fatalf("handler ran %d times, want 2", n)
	}
}

// brokenStore fails every operation, as an unreachable store does.
type brokenStore struct{}

var errBroken = errors.New("store unreachable")

func (brokenStore) Claim(context.Context, Key, string, time.Duration) (Record, error) {
	return Record{}, errBroken
}
func (brokenStore) Renew(context.Context, Key, string, time.Duration) error { return errBroken }
func (brokenStore) Complete(context.Context, Key, string, []byte, time.Duration) error {
	return errBroken
}
func (brokenStore) Release(context.Context, Key, string) error { return errBroken }
func (brokenStore) Get(context.Context, Key) (Record, error)   { return Record{}, errBroken }

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

// When the store is unreachable, calls keep working without deduplication,
// and each says so in the log; fail-closed refuses them instead.
func TestStoreUnreachable(t *testing.T) {
	var log syncBuffer
	logger := slog.New(slog.NewTextHandler(&log, nil))
	g := newGated()
	close(g.release)
	i := New(WithStore(brokenStore{}), WithLogger(logger))
	lc := setup(t, i, g)
	for range 2 {
		if r := <-goCredit(lc, "a", "k"); r.err != nil {
			t.Fatalf("call with the store down: %v", r.err)
		}
	}
	if n := g.runsOf("k"); n != 2 {
		t.Fatalf("handler ran %d times, want 2 (no dedup without a store)", n)
	}
	if n := i.StoreErrors(); n != 2 {
		t.Fatalf("StoreErrors = %d", n)
	}
	if got := log.String(); !bytes.Contains([]byte(got), []byte("WITHOUT deduplication")) {
		t.Fatalf("log: %q", got)
	}

	closed := New(WithStore(brokenStore{}), WithFailClosed(), WithLogger(logger))
	lc = setup(t, closed, g)
	if r := <-goCredit(lc, "a", "refused"); tether.CodeOf(r.err) != tether.CodeUnavailable {
		t.Fatalf("fail-closed: %v", r.err)
	}
	if n := g.runsOf("refused"); n != 0 {
		t.Fatalf("fail-closed ran the handler %d times", n)
	}
}

// A store full of running claims refuses a new key with unavailable, and
// the handler does not run.
func TestStoreFullRefuses(t *testing.T) {
	store := NewMemoryStore(1)
	g := newGated()
	lc := setup(t, New(WithStore(store)), g)
	first := goCredit(lc, "slow", "one")
	waitFor(t, "the first call to run", func() bool { return g.runsOf("one") == 1 })
	if r := <-goCredit(lc, "a", "two"); tether.CodeOf(r.err) != tether.CodeUnavailable {
		t.Fatalf("second key: %v", r.err)
	}
	close(g.release)
	if r := <-first; r.err != nil {
		t.Fatal(r.err)
	}
	// The settled result makes room.
	if r := <-goCredit(lc, "a", "two"); r.err != nil {
		t.Fatal(r.err)
	}
	if n := g.runsOf("two"); n != 1 {
		t.Fatalf("handler ran %d times for the refused key", n)
	}
}

func TestResultEncoding(t *testing.T) {
	e := tether.Errorf(tether.CodeNotFound, "no such account %q", "x")
	if err := e.AddDetail(wrapperspb.String("detail")); err != nil {
		t.Fatal(err)
	}
	e = e.WithMeta(tether.Metadata{"x-trailer": {"1", "2"}})
	hdr := tether.Metadata{"x-h": {"a", "b"}, "x-raw-bin": {"\x00\xff"}}
	trl := tether.Metadata{"x-t": {"c"}}
	for _, tc := range []struct {
		res      proto.Message
		err      error
		hdr, trl tether.Metadata
	}{
		{wrapperspb.Int64(42), nil, nil, nil},
		{wrapperspb.Int64(42), nil, hdr, trl},
		{nil, nil, nil, nil},
		{nil, nil, nil, trl},
		{nil, e, nil, nil},
		{nil, e, hdr, trl},
	} {
		b, err := encodeResult(tc.res, tc.err, tc.hdr, tc.trl)
		if err != nil {
			t.Fatal(err)
		}
		res, gotHdr, gotTrl, gotErr := decodeResult(b)
		if !proto.Equal(res, tc.res) && !(res == nil && tc.res == nil) {
			t.Fatalf("response %v, want %v", res, tc.res)
		}
		if !reflect.DeepEqual(gotHdr, tc.hdr) || !reflect.DeepEqual(gotTrl, tc.trl) {
			t.Fatalf("headers %v, trailers %v; want %v, %v", gotHdr, gotTrl, tc.hdr, tc.trl)
		}
		if tc.err == nil {
			if gotErr != nil {
				t.Fatal(gotErr)
			}
			continue
		}
		ge := tether.AsError(gotErr)
		if ge.Code() != e.Code() || ge.Message() != e.Message() || len(ge.Details()) != 1 || ge.Meta().Get("x-trailer") != "1" || len(ge.Meta()["x-trailer"]) != 2 {
			t.Fatalf("error %v (%v, %v), want %v", ge, ge.Details(), ge.Meta(), e)
		}
	}
	if _, _, _, err := decodeResult([]byte{0xff}); tether.CodeOf(err) != tether.CodeInternal {
		t.Fatalf("garbage: %v", err)
	}
}

// Results written by the version before response headers and trailers
// were stored still decode (the bytes below are what it wrote for
// wrapperspb.Int64(42)), and fields a later version adds are skipped, as
// the earlier version skips 5 and 6.
func TestResultEncodingCompatible(t *testing.T) {
	old := []byte("\x08\x01\x1a\x1agoogle.protobuf.Int64Value\x22\x02\x08\x2a")
	res, hdr, trl, err := decodeResult(old)
	if err != nil || !proto.Equal(res, wrapperspb.Int64(42)) || hdr != nil || trl != nil {
		t.Fatalf("old result: %v %v %v %v", res, hdr, trl, err)
	}
	if b, _ := encodeResult(wrapperspb.Int64(42), nil, nil, nil); !bytes.Equal(b, old) {
		t.Fatalf("a result without headers encodes as %q, not as before", b)
	}
	later := append(append([]byte(nil), old...), 0x3a, 0x01, 'z') // field 7, bytes
	if res, _, _, err := decodeResult(later); err != nil || !proto.Equal(res, wrapperspb.Int64(42)) {
		t.Fatalf("result with a later field: %v %v", res, err)
	}
}
