// Package tethernats keeps tether's shared state in NATS JetStream, for a
// fleet of servers and clients: an idempotency.Store on a JetStream
// key-value bucket (IdempotencyStore), so that a retry or a dead-letter
// replay that lands on another replica, or on one restarted, is answered
// from the store; and a dlq.Store on a key-value bucket (DLQ), for clients
// whose local disk does not outlive them (containers).
//
// It is a module of its own (github.com/tetherrpc/tether/contrib/nats): the
// core module never links NATS. Production points nats.go at a NATS cluster;
// tests and single-binary setups embed github.com/nats-io/nats-server/v2.
package tethernats

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tetherrpc/tether/server/idempotency"
)

// Defaults of an IdempotencyStore.
const (
	DefaultIdempotencyBucket = "tether_idempotency"
	DefaultMaxAge            = time.Hour
	DefaultTimeout           = 5 * time.Second
)

// IdempotencyStore is an idempotency.Store on a JetStream key-value bucket,
// shared by every server that opens the same bucket:
//
//   - Claim creates the key atomically (KV Create: exactly one of
//     concurrent claimers succeeds); a key whose claim's lease or result's
//     TTL has passed is taken over with a revision-checked Update, so again
//     exactly one claimer wins.
//   - Renew, Complete and Release check that the caller still owns the
//     claim and write with the revision they read (compare-and-swap).
//   - Each value carries its owner and its expiry (the lease, then the
//     TTL) as the writer's wall clock sees it: keep the servers' clocks
//     synchronized (NTP) well within a lease.
//   - The bucket's MaxAge (WithMaxAge, default one hour) removes keys not
//     written for that long: it must exceed the interceptor's TTL.
//
// Every operation retries the errors of a cluster in transition (no
// responders, a timeout while a stream leader is elected) until its
// timeout (WithTimeout, default 5 s); a retried write that had in fact
// landed is recognized by its owner. Past the timeout the operation fails,
// and the interceptor runs the call without deduplication, logged (or
// refuses it, fail-closed): see idempotency.WithStore.
type IdempotencyStore struct {
	kv      jetstream.KeyValue
	revs    sync.Map // owner NUL key name -> claimRev: the claim it wrote last
	timeout time.Duration
	now     func() time.Time
}

var _ idempotency.Store = (*IdempotencyStore)(nil)

// IdempotencyOption configures NewIdempotencyStore.
type IdempotencyOption func(*idemConfig)

type idemConfig struct {
	bucket   string
	replicas int
	maxAge   time.Duration
	maxKeys  int
	timeout  time.Duration
	memory   bool
}

// WithBucket names the key-value bucket (default "tether_idempotency").
func WithBucket(name string) IdempotencyOption { return func(c *idemConfig) { c.bucket = name } }

// WithReplicas sets the bucket's replicas in a cluster (default 1; 3 lets
// the store survive the loss of one node).
func WithReplicas(n int) IdempotencyOption { return func(c *idemConfig) { c.replicas = n } }

// WithMaxAge sets how long the bucket keeps a key not written since
// (default one hour); it must exceed the interceptor's TTL.
func WithMaxAge(d time.Duration) IdempotencyOption { return func(c *idemConfig) { c.maxAge = d } }

// WithMaxKeys bounds the bucket's messages (keys, including the markers
// that released keys leave until MaxAge removes them); past it, Claim of a
// new key fails with idempotency.ErrFull. Default: unbounded.
func WithMaxKeys(n int) IdempotencyOption { return func(c *idemConfig) { c.maxKeys = n } }

// WithTimeout bounds each operation, its retries included (default 5 s).
func WithTimeout(d time.Duration) IdempotencyOption { return func(c *idemConfig) { c.timeout = d } }

// WithMemoryStorage keeps the bucket in the servers' memory instead of on
// their disks (tests, demos).
func WithMemoryStorage() IdempotencyOption { return func(c *idemConfig) { c.memory = true } }

// NewIdempotencyStore creates the bucket if it does not exist and returns a
// store on it. An existing bucket keeps its configuration (replicas, max
// age, storage: change them with the nats CLI); only WithMaxKeys is applied
// to it.
func NewIdempotencyStore(ctx context.Context, js jetstream.JetStream, opts ...IdempotencyOption) (*IdempotencyStore, error) {
	c := idemConfig{bucket: DefaultIdempotencyBucket, replicas: 1, maxAge: DefaultMaxAge, timeout: DefaultTimeout}
	for _, o := range opts {
		o(&c)
	}
	cfg := jetstream.KeyValueConfig{
		Bucket:      c.bucket,
		Description: "tether idempotency claims and results",
		History:     1,
		TTL:         c.maxAge,
		Replicas:    c.replicas,
		Storage:     jetstream.FileStorage,
	}
	if c.memory {
		cfg.Storage = jetstream.MemoryStorage
	}
	kv, err := openBucket(ctx, js, cfg)
	if err != nil {
		return nil, fmt.Errorf("tethernats: key-value bucket %s: %w", c.bucket, err)
	}
	kv, err = consistent(ctx, js, kv, c.bucket, int64(c.maxKeys))
	if err != nil {
		return nil, err
	}
	return &IdempotencyStore{kv: kv, timeout: c.timeout, now: time.Now}, nil
}

// openBucket opens the bucket, or creates it with cfg if it does not exist.
// An existing bucket is opened as it is: updating it (CreateOrUpdate) would
// turn its direct gets back on for a moment, and a replica that opened the
// bucket in that moment would read through direct gets that nobody answers
// once they are off again (the fleet test saw "no responders" for every
// read of one replica started together with two others).
func openBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, cfg.Bucket) // created meanwhile by another opener
		}
	}
	return kv, err
}

// consistent turns off the bucket's direct gets, so that every read goes
// to the stream leader and sees every write acknowledged before it (a
// direct get may be answered by a replica that lags), and sets its MaxMsgs
// when maxMsgs > 0 (the KV API has no such option; KV streams discard new
// messages when full). It returns the bucket bound again, reading through
// the leader.
func consistent(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, bucket string, maxMsgs int64) (jetstream.KeyValue, error) {
	stream := "KV_" + bucket
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("tethernats: stream %s: %w", stream, err)
	}
	cfg := s.CachedInfo().Config
	if !cfg.AllowDirect && (maxMsgs <= 0 || cfg.MaxMsgs == maxMsgs) {
		return kv, nil
	}
	cfg.AllowDirect = false
	if maxMsgs > 0 {
		cfg.MaxMsgs = maxMsgs
	}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return nil, fmt.Errorf("tethernats: stream %s: %w", stream, err)
	}
	kv, err = js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("tethernats: key-value bucket %s: %w", bucket, err)
	}
	return kv, nil
}

// retry runs op until it succeeds, fails with an error that a retry will
// not fix, or the store's timeout passes.
func (s *IdempotencyStore) retry(ctx context.Context, op func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	backoff := 20 * time.Millisecond
	for {
		// One attempt may wait for an answer that never comes (a request
		// sent to a node as it went down): bound it too.
		actx, acancel := context.WithTimeout(ctx, min(s.timeout, attemptTimeout))
		err := op(actx)
		acancel()
		if err == nil || !transient(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("tethernats: %w (last error: %w)", ctx.Err(), err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("tethernats: %w (last error: %w)", ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// attemptTimeout bounds one attempt of an operation.
const attemptTimeout = 2 * time.Second

// errRetry marks an outcome the operation's loop should try again (a lost
// compare-and-swap whose winner vanished).
var errRetry = errors.New("tethernats: retry")

// transient reports whether a retry may succeed: a cluster electing a
// leader, a node going away, a request timing out.
func transient(err error) bool {
	if errors.Is(err, errRetry) {
		return true
	}
	if errors.Is(err, idempotency.ErrFull) || errors.Is(err, idempotency.ErrNotOwner) ||
		errors.Is(err, context.Canceled) {
		return false
	}
	var aerr *jetstream.APIError
	if errors.As(err, &aerr) {
		// Leader elections and lost quorum answer 503 or 500; bad requests
		// (wrong sequence, limits) are not transient.
		return aerr.Code >= 500
	}
	// No responders, timeouts and connection errors.
	return true
}

// wrongRevision reports whether err is a revision check that failed.
func wrongRevision(err error) bool {
	var aerr *jetstream.APIError
	if errors.As(err, &aerr) && (aerr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || aerr.ErrorCode == errCodeWrongLastSequenceConstant) {
		return true
	}
	return errors.Is(err, jetstream.ErrKeyExists) || err != nil && strings.Contains(err.Error(), "wrong last sequence")
}

// errCodeWrongLastSequenceConstant is the error code nats-server answers
// a KV create that finds the key (JSStreamWrongLastSequenceConstantErr).
const errCodeWrongLastSequenceConstant = 10164

// full reports whether err is the stream refusing a new message.
func full(err error) bool {
	if err == nil {
		return false
	}
	m := err.Error()
	return strings.Contains(m, "maximum messages exceeded") || strings.Contains(m, "maximum bytes exceeded")
}

// read returns the key's entry and revision; nil when absent or deleted.
func (s *IdempotencyStore) read(ctx context.Context, name string) (*idempotency.Entry, uint64, error) {
	kve, err := s.kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	e, err := idempotency.UnmarshalEntry(kve.Value())
	if err != nil {
		// Not ours to interpret: treat as expired, so a claim replaces it.
		return &idempotency.Entry{}, kve.Revision(), nil
	}
	return e, kve.Revision(), nil
}

// Claim implements idempotency.Store.
func (s *IdempotencyStore) Claim(ctx context.Context, k idempotency.Key, owner string, lease time.Duration) (idempotency.Record, error) {
	name := k.Hash()
	var rec idempotency.Record
	first := true
	err := s.retry(ctx, func(ctx context.Context) error {
		if first {
			// Most keys are new: try the atomic create before reading.
			rev, err := s.kv.Create(ctx, name, idempotency.MarshalEntry(&idempotency.Entry{Owner: owner, Expires: s.now().Add(lease)}))
			switch {
			case err == nil:
				s.revs.Store(owner+"\x00"+name, claimRev{rev, s.now().Add(lease)})
				rec = idempotency.Record{State: idempotency.StateClaimed, Owner: owner}
				return nil
			case full(err):
				return fmt.Errorf("%w: %w", idempotency.ErrFull, err)
			case !wrongRevision(err):
				return err // retried: if it landed, the read below sees our claim
			}
			first = false
		}
		e, rev, err := s.read(ctx, name)
		if err != nil {
			return err
		}
		now := s.now()
		switch {
		case e != nil && e.Owner == owner && !e.Done && e.Live(now):
			// An earlier attempt of this Claim landed.
			rec = idempotency.Record{State: idempotency.StateClaimed, Owner: owner}
			return nil
		case e != nil && e.Live(now):
			rec = e.Record()
			return nil
		}
		v := idempotency.MarshalEntry(&idempotency.Entry{Owner: owner, Expires: now.Add(lease)})
		if e == nil {
			rev, err = s.kv.Create(ctx, name, v)
		} else {
			rev, err = s.kv.Update(ctx, name, v, rev)
		}
		switch {
		case err == nil:
			s.revs.Store(owner+"\x00"+name, claimRev{rev, now.Add(lease)})
			rec = idempotency.Record{State: idempotency.StateClaimed, Owner: owner}
			return nil
		case wrongRevision(err):
			return errRetry // another claimer won: read its claim
		case full(err):
			return fmt.Errorf("%w: %w", idempotency.ErrFull, err)
		}
		return err
	})
	return rec, err
}

// swap replaces owner's live claim of k by what change makes of it.
func (s *IdempotencyStore) swap(ctx context.Context, k idempotency.Key, owner string, change func(e *idempotency.Entry, now time.Time) (*idempotency.Entry, bool)) (err error) {
	name := k.Hash()
	cached, _ := s.revs.Load(owner + "\x00" + name)
	defer func() {
		if err != nil {
			s.revs.Delete(owner + "\x00" + name) // the claim is lost
		}
	}()
	return s.retry(ctx, func(ctx context.Context) error {
		if c, ok := cached.(claimRev); ok && s.now().Before(c.expires) {
			// The live claim this owner wrote last: if nobody wrote
			// since (the revision checks it), it is still ours, so
			// write without reading first.
			cached = nil
			next, _ := change(&idempotency.Entry{Owner: owner, Expires: c.expires}, s.now())
			if s.write(ctx, name, owner, c.rev, next) == nil {
				return nil
			}
		}
		cached = nil
		e, rev, err := s.read(ctx, name)
		if err != nil {
			return err
		}
		now := s.now()
		if e == nil || !e.Live(now) || e.Owner != owner {
			return fmt.Errorf("%w: key %q", idempotency.ErrNotOwner, k.Key)
		}
		next, done := change(e, now)
		if done {
			return nil // an earlier attempt landed
		}
		if e.Done {
			return fmt.Errorf("%w: key %q", idempotency.ErrNotOwner, k.Key)
		}
		return s.write(ctx, name, owner, rev, next)
	})
}

// claimRev is a live claim an owner wrote: its revision and its expiry.
type claimRev struct {
	rev     uint64
	expires time.Time
}

// write replaces the key's value of revision rev by next (nil: deletes it).
func (s *IdempotencyStore) write(ctx context.Context, name, owner string, rev uint64, next *idempotency.Entry) error {
	var err error
	if next == nil {
		err = s.kv.Delete(ctx, name, jetstream.LastRevision(rev))
		s.revs.Delete(owner + "\x00" + name)
	} else {
		rev, err = s.kv.Update(ctx, name, idempotency.MarshalEntry(next), rev)
		if err == nil && !next.Done {
			s.revs.Store(owner+"\x00"+name, claimRev{rev, next.Expires})
		} else {
			s.revs.Delete(owner + "\x00" + name)
		}
	}
	if wrongRevision(err) {
		return errRetry
	}
	return err
}

// Renew implements idempotency.Store.
func (s *IdempotencyStore) Renew(ctx context.Context, k idempotency.Key, owner string, lease time.Duration) error {
	return s.swap(ctx, k, owner, func(e *idempotency.Entry, now time.Time) (*idempotency.Entry, bool) {
		return &idempotency.Entry{Owner: owner, Expires: now.Add(lease)}, false
	})
}

// Complete implements idempotency.Store.
func (s *IdempotencyStore) Complete(ctx context.Context, k idempotency.Key, owner string, result []byte, ttl time.Duration) error {
	tried := false
	return s.swap(ctx, k, owner, func(e *idempotency.Entry, now time.Time) (*idempotency.Entry, bool) {
		// A Done entry of ours is an earlier attempt of this Complete
		// only if this Complete already tried to write.
		landed := e.Done && tried
		tried = true
		return &idempotency.Entry{Owner: owner, Done: true, Result: result, Expires: now.Add(ttl)}, landed
	})
}

// Release implements idempotency.Store.
func (s *IdempotencyStore) Release(ctx context.Context, k idempotency.Key, owner string) error {
	err := s.swap(ctx, k, owner, func(*idempotency.Entry, time.Time) (*idempotency.Entry, bool) { return nil, false })
	if errors.Is(err, idempotency.ErrNotOwner) {
		return nil
	}
	return err
}

// Get implements idempotency.Store.
func (s *IdempotencyStore) Get(ctx context.Context, k idempotency.Key) (idempotency.Record, error) {
	var rec idempotency.Record
	err := s.retry(ctx, func(ctx context.Context) error {
		e, _, err := s.read(ctx, k.Hash())
		if err != nil {
			return err
		}
		rec = idempotency.Record{}
		if e != nil && e.Live(s.now()) {
			rec = e.Record()
		}
		return nil
	})
	return rec, err
}
