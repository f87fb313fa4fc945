// Package idempotency is a server interceptor that makes repeated unary calls
// safe: a call that carries an idempotency key (metadata
// "tether-idempotency-key", which tether clients attach to every call of a
// method with side effects, unchanged across retries and dead-letter
// replays) runs its handler at most once per (principal, procedure, key)
// while the key is remembered. A repeat that arrives while the first call
// runs waits for it (or for its own deadline or cancellation) and gets the
// first call's result; a repeat that arrives later gets that result from the
// cache. A repeat's answer also carries the response headers and trailers
// that the handler (and the interceptors inside this one) set on the first
// call: each of their keys gets the first call's values.
//
// Keys are scoped to the caller: the principal the server's Authenticator
// returned for the connection (Peer.Principal) and the procedure, so one
// client cannot read another's cached result by sending its key, and a
// replay under another identity runs the handler again. Unauthenticated
// callers share one scope. The scope is the principal's value, the same in
// every process and after a restart (server.Identity says how it is
// derived): a string as itself, a value with a PrincipalKey() string
// method by its result, a fmt.Stringer by its type and String(), and any
// other value by its %#v form, so a *User keys as the User it points to.
// A principal that still holds a pointer below its top level (a *User
// whose Org field is a *Org) would key by address, so that the same user
// on another connection or another server would not be deduplicated: a
// keyed call from such a principal is answered internal, without running
// its handler, until the principal gets a PrincipalKey method.
//
// What is remembered, and for how long:
//
//   - A running call's key is never forgotten: its claim is owned by the
//     handler's goroutine and ends when the handler returns or panics.
//   - A response or an error that is an answer (invalid_argument, not_found,
//     ...) is remembered for the TTL, counted from when the handler returned.
//   - A transient error (canceled, deadline_exceeded, unavailable,
//     resource_exhausted, aborted) or a panic leaves nothing: the outcome is
//     unknown, as after a crash, so the key is forgotten and a repeat runs the
//     handler again. The panic itself goes on to the server's recovery, which
//     answers the caller internal.
//   - The cache is bounded in keys (WithMaxEntries) and in the memory it
//     holds (WithMaxBytes). To make room it forgets the results that settled
//     first; it never forgets a running call. When only running calls are
//     left, a call with a new key is refused with unavailable, as
//     unprocessed (server.RefuseUnprocessed): its handler did not run, so a
//     tether client retries it transparently, whatever the method's retry
//     policy, and returns unavailable only when those bounded retries run
//     out (a dead-letter policy then parks it).
//
// The built-in cache is in memory: it protects against retries and replays
// within the TTL, in one server process, and a restart forgets it.
// WithStore keeps claims and results in a Store instead: MemoryStore (one
// process, shareable by several servers in it), idembolt (a bbolt file:
// durable on one node, survives a restart), or contrib/nats (JetStream
// key-value: shared by a fleet). A claim in a Store has an owner and a
// lease renewed while the handler runs, so the repeats of a call whose
// server died wait at most a lease, and then exactly one of them runs.
// Package idemtest is the contract every Store passes. Effects that must be
// exactly-once forever need the key stored with the effect, in the same
// transaction.
package idempotency

import (
	"container/list"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/principal"
	"github.com/tetherrpc/tether/server"
)

// Defaults.
const (
	DefaultMaxEntries = 100_000
	DefaultMaxBytes   = 64 << 20
	DefaultTTL        = 10 * time.Minute
)

// Memory counted besides the bytes of strings and results: an entry with
// its map slot, list element and channel; a string or slice header; an
// error detail's message.
const (
	entryOverhead  = 320
	headerOverhead = 16
	detailOverhead = 64
)

// Option configures the interceptor.
type Option func(*Interceptor)

// WithMaxEntries bounds the number of keys held (default 100,000), running
// or remembered; n <= 0 keeps the default. The results that settled first
// are forgotten to make room; when every key held is running, a call with a
// new key is refused with unavailable, as unprocessed (see the package
// documentation).
func WithMaxEntries(n int) Option {
	return func(i *Interceptor) {
		if n > 0 {
			i.max = n
		}
	}
}

// WithMaxBytes bounds the memory the cache holds (default 64 MiB): each key
// counts its strings plus about 320 bytes, a remembered response its encoded
// size, a remembered error its message, details and trailers, and the
// response headers and trailers the handler set. The results
// that settled first are forgotten to make room, and a result larger than
// the whole limit is not remembered; when the running calls alone leave no
// room for a new key, the call is refused with unavailable, as unprocessed.
// n <= 0 keeps the
// default.
func WithMaxBytes(n int) Option {
	return func(i *Interceptor) {
		if n > 0 {
			i.maxBytes = n
		}
	}
}

// WithTTL sets how long a result is remembered after the handler returned
// (default 10 minutes). A running call's key is held for as long as it
// runs, whatever the TTL.
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

	mu      sync.Mutex
	byKey   map[cacheKey]*entry // running and settled entries
	settled *list.List          // of *entry, settled entries, in the order they settled
	bytes   int                 // sum of the sizes of the entries in byKey

	hits, misses uint64
	blocked      int // repeats waiting for a call that has not finished

	sc *storeConfig // set by the Store options; used when sc.store is set
}

type cacheKey struct{ principal, procedure, key string }

// entry is one key's claim, owned by the goroutine running the first
// call's handler: running until done is closed, then settled (and in the
// settled list) if its result is remembered. Fields are guarded by the
// interceptor's mu, except the result: the owner writes it before it takes
// mu to settle, and nobody writes it after; readers read it once closed is
// set.
type entry struct {
	key     cacheKey
	size    int           // bytes counted in Interceptor.bytes
	held    bool          // in byKey
	el      *list.Element // in the settled list, nil while running
	expires time.Time     // when a settled entry is forgotten
	done    chan struct{} // closed when the first call has finished
	closed  bool          // done is closed, or about to be
	waiters int           // repeats waiting for done

	// The result, when remembered (ok): an encoded response of type resType
	// (nil for a handler that returned neither response nor error), or an
	// error; and the response headers and trailers the handler set (error
	// trailers are in err).
	ok       bool
	res      []byte
	resType  protoreflect.MessageType
	err      *cachedError
	hdr, trl tether.Metadata
}

// cachedError is what the caller of an error saw: code, message, details
// and trailers, without the handler's error chain.
type cachedError struct {
	code    tether.Code
	msg     string
	details []*anypb.Any
	meta    tether.Metadata
}

// New returns an idempotency interceptor.
func New(opts ...Option) *Interceptor {
	i := &Interceptor{max: DefaultMaxEntries, maxBytes: DefaultMaxBytes, ttl: DefaultTTL, now: time.Now, byKey: map[cacheKey]*entry{}, settled: list.New()}
	for _, o := range opts {
		o(i)
	}
	return i
}

// Stats returns how many calls were answered from the cache (hits) and how
// many ran their handler (misses), and the number of keys held (by the
// built-in cache: 0 with WithStore).
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
		scope, err := principal.Key(ci.Peer().Principal)
		if err != nil {
			// An address is no scope: dedup would silently fail across
			// connections and servers. Say so on the first call.
			return nil, tether.Errorf(tether.CodeInternal, "idempotency: cannot scope the key: %v; give the principal a PrincipalKey() string method (see server.Identity)", err)
		}
		key := cacheKey{scope, ci.Spec().Procedure, k}
		md := snapshotMeta(ci)
		if i.sc != nil && i.sc.store != nil {
			return i.doStore(ctx, Key{key.principal, key.procedure, key.key}, md, func() (proto.Message, error) { return next(ctx, req) })
		}
		return i.do(ctx, key, md, func() (proto.Message, error) { return next(ctx, req) })
	}
}

// KeyFromContext returns the idempotency key of the call a handler's context
// belongs to, or "" if it has none. A handler whose effect must happen once
// beyond the cache (after its TTL, after a restart, on another server)
// stores the key in the same transaction as the effect and answers a repeat
// from what it stored.
func KeyFromContext(ctx context.Context) string {
	ci, ok := server.CallInfoFromContext(ctx)
	if !ok {
		return ""
	}
	return ci.RequestHeader().Get(tether.MetadataIdempotencyKey)
}

// WrapStream implements server.Interceptor; streams pass through.
func (i *Interceptor) WrapStream(next server.StreamFunc) server.StreamFunc { return next }

// callMeta is the part of a call's CallInfo that the interceptor records
// and replays: the response headers and trailers the handler (and the
// interceptors inside this one) set.
type callMeta interface {
	ResponseHeader() tether.Metadata
	ResponseTrailer() tether.Metadata
}

// metaAt is a call's metadata with what its response headers and trailers
// held when the interceptor was reached: keys that interceptors outside
// this one set before calling it. Those are theirs to set again on a repeat
// (a request id, the replica that served it); only what changed below the
// interceptor (the handler and the interceptors inside) is recorded.
type metaAt struct {
	callMeta
	hdr, trl tether.Metadata
}

// snapshotMeta records what md's response headers and trailers hold now.
func snapshotMeta(md callMeta) *metaAt {
	at := &metaAt{callMeta: md}
	if h := md.ResponseHeader(); len(h) > 0 {
		at.hdr = h.Clone()
	}
	if t := md.ResponseTrailer(); len(t) > 0 {
		at.trl = t.Clone()
	}
	return at
}

// responseMeta returns copies of the response headers and trailers set on
// the call since snapshotMeta (all of them if md is no *metaAt): what the
// handler set, to replay on repeats.
func responseMeta(md callMeta) (hdr, trl tether.Metadata) {
	if md == nil {
		return nil, nil
	}
	var hdr0, trl0 tether.Metadata
	if at, ok := md.(*metaAt); ok {
		hdr0, trl0 = at.hdr, at.trl
	}
	return changedMeta(md.ResponseHeader(), hdr0), changedMeta(md.ResponseTrailer(), trl0)
}

// changedMeta returns copies of the keys of now that before does not hold
// with the same values, or nil if there are none.
func changedMeta(now, before tether.Metadata) tether.Metadata {
	var out tether.Metadata
	for k, vs := range now {
		if b, ok := before[k]; ok && slices.Equal(b, vs) {
			continue
		}
		if out == nil {
			out = make(tether.Metadata, len(now))
		}
		out[k] = slices.Clone(vs)
	}
	return out
}

// replayMeta sets on md the response headers and trailers of the first
// call: each key the first call set gets the first call's values, so that
// the repeat's answer carries the same headers and trailers.
func replayMeta(md callMeta, hdr, trl tether.Metadata) {
	if md == nil {
		return
	}
	if len(hdr) > 0 {
		h := md.ResponseHeader()
		for k, vs := range hdr {
			h[k] = append([]string(nil), vs...)
		}
	}
	if len(trl) > 0 {
		t := md.ResponseTrailer()
		for k, vs := range trl {
			t[k] = append([]string(nil), vs...)
		}
	}
}

// metaSize counts the memory md holds.
func metaSize(md tether.Metadata) int {
	n := 0
	for k, vs := range md {
		n += headerOverhead + len(k) + headerOverhead
		for _, v := range vs {
			n += headerOverhead + len(v)
		}
	}
	return n
}

// do runs the call identified by key: run is its handler, md (nil in
// tests) its CallInfo, whose response headers and trailers are recorded
// with the result and replayed to repeats.
func (i *Interceptor) do(ctx context.Context, key cacheKey, md callMeta, run func() (proto.Message, error)) (proto.Message, error) {
	for {
		e, first, err := i.claim(key)
		switch {
		case err != nil:
			// Full of running calls: nothing ran; the client may retry
			// anywhere, transparently.
			return nil, server.RefuseUnprocessed(ctx, err)
		case first:
			return i.runFirst(e, md, run)
		}
		if res, answered, err := i.wait(ctx, e, md); answered {
			return res, err
		}
		// The first call left no result (transient error or panic) and its
		// key was forgotten: claim it again, and maybe run.
	}
}

// runFirst runs the handler of the call that claimed e and settles e
// however the handler ends. A panic (or runtime.Goexit) leaves no result:
// the key is forgotten, its waiters claim it again, and the panic goes on
// to the server's recovery.
func (i *Interceptor) runFirst(e *entry, md callMeta, run func() (proto.Message, error)) (res proto.Message, err error) {
	returned := false
	defer func() {
		if !returned {
			i.settle(e, nil, nil, true)
		}
	}()
	res, err = run()
	returned = true
	if !transient(err) {
		e.hdr, e.trl = responseMeta(md)
	}
	i.settle(e, res, err, transient(err))
	return res, err
}

// wait waits for the first call of e to finish, or for ctx to end, and
// replays the first call's response headers and trailers on md. answered
// is false when the first call left no result.
func (i *Interceptor) wait(ctx context.Context, e *entry, md callMeta) (res proto.Message, answered bool, err error) {
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
		i.mu.Unlock()
		return nil, true, tether.AsError(ctx.Err())
	}
	if !e.ok {
		i.mu.Unlock()
		return nil, false, nil
	}
	i.hits++
	i.mu.Unlock()
	// The result is not written after closed is set: read it unlocked.
	replayMeta(md, e.hdr, e.trl)
	if e.err != nil {
		return nil, true, e.err.toError()
	}
	if e.resType == nil {
		return nil, true, nil
	}
	m := e.resType.New().Interface()
	if err := proto.Unmarshal(e.res, m); err != nil {
		return nil, true, tether.Errorf(tether.CodeInternal, "idempotency: decode cached %s: %v", e.resType.Descriptor().FullName(), err)
	}
	return m, true, nil
}

// claim returns the entry for key, creating it if there is none; first
// reports whether the caller must run the handler. It forgets expired
// results and, to make room, the results that settled first; it refuses a
// new key (unavailable) when the running calls alone fill the cache.
func (i *Interceptor) claim(key cacheKey) (e *entry, first bool, err error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.expire(i.now())
	if e, ok := i.byKey[key]; ok {
		return e, false, nil
	}
	size := entryOverhead + len(key.principal) + len(key.procedure) + len(key.key)
	for (len(i.byKey)+1 > i.max || i.bytes+size > i.maxBytes) && i.settled.Len() > 0 {
		i.forget(i.settled.Front().Value.(*entry))
	}
	if len(i.byKey)+1 > i.max || i.bytes+size > i.maxBytes {
		return nil, false, tether.Errorf(tether.CodeUnavailable,
			"idempotency: cache full of running calls (%d keys, %d bytes held); try again later", len(i.byKey), i.bytes)
	}
	e = &entry{key: key, size: size, held: true, done: make(chan struct{})}
	i.byKey[key] = e
	i.bytes += size
	i.misses++
	return e, true, nil
}

// settle records the first call's result, or forgets the key when forget
// is set (transient error or panic), and wakes the repeats waiting for it.
func (i *Interceptor) settle(e *entry, res proto.Message, err error, forget bool) {
	var add int
	if !forget {
		switch {
		case err != nil:
			e.err = newCachedError(tether.AsError(err))
			add = e.err.size()
		case res != nil:
			b, merr := proto.Marshal(res)
			if merr != nil {
				forget = true // the server answers internal; nothing to repeat
				break
			}
			e.res, e.resType = b, res.ProtoReflect().Type()
			add = cap(b)
		}
		add += metaSize(e.hdr) + metaSize(e.trl)
	}
	i.mu.Lock()
	if forget || !e.held {
		i.forget(e)
	} else {
		e.ok = true
		e.size += add
		i.bytes += add
		e.expires = i.now().Add(i.ttl)
		e.el = i.settled.PushBack(e)
		for i.bytes > i.maxBytes && i.settled.Len() > 0 {
			i.forget(i.settled.Front().Value.(*entry))
		}
	}
	e.closed = true
	i.blocked -= e.waiters
	i.mu.Unlock()
	close(e.done)
}

// expire forgets the settled entries whose TTL has passed; running entries
// are not in the settled list.
func (i *Interceptor) expire(now time.Time) {
	for el := i.settled.Front(); el != nil; el = i.settled.Front() {
		e := el.Value.(*entry)
		if now.Before(e.expires) {
			return
		}
		i.forget(e)
	}
}

// forget removes e from the cache, if it is still held, and its size from
// the total.
func (i *Interceptor) forget(e *entry) {
	if !e.held {
		return
	}
	e.held = false
	delete(i.byKey, e.key)
	i.bytes -= e.size
	if e.el != nil {
		i.settled.Remove(e.el)
		e.el = nil
	}
}

func newCachedError(e *tether.Error) *cachedError {
	c := &cachedError{code: e.Code(), msg: e.Message(), meta: e.Meta().Clone()}
	for _, d := range e.Details() {
		c.details = append(c.details, proto.Clone(d).(*anypb.Any))
	}
	return c
}

// size counts the memory the error holds.
func (c *cachedError) size() int {
	n := len(c.msg)
	for _, d := range c.details {
		n += detailOverhead + len(d.GetTypeUrl()) + cap(d.GetValue())
	}
	return n + metaSize(c.meta)
}

// toError returns a new error equal to the one the first caller got.
func (c *cachedError) toError() *tether.Error {
	var err error
	if c.msg != "" {
		err = errors.New(c.msg)
	}
	e := tether.NewError(c.code, err)
	for _, d := range c.details {
		_ = e.AddDetail(proto.Clone(d))
	}
	if c.meta != nil {
		e = e.WithMeta(c.meta.Clone())
	}
	return e
}

var _ server.Interceptor = (*Interceptor)(nil)

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
	for k, e := range i.byKey {
		h := heldEntry{running: !e.closed, size: e.size, waiters: e.waiters, expires: e.expires}
		if e.ok && e.err != nil {
			h.err = e.err.toError()
		} else if e.ok && e.resType != nil {
			m := e.resType.New().Interface()
			if err := proto.Unmarshal(e.res, m); err != nil {
				panic(err)
			}
			h.res = m
		}
		s.entries[k] = h
	}
	return s
}
