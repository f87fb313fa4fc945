package chaos

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	chaosv1 "github.com/tetherrpc/tether/gen/tether/testing/chaos/v1"
)

// Operation results in the history.
const (
	ResultOK        = "ok"
	ResultFail      = "fail"
	ResultParked    = "parked"
	ResultAbandoned = "abandoned"
	ResultReparked  = "reparked"
	ResultSkipped   = "skipped" // a dead letter not replayed: the replays' budget ran out
)

// Client-side fault kinds, drawn per operation.
const (
	FaultNone              = ""
	FaultCancel            = "cancel"              // cancel at a random time during the call
	FaultDeadline          = "deadline"            // a short deadline (5-80 ms)
	FaultSleep             = "sleep"               // the handler sleeps before the effect
	FaultPanicBefore       = "panic-before"        // the handler panics before the effect
	FaultPanicAfter        = "panic-after"         // the handler panics after the effect
	FaultPanicRetry        = "panic-retry"         // panic before the effect, then the application repeats the call with the same key
	FaultSlow              = "slow"                // a slow consumer of a stream
	FaultCancelBeforeClose = "cancel-before-close" // cancel a client stream, then try to send and close it
	FaultCancelMid         = "cancel-mid"          // cancel a bidi stream after some acknowledgements, then try to send more
	FaultAbandon           = "abandon"             // drop a stream without Close, with a context that never ends
	FaultDouble            = "double"              // the application sends the same call twice at once (a double click): a slow first, a second 50 ms later
)

// Op is one operation of a client's history: invoke, then ok / fail(code) /
// parked(dead-letter id), with its key.
type Op struct {
	Client string `json:"client"` // the principal
	Worker int    `json:"worker"`
	N      int    `json:"n"`
	Method string `json:"method"`
	Key    string `json:"key,omitempty"`
	Fault  string `json:"fault,omitempty"`
	Result string `json:"result"`
	Code   string `json:"code,omitempty"`
	DLQ    string `json:"dlq,omitempty"`
	Err    string `json:"err,omitempty"`
	// NoEffect: the caller's cancel returned before the request was
	// complete, so the call must have no effect.
	NoEffect bool `json:"no_effect,omitempty"`
	// Transfer: requests sent before the cancel, acknowledged, and sent
	// after the cancel returned.
	Sent            []uint32 `json:"sent,omitempty"`
	Acked           []uint32 `json:"acked,omitempty"`
	SentAfterCancel []uint32 `json:"sent_after_cancel,omitempty"`
	// Repeat: a second call with the same key made by the application.
	Repeat bool `json:"repeat,omitempty"`
}

// String describes the operation in one line, for violations and logs.
func (o Op) String() string {
	s := fmt.Sprintf("%s/w%d/#%d %s key=%s", o.Client, o.Worker, o.N, o.Method, o.Key)
	if o.Fault != "" {
		s += " fault=" + o.Fault
	}
	if o.Repeat {
		s += " (repeat)"
	}
	s += " -> " + o.Result
	if o.Code != "" {
		s += "(" + o.Code + ")"
	}
	if o.DLQ != "" {
		s += " dlq=" + o.DLQ
	}
	return s
}

// Workload is one client's share of the load: Workers goroutines, each with
// its own random source derived from Seed and Name, making operations until
// Until or MaxOps each.
type Workload struct {
	Client *client.Client
	Name   string
	Seed   uint64
	// Workers is the number of concurrent callers.
	Workers int
	Until   time.Time
	MaxOps  int
	// Disabled names client fault kinds not to inject.
	Disabled map[string]bool
	// Record receives every operation when it ends.
	Record func(Op)
}

// Run runs the workers and waits for them.
func (w *Workload) Run() {
	var wg sync.WaitGroup
	for i := range w.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := fnv.New64a()
			fmt.Fprintf(h, "%s/%d", w.Name, i)
			wk := &worker{w: w, id: i, r: rand.New(rand.NewPCG(w.Seed, h.Sum64())), cli: chaosv1.NewChaosLedgerServiceClient(w.Client)}
			for n := 0; n < w.MaxOps && time.Now().Before(w.Until); n++ {
				wk.op(n)
			}
		}()
	}
	wg.Wait()
}

type worker struct {
	w   *Workload
	id  int
	r   *rand.Rand
	cli chaosv1.ChaosLedgerServiceClient
}

type weighted struct {
	v string
	w int
}

func (wk *worker) pick(choices []weighted) string {
	total := 0
	for _, c := range choices {
		if !wk.w.Disabled[c.v] {
			total += c.w
		}
	}
	if total == 0 {
		return ""
	}
	n := wk.r.IntN(total)
	for _, c := range choices {
		if wk.w.Disabled[c.v] {
			continue
		}
		if n < c.w {
			return c.v
		}
		n -= c.w
	}
	return ""
}

var (
	methodWeights = []weighted{{MethodCredit, 30}, {MethodPut, 15}, {"get", 10}, {"watch", 10}, {MethodBatch, 15}, {MethodTransfer, 15}}
	faultWeights  = map[string][]weighted{
		MethodCredit:   {{FaultNone, 55}, {FaultDeadline, 10}, {FaultCancel, 10}, {FaultSleep, 8}, {FaultPanicBefore, 4}, {FaultPanicAfter, 4}, {FaultPanicRetry, 5}, {FaultDouble, 4}},
		MethodPut:      {{FaultNone, 60}, {FaultDeadline, 10}, {FaultCancel, 10}, {FaultSleep, 10}, {FaultPanicBefore, 5}, {FaultPanicAfter, 5}},
		"get":          {{FaultNone, 80}, {FaultDeadline, 20}},
		"watch":        {{FaultNone, 40}, {FaultSlow, 25}, {FaultCancel, 20}, {FaultDeadline, 10}, {FaultAbandon, 3}},
		MethodBatch:    {{FaultNone, 50}, {FaultCancelBeforeClose, 15}, {FaultCancel, 10}, {FaultDeadline, 10}, {FaultPanicBefore, 5}, {FaultPanicAfter, 5}, {FaultSleep, 5}},
		MethodTransfer: {{FaultNone, 50}, {FaultCancelMid, 20}, {FaultDeadline, 10}, {FaultPanicBefore, 5}, {FaultSlow, 10}, {FaultCancel, 5}},
	}
)

// callTimeout bounds every call that has no short deadline.
const callTimeout = 5 * time.Second

func (wk *worker) op(n int) {
	method := wk.pick(methodWeights)
	if method == "" {
		return
	}
	op := Op{Client: wk.w.Name, Worker: wk.id, N: n, Method: method, Fault: wk.pick(faultWeights[method])}
	if method != "get" && method != "watch" {
		op.Key = fmt.Sprintf("%s-w%d-%d", wk.w.Name, wk.id, n)
	}
	// Every random draw happens here, before the call, so that the same
	// seed makes the same operations whatever the timing.
	d := drawn{
		short:   time.Duration(5+wk.r.IntN(75)) * time.Millisecond,
		cancel:  time.Duration(wk.r.IntN(30)) * time.Millisecond,
		sleep:   uint32(10 + wk.r.IntN(1200)),
		count:   1 + wk.r.IntN(8),
		at:      wk.r.IntN(8),
		amount:  int64(1 + wk.r.IntN(100)),
		watchN:  uint32(1 + wk.r.IntN(50)),
		slowN:   uint32(100 + wk.r.IntN(300)),
		account: fmt.Sprintf("acct-%d", wk.r.IntN(4)),
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	switch op.Fault {
	case FaultDeadline:
		var c2 context.CancelFunc
		ctx, c2 = context.WithTimeout(ctx, d.short)
		defer c2()
	case FaultCancel:
		var c2 context.CancelFunc
		ctx, c2 = context.WithCancel(ctx)
		t := time.AfterFunc(d.cancel, c2)
		defer t.Stop()
		defer c2()
	}
	fault := &chaosv1.Fault{
		PanicBefore: op.Fault == FaultPanicBefore || op.Fault == FaultPanicRetry,
		PanicAfter:  op.Fault == FaultPanicAfter,
	}
	if op.Fault == FaultSleep {
		fault.SleepMillis = d.sleep
	}
	var err error
	switch method {
	case MethodCredit:
		if op.Fault == FaultDouble {
			// The first call runs 1.5 s (longer than the small cache's
			// TTL); the second, with the same key, arrives while it runs and
			// must wait for its result, not run the handler again.
			fault.SleepMillis = 1500
			done := make(chan struct{})
			go func() {
				defer close(done)
				time.Sleep(50 * time.Millisecond)
				_, err := wk.cli.Credit(ctx, &chaosv1.CreditRequest{Account: d.account, Amount: d.amount}, client.WithIdempotencyKey(op.Key))
				rep := Op{Client: op.Client, Worker: op.Worker, N: op.N, Method: op.Method, Key: op.Key, Fault: op.Fault, Repeat: true}
				wk.finish(&rep, err)
			}()
			defer func() { <-done }()
		}
		_, err = wk.cli.Credit(ctx, &chaosv1.CreditRequest{Account: d.account, Amount: d.amount, Fault: fault}, client.WithIdempotencyKey(op.Key))
		wk.finish(&op, err)
		if op.Fault == FaultPanicRetry && op.Result == ResultFail {
			// The application repeats the call with the same key; the
			// first run panicked, so the repeat must be answered (the
			// cached error or a new run), not wait for ever.
			rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err = wk.cli.Credit(rctx, &chaosv1.CreditRequest{Account: d.account, Amount: d.amount}, client.WithIdempotencyKey(op.Key))
			rcancel()
			rep := Op{Client: op.Client, Worker: op.Worker, N: op.N, Method: op.Method, Key: op.Key, Fault: op.Fault, Repeat: true}
			wk.finish(&rep, err)
		}
		return
	case MethodPut:
		_, err = wk.cli.Put(ctx, &chaosv1.PutRequest{Id: op.Key, Account: d.account, Amount: d.amount, Fault: fault})
	case "get":
		_, err = wk.cli.Get(ctx, &chaosv1.GetRequest{Account: d.account})
	case "watch":
		err = wk.watch(ctx, &op, d)
		if op.Result == ResultAbandoned {
			wk.w.Record(op)
			return
		}
	case MethodBatch:
		err = wk.batch(ctx, cancel, &op, d, fault)
	case MethodTransfer:
		err = wk.transfer(ctx, cancel, &op, d, fault)
	}
	wk.finish(&op, err)
}

type drawn struct {
	short, cancel time.Duration
	sleep         uint32
	count, at     int
	amount        int64
	watchN, slowN uint32
	account       string
}

func (wk *worker) finish(op *Op, err error) {
	var dl *client.DeadLetterError
	switch {
	case err == nil:
		op.Result = ResultOK
	case errors.As(err, &dl):
		op.Result, op.DLQ = ResultParked, dl.ID
		op.Code = tether.CodeOf(dl.Err).String()
	default:
		op.Result, op.Code, op.Err = ResultFail, tether.CodeOf(err).String(), err.Error()
	}
	wk.w.Record(*op)
}

func (wk *worker) watch(ctx context.Context, op *Op, d drawn) error {
	req := &chaosv1.WatchRequest{Account: d.account, Count: d.watchN}
	if op.Fault == FaultSlow {
		req.Count, req.Payload = d.slowN, make([]byte, 1024)
	}
	if op.Fault == FaultAbandon {
		// A stream the caller drops without Close, without reading to the
		// end, with a context that never ends.
		req.Count = 1 << 20
		s, err := wk.cli.Watch(context.Background(), req)
		if err != nil {
			return err
		}
		if _, err := s.Receive(); err != nil {
			s.Close()
			return err
		}
		op.Result = ResultAbandoned // s is dropped here, never closed
		return nil
	}
	s, err := wk.cli.Watch(ctx, req)
	if err != nil {
		return err
	}
	defer s.Close()
	for i := 0; ; i++ {
		if op.Fault == FaultCancel && i == d.at {
			return s.Close() // stop reading in the middle: Close cancels
		}
		if _, err := s.Receive(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if op.Fault == FaultSlow && i%16 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}

func (wk *worker) batch(ctx context.Context, cancel context.CancelFunc, op *Op, d drawn, fault *chaosv1.Fault) error {
	s, err := wk.cli.Batch(ctx, client.WithIdempotencyKey(op.Key))
	if err != nil {
		return err
	}
	defer s.Close()
	for i := range d.count {
		if op.Fault == FaultCancelBeforeClose && i == d.at%d.count {
			// cancel has returned before the request is complete: from now
			// on nothing but a RESET may leave for this stream, so the
			// call must have no effect whatever Send and CloseAndReceive
			// return.
			cancel()
			op.NoEffect = true
		}
		req := &chaosv1.BatchRequest{Account: d.account, Amount: d.amount}
		if i == 0 {
			req.Fault = fault
		}
		if err := s.Send(req); err != nil {
			if errors.Is(err, io.EOF) {
				break // the server ended the call: its status follows
			}
			return err
		}
	}
	_, err = s.CloseAndReceive()
	return err
}

func (wk *worker) transfer(ctx context.Context, cancel context.CancelFunc, op *Op, d drawn, fault *chaosv1.Fault) error {
	s, err := wk.cli.Transfer(ctx, client.WithIdempotencyKey(op.Key))
	if err != nil {
		return err
	}
	defer s.Close()
	canceled := false
	for i := range d.count {
		seq := uint32(i)
		if op.Fault == FaultCancelMid && i == d.at%d.count {
			cancel()
			canceled = true
		}
		req := &chaosv1.TransferRequest{Seq: seq, Account: d.account, Amount: d.amount}
		if i == d.count-1 {
			req.Fault = fault
		}
		if canceled {
			op.SentAfterCancel = append(op.SentAfterCancel, seq)
		} else {
			op.Sent = append(op.Sent, seq)
		}
		if err := s.Send(req); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return err
		}
		res, err := s.Receive()
		if err != nil {
			return err
		}
		if !canceled {
			op.Acked = append(op.Acked, res.GetSeq())
		}
		if op.Fault == FaultSlow {
			time.Sleep(2 * time.Millisecond)
		}
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	for {
		if _, err := s.Receive(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}
