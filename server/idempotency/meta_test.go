package idempotency

import (
	"context"
	"reflect"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/ledger"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
)

// metaCredit sets response headers and trailers that differ on every run,
// so that a repeat answered by running the handler again would show.
type metaCredit struct {
	ledger.Handler
	runs atomic.Int64
}

func (m *metaCredit) Credit(ctx context.Context, req *ledgerv1.CreditRequest) (*ledgerv1.CreditResponse, error) {
	n := strconv.FormatInt(m.runs.Add(1), 10)
	ci, _ := server.CallInfoFromContext(ctx)
	ci.ResponseHeader().Set("x-run", n)
	ci.ResponseHeader().Add("x-multi", "a")
	ci.ResponseHeader().Add("x-multi", "b")
	ci.ResponseHeader().Set("x-raw-bin", "\x00\xff"+n)
	ci.ResponseTrailer().Set("x-trailer-run", n)
	if req.GetAmount() == 0 {
		// An answer that is an error: the handler's trailers and the
		// error's own.
		return nil, tether.Errorf(tether.CodeInvalidArgument, "zero amount").WithMeta(tether.Metadata{"x-err": {n}})
	}
	return m.Handler.Credit(ctx, req)
}

type answer struct {
	balance  int64
	code     tether.Code
	hdr, trl tether.Metadata
}

func creditWithMeta(t *testing.T, lc ledgerv1.LedgerServiceClient, amount int64, key string) answer {
	t.Helper()
	var a answer
	res, err := lc.Credit(context.Background(), &ledgerv1.CreditRequest{Account: "m", Amount: amount},
		client.WithIdempotencyKey(key), client.WithResponseHeader(&a.hdr), client.WithResponseTrailer(&a.trl))
	a.balance, a.code = res.GetBalance(), tether.CodeOf(err)
	return a
}

// A repeat answered from the cache or the store carries the same response
// headers and trailers as the first answer, for responses and for errors
// that are answers.
func TestRepeatReplaysHeadersAndTrailers(t *testing.T) {
	for _, tc := range []struct {
		name string
		mk   func() [2]*Interceptor // the servers of the first call and of the repeat
	}{
		{"cache", func() [2]*Interceptor { i := New(); return [2]*Interceptor{i, i} }},
		{"store", func() [2]*Interceptor {
			s := NewMemoryStore(0)
			return [2]*Interceptor{New(WithStore(s)), New(WithStore(s))}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &metaCredit{Handler: ledger.Handler{Book: ledger.NewBook()}}
			is := tc.mk()
			first := setup(t, is[0], h)
			repeat := setup(t, is[1], h)
			for _, amount := range []int64{5, 0} {
				key := "k" + strconv.FormatInt(amount, 10)
				a := creditWithMeta(t, first, amount, key)
				b := creditWithMeta(t, repeat, amount, key)
				if a.hdr.Get("x-run") == "" || a.trl.Get("x-trailer-run") == "" || len(a.hdr.Values("x-multi")) != 2 {
					t.Fatalf("amount %d: first answer lacks the handler's metadata: %v %v", amount, a.hdr, a.trl)
				}
				if amount == 0 && (a.code != tether.CodeInvalidArgument || a.trl.Get("x-err") == "") {
					t.Fatalf("first error answer: %v, trailers %v", a.code, a.trl)
				}
				if !reflect.DeepEqual(a, b) {
					t.Fatalf("amount %d: repeat %+v, first %+v", amount, b, a)
				}
			}
			if n := h.runs.Load(); n != 2 {
				t.Fatalf("handler ran %d times, want 2", n)
			}
		})
	}
}

// Stored headers and trailers count against WithMaxBytes.
func TestHeadersCountAgainstMaxBytes(t *testing.T) {
	i := New()
	h := &metaCredit{Handler: ledger.Handler{Book: ledger.NewBook()}}
	lc := setup(t, i, h)
	creditWithMeta(t, lc, 5, "k")
	s := i.snapshot()
	for k, e := range s.entries {
		min := entryOverhead + len(k.principal) + len(k.procedure) + len(k.key) + len("x-run") + len("x-multi") + len("x-raw-bin") + len("x-trailer-run")
		if e.size < min+5*headerOverhead {
			t.Fatalf("entry of %d bytes does not count its headers and trailers (at least %d)", e.size, min+5*headerOverhead)
		}
	}
}
