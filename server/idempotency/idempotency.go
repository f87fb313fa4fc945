// Package idempotency is a server interceptor that makes repeated unary calls
// safe: a call that carries an idempotency key (metadata
// "tether-idempotency-key", which tether clients attach to every call of a
// method with side effects, unchanged across retries and dead-letter
// replays) runs its handler once; a repeat with the same key and procedure
// gets the first result instead, and a repeat that arrives while the first
// is still running waits for it.
//
// Keys are scoped to the caller: the principal the server's Authenticator
// returned (Peer.Principal) and the procedure, so one client cannot read
// another's cached response by sending its key. Unauthenticated callers
// share one scope.
//
// The cache is in memory, bounded in entries and in bytes of cached
// responses, and forgets a key after a TTL:
// it protects against retries and replays within that window, in one server
// process. Effects that must be exactly-once across restarts need the key
// stored with the effect, in the same transaction.
package idempotency

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/server"
)

// Defaults.
const (
	DefaultMaxEntries = 100_000
	DefaultMaxBytes   = 64 << 20
	DefaultTTL        = 10 * time.Minute
)

// Option configures the interceptor.
type Option func(*Interceptor)

// WithMaxEntries bounds the cache (default 100,000 keys); the oldest key is
// forgotten first.
func WithMaxEntries(n int) Option { return func(i *Interceptor) { i.max = n } }

// WithMaxBytes bounds the cached responses' total encoded size (default
// 64 MiB); the oldest keys are forgotten first.
func WithMaxBytes(n int) Option { return func(i *Interceptor) { i.maxBytes = n } }

// WithTTL sets how long a key is remembered (default 10 minutes).
func WithTTL(d time.Duration) Option { return func(i *Interceptor) { i.ttl = d } }

// withClock replaces time.Now in tests.
func withClock(now func() time.Time) Option { return func(i *Interceptor) { i.now = now } }

// Interceptor deduplicates unary calls by idempotency key. Create it with
// New and pass it to server.WithInterceptors.
type Interceptor struct {
	max      int
	maxBytes int
	ttl      time.Duration
	now      func() time.Time

	mu    sync.Mutex
	byKey map[cacheKey]*list.Element
	order *list.List // of *entry, oldest first
	bytes int        // encoded size of the cached responses

	hits, misses uint64
	blocked      int // repeats waiting for a call that has not finished
}

type cacheKey struct{ principal, procedure, key string }

type entry struct {
	key     cacheKey
	expires time.Time
	size    int           // encoded size of res
	done    chan struct{} // closed when the first call has finished
	res     proto.Message
	err     error
	waiters int  // repeats waiting for done (guarded by mu)
	closed  bool // done is closed or about to be (guarded by mu)
}

// New returns an idempotency interceptor.
func New(opts ...Option) *Interceptor {
	i := &Interceptor{max: DefaultMaxEntries, maxBytes: DefaultMaxBytes, ttl: DefaultTTL, now: time.Now, byKey: map[cacheKey]*list.Element{}, order: list.New()}
	for _, o := range opts {
		o(i)
	}
	return i
}

// Stats returns how many calls were answered from the cache (hits) and how
// many ran their handler (misses), and the number of keys held.
func (i *Interceptor) Stats() (hits, misses uint64, keys int) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.hits, i.misses, len(i.byKey)
}

// transient codes are not remembered: the call may be repeated and run
// again, because its effect did not happen or its outcome is unknown to the
// handler too.
func transient(err error) bool {
	switch tether.CodeOf(err) {
	case tether.CodeCanceled, tether.CodeDeadlineExceeded, tether.CodeUnavailable,
		tether.CodeResourceExhausted, tether.CodeAborted:
		return true
	}
	return false
}

// WrapUnary implements server.Interceptor.
func (i *Interceptor) WrapUnary(next server.UnaryFunc) server.UnaryFunc {
	return func(ctx context.Context, req proto.Message) (proto.Message, error) {
		ci, ok := server.CallInfoFromContext(ctx)
		if !ok {
			return next(ctx, req)
		}
		k := ci.RequestHeader().Get(tether.MetadataIdempotencyKey)
		if k == "" {
			return next(ctx, req)
		}
		key := cacheKey{principalKey(ci.Peer().Principal), ci.Spec().Procedure, k}
		return i.do(ctx, key, func() (proto.Message, error) { return next(ctx, req) })
	}
}

// do runs the call identified by key: run is its handler.
func (i *Interceptor) do(ctx context.Context, key cacheKey, run func() (proto.Message, error)) (proto.Message, error) {
	for {
		e, first := i.claim(key)
		if first {
			res, err := run()
			i.settle(e, res, err)
			return res, err
		}
		i.mu.Lock()
		e.waiters++
		if !e.closed {
			i.blocked++
		}
		i.mu.Unlock()
		select {
		case <-e.done:
		case <-ctx.Done():
		}
		i.mu.Lock()
		e.waiters--
		if !e.closed {
			i.blocked--
		}
		i.mu.Unlock()
		select {
		case <-e.done:
		default:
			return nil, tether.AsError(ctx.Err())
		}
		if e.res != nil || e.err != nil {
			i.mu.Lock()
			i.hits++
			i.mu.Unlock()
			if e.err != nil {
				return nil, e.err
			}
			return proto.Clone(e.res), nil
		}
		// The first call ended transiently and was forgotten: run again.
	}
}

// WrapStream implements server.Interceptor; streams pass through.
func (i *Interceptor) WrapStream(next server.StreamFunc) server.StreamFunc { return next }

// claim returns the entry for key, creating it if there is none; first
// reports whether the caller must run the handler.
func (i *Interceptor) claim(key cacheKey) (*entry, bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	now := i.now()
	i.expire(now)
	if el, ok := i.byKey[key]; ok {
		return el.Value.(*entry), false
	}
	e := &entry{key: key, expires: now.Add(i.ttl), done: make(chan struct{})}
	i.byKey[key] = i.order.PushBack(e)
	i.misses++
	for len(i.byKey) > i.max {
		i.evict(i.order.Front())
	}
	return e, true
}

// settle stores the first call's result, or forgets the key when the result
// is transient, and wakes the repeats waiting for it.
func (i *Interceptor) settle(e *entry, res proto.Message, err error) {
	i.mu.Lock()
	if transient(err) {
		if el, ok := i.byKey[e.key]; ok && el.Value == e {
			i.evict(el)
		}
	} else if err != nil {
		e.err = err
	} else {
		e.res = proto.Clone(res)
		e.size = proto.Size(e.res)
		i.bytes += e.size
		for i.bytes > i.maxBytes && i.order.Len() > 0 {
			i.evict(i.order.Front())
		}
	}
	e.closed = true
	i.blocked -= e.waiters
	i.mu.Unlock()
	close(e.done)
}

func (i *Interceptor) expire(now time.Time) {
	for el := i.order.Front(); el != nil; el = i.order.Front() {
		e := el.Value.(*entry)
		if now.Before(e.expires) {
			return
		}
		i.evict(el)
	}
}

func (i *Interceptor) evict(el *list.Element) {
	e := el.Value.(*entry)
	i.order.Remove(el)
	i.bytes -= e.size
	if cur, ok := i.byKey[e.key]; ok && cur == el {
		delete(i.byKey, e.key)
	}
}

var _ server.Interceptor = (*Interceptor)(nil)

// principalKey turns a principal into a cache scope. Principals are usually
// strings or small structs; %#v keeps distinct values distinct.
func principalKey(p any) string {
	switch v := p.(type) {
	case nil:
		return ""
	case string:
		return "s:" + v
	case fmt.Stringer:
		return fmt.Sprintf("%T:%s", v, v.String())
	}
	return fmt.Sprintf("%#v", p)
}

// heldEntry is what snapshot reports of one key the cache holds.
type heldEntry struct {
	running bool
	size    int // bytes counted for the entry
	waiters int
	expires time.Time
	res     proto.Message
	err     error
}

// snapshot is the cache's state, for tests' invariant checks.
type snapshot struct {
	bytes   int // the running byte total
	blocked int // repeats waiting for a call that has not finished
	entries map[cacheKey]heldEntry
}

func (i *Interceptor) snapshot() snapshot {
	i.mu.Lock()
	defer i.mu.Unlock()
	s := snapshot{bytes: i.bytes, blocked: i.blocked, entries: make(map[cacheKey]heldEntry, len(i.byKey))}
	for k, el := range i.byKey {
		e := el.Value.(*entry)
		h := heldEntry{size: e.size, waiters: e.waiters, expires: e.expires, res: e.res, err: e.err}
		select {
		case <-e.done:
		default:
			h.running = true
		}
		s.entries[k] = h
	}
	return s
}
