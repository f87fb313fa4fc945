// Package ledger implements example.ledger.v1.LedgerService, the example of
// tether's resilience features. Its state lives in a Book that outlives any
// one server, as a database would, so that tests and the demo can restart
// the server and count how often each call was applied.
package ledger

import (
	"context"
	"sync"

	"github.com/tetherrpc/tether"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
)

// Book is the ledger's state: balances, recorded entries, and how many times
// each idempotency key was applied.
type Book struct {
	mu       sync.Mutex
	balances map[string]int64
	credits  map[string]int64
	records  map[string]*ledgerv1.RecordRequest
	applied  map[string]int // idempotency key -> times the effect ran
}

// NewBook returns an empty ledger.
func NewBook() *Book {
	return &Book{
		balances: map[string]int64{},
		credits:  map[string]int64{},
		records:  map[string]*ledgerv1.RecordRequest{},
		applied:  map[string]int{},
	}
}

// Applied returns how many times the call with this idempotency key changed
// the ledger.
func (b *Book) Applied(key string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.applied[key]
}

// AppliedKeys returns the number of distinct keys applied and the total
// number of applications.
func (b *Book) AppliedKeys() (keys, total int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range b.applied {
		total += n
	}
	return len(b.applied), total
}

// Records returns the number of entries recorded.
func (b *Book) Records() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.records)
}

// Handler serves a Book.
type Handler struct {
	ledgerv1.UnimplementedLedgerServiceHandler
	Book *Book
}

// Credit adds the amount to the account. It is applied on every call that
// reaches it: deduplication is the idempotency interceptor's job.
func (h *Handler) Credit(ctx context.Context, req *ledgerv1.CreditRequest) (*ledgerv1.CreditResponse, error) {
	if req.GetAccount() == "" {
		return nil, tether.Errorf(tether.CodeInvalidArgument, "account is required")
	}
	key := ""
	if ci, ok := server.CallInfoFromContext(ctx); ok {
		key = ci.RequestHeader().Get(tether.MetadataIdempotencyKey)
	}
	b := h.Book
	b.mu.Lock()
	defer b.mu.Unlock()
	b.balances[req.GetAccount()] += req.GetAmount()
	b.credits[req.GetAccount()]++
	if key != "" {
		b.applied[key]++
	}
	return &ledgerv1.CreditResponse{Balance: b.balances[req.GetAccount()]}, nil
}

// Record stores the entry under its id; a repeat changes nothing.
func (h *Handler) Record(ctx context.Context, req *ledgerv1.RecordRequest) (*ledgerv1.RecordResponse, error) {
	if req.GetId() == "" {
		return nil, tether.Errorf(tether.CodeInvalidArgument, "id is required")
	}
	b := h.Book
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.records[req.GetId()]; ok {
		return &ledgerv1.RecordResponse{Created: false}, nil
	}
	b.records[req.GetId()] = req
	b.balances[req.GetAccount()] += req.GetAmount()
	return &ledgerv1.RecordResponse{Created: true}, nil
}

// Balance reads an account.
func (h *Handler) Balance(ctx context.Context, req *ledgerv1.BalanceRequest) (*ledgerv1.BalanceResponse, error) {
	b := h.Book
	b.mu.Lock()
	defer b.mu.Unlock()
	var records int64
	for _, r := range b.records {
		if r.GetAccount() == req.GetAccount() {
			records++
		}
	}
	return &ledgerv1.BalanceResponse{Balance: b.balances[req.GetAccount()], Credits: b.credits[req.GetAccount()], Records: records}, nil
}
