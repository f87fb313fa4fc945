package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/tetherrpc/tether"
	chaosv1 "github.com/tetherrpc/tether/gen/tether/testing/chaos/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/idempotency"
)

// Method names in the effect log.
const (
	MethodCredit   = "credit"
	MethodPut      = "put"
	MethodBatch    = "batch"
	MethodTransfer = "transfer"
)

// Ledger implements chaosv1.ChaosLedgerServiceHandler on an EffectLog. Every
// effect goes through the log with its key: Credit with the call's
// idempotency key, Put with the entry's id, Batch with the call's key, and
// each Transfer request with the call's key and the request's sequence
// number. The log refuses a key it has seen, so each effect is exactly-once
// forever (design.md: the key stored in the same step as the effect); a
// handler run that finds its key is logged as a rerun, which tells the
// checker that the idempotency interceptor let a repeat through.
type Ledger struct {
	chaosv1.UnimplementedChaosLedgerServiceHandler
	Log *EffectLog
	// Epoch is the server incarnation the ledger serves: its handlers'
	// effects carry it, even those that finish after a newer incarnation
	// started.
	Epoch int

	hold func() // tests: Credit runs it between its fault's sleep and the effect
}

// callKey returns the call's idempotency key and principal.
func callKey(ctx context.Context) (key, principal string) {
	ci, ok := server.CallInfoFromContext(ctx)
	if !ok {
		return "", ""
	}
	if p := ci.Peer().Principal; p != nil {
		principal = fmt.Sprint(p)
	}
	return ci.RequestHeader().Get(tether.MetadataIdempotencyKey), principal
}

// before runs the part of a Fault that comes before the effect: a sleep that
// ends early, with the context's error, when the call ends; then a panic.
func before(ctx context.Context, f *chaosv1.Fault) error {
	if d := f.GetSleepMillis(); d > 0 {
		t := time.NewTimer(time.Duration(d) * time.Millisecond)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	if f.GetPanicBefore() {
		panic("chaos: injected panic before the effect")
	}
	return nil
}

func after(f *chaosv1.Fault) {
	if f.GetPanicAfter() {
		panic("chaos: injected panic after the effect")
	}
}

func (l *Ledger) apply(method, key, principal, account string, amount int64) (int64, error) {
	if key == "" {
		return 0, tether.Errorf(tether.CodeInvalidArgument, "chaos: %s without an idempotency key", method)
	}
	_, bal, err := l.Log.Apply(l.Epoch, method, key, principal, account, amount)
	if err != nil {
		return 0, tether.Errorf(tether.CodeInternal, "chaos: effect log: %v", err)
	}
	return bal, nil
}

// Credit adds the amount to the account once per idempotency key.
func (l *Ledger) Credit(ctx context.Context, req *chaosv1.CreditRequest) (*chaosv1.CreditResponse, error) {
	key, principal := callKey(ctx)
	defer l.Log.Begin(l.Epoch, MethodCredit, key, principal)()
	if err := before(ctx, req.GetFault()); err != nil {
		return nil, err
	}
	if l.hold != nil {
		l.hold()
	}
	bal, err := l.apply(MethodCredit, key, principal, req.GetAccount(), req.GetAmount())
	if err != nil {
		return nil, err
	}
	after(req.GetFault())
	return &chaosv1.CreditResponse{Balance: bal}, nil
}

// Put stores the entry once per id.
func (l *Ledger) Put(ctx context.Context, req *chaosv1.PutRequest) (*chaosv1.PutResponse, error) {
	_, principal := callKey(ctx)
	if err := before(ctx, req.GetFault()); err != nil {
		return nil, err
	}
	if req.GetId() == "" {
		return nil, tether.Errorf(tether.CodeInvalidArgument, "chaos: id is required")
	}
	created, _, err := l.Log.Apply(l.Epoch, MethodPut, req.GetId(), principal, req.GetAccount(), req.GetAmount())
	if err != nil {
		return nil, tether.Errorf(tether.CodeInternal, "chaos: effect log: %v", err)
	}
	after(req.GetFault())
	return &chaosv1.PutResponse{Created: created}, nil
}

// Get reads an account.
func (l *Ledger) Get(ctx context.Context, req *chaosv1.GetRequest) (*chaosv1.GetResponse, error) {
	bal, n := l.Log.Balance(req.GetAccount())
	return &chaosv1.GetResponse{Balance: bal, Effects: n}, nil
}

// Watch sends the account's balance count times.
func (l *Ledger) Watch(ctx context.Context, req *chaosv1.WatchRequest, stream *server.ServerStream[chaosv1.WatchResponse]) error {
	if err := before(ctx, req.GetFault()); err != nil {
		return err
	}
	for i := range req.GetCount() {
		bal, _ := l.Log.Balance(req.GetAccount())
		if err := stream.Send(&chaosv1.WatchResponse{Seq: i, Balance: bal, Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
	after(req.GetFault())
	return nil
}

// Batch applies the sum of its requests as one effect, once per call key.
func (l *Ledger) Batch(ctx context.Context, stream *server.ClientStream[chaosv1.BatchRequest]) (*chaosv1.BatchResponse, error) {
	key, principal := callKey(ctx)
	defer l.Log.Begin(l.Epoch, MethodBatch, key, principal)()
	var total int64
	var n uint32
	var account string
	var fault *chaosv1.Fault
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			account, fault = req.GetAccount(), req.GetFault()
		}
		total += req.GetAmount()
		n++
	}
	if err := before(ctx, fault); err != nil {
		return nil, err
	}
	if _, err := l.apply(MethodBatch, key, principal, account, total); err != nil {
		return nil, err
	}
	after(fault)
	return &chaosv1.BatchResponse{Total: total, Count: n}, nil
}

// TransferKey is the effect key of one Transfer request.
func TransferKey(callKey string, seq uint32) string { return fmt.Sprintf("%s/%d", callKey, seq) }

// Transfer applies each request as an effect keyed by the call's key and
// the request's sequence number, then acknowledges it.
func (l *Ledger) Transfer(ctx context.Context, stream *server.BidiStream[chaosv1.TransferRequest, chaosv1.TransferResponse]) error {
	key, principal := callKey(ctx)
	defer l.Log.Begin(l.Epoch, MethodTransfer, key, principal)()
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := before(ctx, req.GetFault()); err != nil {
			return err
		}
		bal, err := l.apply(MethodTransfer, TransferKey(key, req.GetSeq()), principal, req.GetAccount(), req.GetAmount())
		if err != nil {
			return err
		}
		after(req.GetFault())
		if err := stream.Send(&chaosv1.TransferResponse{Seq: req.GetSeq(), Balance: bal}); err != nil {
			return err
		}
	}
}

// Token returns the bearer token of the principal name: the checker's
// authenticator accepts "chaos-<name>" and names the principal <name>.
func Token(name string) string { return "chaos-" + name }

// NewServer returns a tether server for the ledger of incarnation epoch,
// with a fresh idempotency cache (as a new process would have),
// bearer-token authentication and a 1 MiB message limit. smallCache, when
// not zero, bounds the cache tightly (that many keys, 256 bytes a key,
// which is less than a key costs, and a 1 s TTL), so that eviction happens
// under load, also of keys whose first call is still running; zero keeps
// the default bounds (100,000 keys, 64 MiB), which a test run never fills,
// with a 24-hour TTL instead of 10 minutes, so that no key is forgotten by
// age during a long run's load and replays either (CheckConfig's
// NoEviction).
func NewServer(log *EffectLog, epoch, smallCache int, logger *slog.Logger) *server.Server {
	return newServer(&Ledger{Log: log, Epoch: epoch}, smallCache, logger)
}

func newServer(ledger *Ledger, smallCache int, logger *slog.Logger) *server.Server {
	log, epoch := ledger.Log, ledger.Epoch
	log.Started(epoch)
	idemOpts := []idempotency.Option{idempotency.WithTTL(24 * time.Hour)}
	if smallCache > 0 {
		idemOpts = []idempotency.Option{idempotency.WithMaxEntries(smallCache), idempotency.WithMaxBytes(smallCache * 256), idempotency.WithTTL(time.Second)}
	}
	srv := server.New(
		server.WithLogger(logger),
		server.WithInterceptors(idempotency.New(idemOpts...)),
		server.WithMaxMessageSize(1<<20),
		server.WithHeartbeat(500*time.Millisecond, time.Second),
		server.WithAuthenticator(server.BearerToken(func(r *http.Request, token string) (server.Identity, error) {
			name, ok := strings.CutPrefix(token, "chaos-")
			if !ok {
				return server.Identity{}, tether.Errorf(tether.CodeUnauthenticated, "unknown token")
			}
			return server.Identity{Principal: name}, nil
		})),
	)
	chaosv1.RegisterChaosLedgerServiceHandler(srv, ledger)
	return srv
}
