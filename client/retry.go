package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/clientconn"
	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/internal/mux"
)

// RetryPolicy says how a method's calls are retried and what happens to a
// call that exhausts its attempts: an alias of clientconn.RetryPolicy, which
// generated code fills from the method's (tether.v1.retry) option.
type RetryPolicy = clientconn.RetryPolicy

// ErrDeadLettered is matched, with errors.Is, by the error of a call that was
// parked in the dead-letter queue. errors.As with *DeadLetterError gives the
// entry's ID; tether.CodeOf gives the code of the last attempt.
var ErrDeadLettered = errors.New("tether: call parked in the dead-letter queue")

// DeadLetterError is the error of a call that was parked in the dead-letter
// queue.
type DeadLetterError struct {
	// ID is the dead-letter entry's ID, for `tether dlq show ID`.
	ID string
	// Err is the error of the last attempt.
	Err error
}

// Error says the call was dead-lettered, under which ID, and why.
func (e *DeadLetterError) Error() string {
	return fmt.Sprintf("tether: call parked in the dead-letter queue as %s: %v", e.ID, e.Err)
}

// Unwrap returns ErrDeadLettered and the last attempt's error.
func (e *DeadLetterError) Unwrap() []error { return []error{ErrDeadLettered, e.Err} }

// maxTransparentRetries bounds retries of requests that never reached the
// server, so that a server refusing every call cannot spin a client.
const maxTransparentRetries = 10

// Default retryable codes: for methods safe to repeat, and for methods that
// declare a policy without codes.
var (
	safeRetryCodes     = []tether.Code{tether.CodeUnavailable, tether.CodeAborted}
	declaredRetryCodes = []tether.Code{tether.CodeUnavailable}
)

// policy is a RetryPolicy with its defaults applied.
type policy struct {
	maxAttempts int
	initial     time.Duration
	max         time.Duration
	mult        float64
	codes       []tether.Code
	deadLetter  bool
	// afterWire: retries are allowed once the request reached the server.
	afterWire bool
}

func (c *Client) policyFor(m *Method, co *callOptions) policy {
	declared := m.Retry
	if co.RetryPolicy != nil {
		declared = co.RetryPolicy
	}
	if declared == nil && m.Spec.StreamType == tether.StreamTypeUnary {
		// The client-wide default asserts dedup by key, which
		// server/idempotency gives unary calls only: a stream of a method
		// that is not safe to repeat is not retried after it reached the
		// server on the default's say-so (WithDefaultRetryPolicy).
		declared = c.cfg.defaultRetry
	}
	safe := m.Spec.IdempotencyLevel == tether.IdempotencyNoSideEffects || m.Spec.IdempotencyLevel == tether.IdempotencyIdempotent
	p := policy{
		initial:   100 * time.Millisecond,
		max:       5 * time.Second,
		mult:      2,
		afterWire: safe || declared != nil,
	}
	if safe {
		p.codes = safeRetryCodes
	} else {
		p.codes = declaredRetryCodes
	}
	p.maxAttempts = 1
	if p.afterWire {
		p.maxAttempts = 3
	}
	if declared != nil {
		if declared.MaxAttempts > 0 {
			p.maxAttempts = declared.MaxAttempts
		}
		if declared.InitialBackoff > 0 {
			p.initial = declared.InitialBackoff
		}
		if declared.MaxBackoff > 0 {
			p.max = declared.MaxBackoff
		}
		if declared.BackoffMultiplier >= 1 {
			p.mult = declared.BackoffMultiplier
		}
		if len(declared.RetryableCodes) > 0 {
			p.codes = declared.RetryableCodes
		}
		p.deadLetter = declared.DeadLetter
	}
	if co.NoRetry || co.replay {
		p.maxAttempts = 1
	}
	if co.replay {
		// A replay updates the entry it replays (dlq.Replay); parking a
		// copy would make the queue grow with every failed replay.
		p.deadLetter = false
	}
	return p
}

// delay returns the jittered backoff before retry number n (1 for the first
// retry).
func (p policy) delay(n int) time.Duration {
	d := float64(p.initial) * math.Pow(p.mult, float64(n-1))
	if d > float64(p.max) {
		d = float64(p.max)
	}
	return time.Duration(mrand.Int64N(int64(d) + 1))
}

func (p policy) retryable(err error) bool {
	return p.afterWire && slices.Contains(p.codes, tether.CodeOf(err))
}

// deliveryFailure reports whether err means the call may not have been
// delivered or answered, so that a replay could still succeed: the
// connection failed, the server was unavailable or overloaded, or time ran
// out. A definite answer from the handler (not_found, invalid_argument, ...)
// is not a delivery failure: replaying it would give the same answer.
func (p policy) deliveryFailure(err error) bool {
	if errors.Is(err, mux.ErrUnprocessed) {
		return true
	}
	switch tether.CodeOf(err) {
	case tether.CodeUnavailable, tether.CodeDeadlineExceeded, tether.CodeResourceExhausted, tether.CodeAborted:
		return true
	}
	return slices.Contains(p.codes, tether.CodeOf(err))
}

// retryBudget throttles retries when many calls fail, as gRPC's
// retryThrottling does: every failed attempt takes a token, every success
// gives back Ratio of one, and retries are allowed only while more than half
// of the tokens remain. When a server fails every call, retries stop after
// MaxTokens/2 failures, and the server sees about one attempt per call
// instead of MaxAttempts.
type retryBudget struct {
	mu     sync.Mutex
	tokens float64
	max    float64
	ratio  float64
}

// RetryBudget configures the client's retry throttling (WithRetryBudget).
type RetryBudget struct {
	// MaxTokens is the bucket size (default 100).
	MaxTokens float64
	// Ratio is the tokens a success gives back (default 0.1).
	Ratio float64
}

func newRetryBudget(b RetryBudget) *retryBudget {
	if b.MaxTokens <= 0 {
		b.MaxTokens = 100
	}
	if b.Ratio <= 0 {
		b.Ratio = 0.1
	}
	return &retryBudget{tokens: b.MaxTokens, max: b.MaxTokens, ratio: b.Ratio}
}

func (b *retryBudget) success() {
	b.mu.Lock()
	b.tokens = min(b.max, b.tokens+b.ratio)
	b.mu.Unlock()
}

func (b *retryBudget) failure() {
	b.mu.Lock()
	b.tokens = max(0, b.tokens-1)
	b.mu.Unlock()
}

func (b *retryBudget) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tokens > b.max/2
}

// idempotencyKeyBytes is the randomness of a generated idempotency key.
const idempotencyKeyBytes = 16

// NewIdempotencyKey returns a random key for a logical call: 128 bits, hex.
func NewIdempotencyKey() string {
	var b [2 * idempotencyKeyBytes]byte
	newKeyInto(&b)
	return string(b[:])
}

// newKeyInto writes a new key, hex, into dst.
func newKeyInto(dst *[2 * idempotencyKeyBytes]byte) {
	var b [idempotencyKeyBytes]byte
	_, _ = rand.Read(b[:])
	hex.Encode(dst[:], b[:])
}

// ensureIdempotencyKey gives the call a key unless it has one (set by the
// caller with WithIdempotencyKey, or by a dead-letter replay). Reads with no
// side effects need none. A call that may (Call.inlineKey) keeps it in
// Call.key, the others in their Header; idempotencyMetadata gives the
// metadata with the key wherever it is.
func ensureIdempotencyKey(call *Call) {
	if call.Spec.IdempotencyLevel == tether.IdempotencyNoSideEffects {
		return
	}
	if call.key != "" || call.Header.Get(tether.MetadataIdempotencyKey) != "" {
		return
	}
	if call.inlineKey {
		newKeyInto(&call.keyBuf)
		// A string over the call's own buffer, valid while the call
		// runs: the Call is reused once the call has returned
		// (unaryCall), so whatever keeps the key longer copies it
		// (requestMetadata).
		call.key = unsafe.String(&call.keyBuf[0], len(call.keyBuf))
		return
	}
	call.Header.Set(tether.MetadataIdempotencyKey, NewIdempotencyKey())
}

// requestMetadata returns a copy of the call's request metadata, with its
// inline idempotency key if it has one; never nil.
func (call *Call) requestMetadata() tether.Metadata {
	md := call.Header.Clone()
	if md == nil {
		md = tether.Metadata{}
	}
	if call.key != "" {
		// A copy: call.key is over the Call's buffer (ensureIdempotencyKey).
		md.Set(tether.MetadataIdempotencyKey, strings.Clone(call.key))
	}
	return md
}

// transparentDelay spreads retries of refused requests: a random wait that
// doubles from 5ms per retry, capped at 1s, so a server at its stream limit
// is not hammered.
func transparentDelay(n int) time.Duration {
	d := min(time.Second, 5*time.Millisecond<<min(n, 10))
	return time.Duration(mrand.Int64N(int64(d) + 1))
}

// sleepCtx waits d unless ctx ends first; it reports whether it waited.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// deadlinePassed is the error of a call or stream whose context's deadline
// the clock has passed before it was opened: the context's cause, as for
// any call its context ended (a *tether.Error; the caller may have set it
// with context.WithDeadlineCause). The context's own timer, which ends it
// and sets the cause, may not have run yet: a busy process runs timers
// late (by a tenth of a second under the race detector on 2 loaded CPUs),
// so this waits for it. A Context whose Done does not close after its
// deadline, against the interface's contract, gets tether's own error after
// maxDeadlineLag.
func deadlinePassed(ctx context.Context) error {
	if ctx.Err() == nil {
		t := time.NewTimer(maxDeadlineLag)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
			return tether.Errorf(tether.CodeDeadlineExceeded, "tether: deadline exceeded before the call started")
		}
	}
	return tether.AsError(context.Cause(ctx))
}

// maxDeadlineLag is how long deadlinePassed waits for a context whose
// deadline has passed to end (a variable for the tests).
var maxDeadlineLag = time.Second

// fitsDeadline reports whether waiting d leaves time for another attempt.
func fitsDeadline(ctx context.Context, d time.Duration) bool {
	dl, ok := ctx.Deadline()
	return !ok || time.Until(dl) > d
}

// invokeUnary runs one logical unary call: every attempt the retry policy
// allows, then the dead-letter queue if the policy says so. The response is
// decoded into res; decErr is the decoding's error (unaryAttempt).
func (c *Client) invokeUnary(ctx context.Context, m *Method, co *callOptions, call *Call, req []byte, res proto.Message) (decErr, err error) {
	p := c.policyFor(m, co)
	ensureIdempotencyKey(call)
	var started time.Time // for the dead letter; a clock reading costs ~100 ns
	if p.deadLetter {
		started = time.Now()
	}
	attempts, transparent := 0, 0
	var lastErr error
	for {
		attempts++
		if attempts+transparent > 1 {
			if call.Header == nil {
				call.Header = tether.Metadata{}
			}
			call.Header.Set(tether.MetadataAttempt, strconv.Itoa(attempts+transparent))
		}
		decErr, err := c.unaryAttempt(ctx, co, call, req, res)
		if err == nil {
			c.budget.success()
			return decErr, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			if tether.CodeOf(err) == tether.CodeUnavailable {
				// The connection was lost as the caller canceled (or the
				// deadline passed): the caller's decision is the outcome,
				// not the lost attempt's unavailable.
				lastErr = tether.AsError(context.Cause(ctx))
			}
			break
		}
		if errors.Is(err, mux.ErrUnprocessed) && transparent < maxTransparentRetries {
			// Never reached a handler: always safe. Waiting for the next
			// connection happens in getConn; a short jitter spreads calls
			// refused by a busy server.
			attempts--
			transparent++
			c.counters.retries.Add(1)
			if !sleepCtx(ctx, transparentDelay(transparent)) {
				break
			}
			continue
		}
		if !p.retryable(err) {
			break
		}
		c.budget.failure()
		if attempts >= p.maxAttempts || !c.budget.allow() {
			break
		}
		d := p.delay(attempts)
		if !fitsDeadline(ctx, d) || !sleepCtx(ctx, d) {
			break
		}
		c.counters.retries.Add(1)
	}
	if p.deadLetter && p.deliveryFailure(lastErr) && !errors.Is(ctx.Err(), context.Canceled) {
		return nil, c.deadLetter(call, req, attempts+transparent, lastErr, started)
	}
	return nil, lastErr
}

// deadLetter writes the call to the dead-letter queue before the caller is
// answered, and returns the caller's error.
func (c *Client) deadLetter(call *Call, req []byte, attempts int, cause error, started time.Time) error {
	if c.cfg.dlq == nil {
		c.cfg.logger.Warn("tether: call should be dead-lettered but the client has no dead-letter queue (WithDeadLetterQueue)", "procedure", call.Spec.Procedure, "err", cause)
		return cause
	}
	e := tether.AsError(cause)
	md := call.requestMetadata()
	md.Del(tether.MetadataAttempt)
	entry := &dlq.Entry{
		Procedure:      call.Spec.Procedure,
		Request:        bytes.Clone(req), // req is a pooled buffer (Client.unary)
		Metadata:       md,
		IdempotencyKey: md.Get(tether.MetadataIdempotencyKey),
		Attempts:       attempts,
		LastCode:       uint32(e.Code()),
		LastError:      e.Message(),
		FirstAttempt:   started,
		// The request of a server stream is kept as a unary one's is;
		// replay reads its responses to the end.
		ServerStreaming: call.Spec.StreamType == tether.StreamTypeServer,
	}
	// The caller's context may be over (deadline); the write must not be.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := c.cfg.dlq.Put(ctx, entry)
	if err != nil {
		return tether.Errorf(tether.CodeDataLoss, "tether: call failed (%v) and could not be dead-lettered: %v", cause, err)
	}
	c.counters.deadLettered.Add(1)
	c.cfg.logger.Info("tether: call dead-lettered", "procedure", call.Spec.Procedure, "id", id, "attempts", attempts, "err", cause)
	return &DeadLetterError{ID: id, Err: cause}
}

// InvokeRaw makes one unary call with an already encoded request and returns
// the encoded response. It implements dlq.Invoker, for replaying dead
// letters: md is sent as the request metadata, so the original idempotency
// key goes with it.
//
// The call goes through the client's interceptors like any other, with
// Call.Replay set, so replays show in logs, metrics and traces; its request
// and response are *emptypb.Empty values carrying the encoded messages as
// unknown fields. A replay is a single attempt: whatever the client's
// default retry policy says, it is not retried after it reached the server
// (requests that never reached it are retried transparently) and it is never
// dead-lettered again, so a failed replay only updates the entry it replays.
// The replay is sent with the client's own credentials (its handshake
// headers, WithHandshakeHeader): for the server to recognise it as a repeat,
// the client must authenticate as the original caller did (see "Replay" in
// docs/DELIVERY.md).
func (c *Client) InvokeRaw(ctx context.Context, procedure string, request []byte, md map[string][]string) ([]byte, error) {
	m := &Method{Spec: tether.Spec{Procedure: procedure, StreamType: tether.StreamTypeUnary}}
	co := &callOptions{replay: true}
	call := co.newCall(c, m)
	call.Replay = true
	call.Header.Merge(tether.Metadata(md))
	call.Header.Del(tether.MetadataAttempt)
	res := rawMessage(nil)
	err := c.wrapUnary(c.unaryFunc(m, co))(ctx, call, rawMessage(request), res)
	if err != nil {
		return nil, err
	}
	out, err := proto.Marshal(res)
	if err != nil {
		return nil, tether.Errorf(tether.CodeInternal, "tether: marshal response: %v", err)
	}
	return out, nil
}

// InvokeServerStreamRaw makes one server-streaming call with an already
// encoded request and calls onResponse with each encoded response, until the
// call ends; an error from onResponse cancels the call and is returned. It
// implements dlq.StreamInvoker, for replaying dead-lettered server streams,
// and is a replay as InvokeRaw is: through the interceptors with
// Call.Replay set, one attempt, never dead-lettered again.
func (c *Client) InvokeServerStreamRaw(ctx context.Context, procedure string, request []byte, md map[string][]string, onResponse func([]byte) error) error {
	m := &Method{Spec: tether.Spec{Procedure: procedure, StreamType: tether.StreamTypeServer}}
	co := &callOptions{replay: true}
	call := co.newCall(c, m)
	call.Replay = true
	call.Header.Merge(tether.Metadata(md))
	call.Header.Del(tether.MetadataAttempt)
	ensureIdempotencyKey(call)
	s, err := c.wrapStream(func(ctx context.Context, call *Call) (Stream, error) {
		return c.openRetryStream(ctx, m, co, call, c.policyFor(m, co))
	})(ctx, call)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Send(rawMessage(request)); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	for {
		res := rawMessage(nil)
		err := s.Receive(res)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		b, err := proto.Marshal(res)
		if err != nil {
			return tether.Errorf(tether.CodeInternal, "tether: marshal response: %v", err)
		}
		if err := onResponse(b); err != nil {
			return err
		}
	}
}

// rawMessage returns a message whose encoding is exactly b: an empty message
// holding b as unknown fields. It carries already encoded messages through
// code written for proto.Message (interceptors) without decoding them.
func rawMessage(b []byte) *emptypb.Empty {
	m := &emptypb.Empty{}
	if len(b) > 0 {
		m.ProtoReflect().SetUnknown(b)
	}
	return m
}

var _ dlq.StreamInvoker = (*Client)(nil)
