// Package idembolt is a durable idempotency.Store in one bbolt file: claims
// and results survive a restart of the server (or a crash: every write is
// committed and fsynced before it returns), so a repeat that arrives after
// the restart gets the first call's result, and a claim of a call the crash
// cut expires with its lease. It is a package of its own so that only
// programs that open one link bbolt.
//
//	store, err := idembolt.Open("tether-idempotency.db")
//	if err != nil { ... }
//	defer store.Close()
//	srv := server.New(server.WithInterceptors(idempotency.New(idempotency.WithStore(store))))
//
// bbolt takes an exclusive lock on the file: one process uses a store at a
// time (durable on one node; a fleet shares contrib/nats's store instead).
package idembolt

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/tetherrpc/tether/server/idempotency"
)

// BucketName is the bbolt bucket that holds the store's entries, keyed by
// idempotency.Key.Bytes, valued by idempotency.MarshalEntry.
const BucketName = "tether.idempotency.v1"

// DefaultMaxKeys bounds the keys a store holds unless WithMaxKeys says
// otherwise.
const DefaultMaxKeys = 1_000_000

// ErrLocked is returned (wrapped) by Open when another process, or another
// open Store, holds the file's lock for longer than a second.
var ErrLocked = errors.New("idembolt: store is locked by another process")

var bucket = []byte(BucketName)

// Store is the durable idempotency.Store. It is safe for concurrent use.
type Store struct {
	db  *bolt.DB
	max int
	now func() time.Time

	mu sync.Mutex // guards n
	n  int        // keys in the bucket
}

var _ idempotency.Store = (*Store)(nil)

// Option configures Open.
type Option func(*Store)

// WithMaxKeys bounds the keys held (default DefaultMaxKeys); n <= 0 keeps
// the default. To make room the store forgets expired entries and then the
// result that expires first; it never forgets a live claim, and when only
// live claims are left Claim fails with idempotency.ErrFull.
func WithMaxKeys(n int) Option {
	return func(s *Store) {
		if n > 0 {
			s.max = n
		}
	}
}

// Open opens (or creates, mode 0600) the store at path.
func Open(path string, opts ...Option) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s: %w", ErrLocked, path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("idembolt: open %s: %w", path, err)
	}
	s := &Store{db: db, max: DefaultMaxKeys, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		s.n = b.Stats().KeyN
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("idembolt: open %s: %w", path, err)
	}
	return s, nil
}

// Close closes the file. Calls made after Close fail.
func (s *Store) Close() error { return s.db.Close() }

// Len returns the number of keys held, expired ones included until they
// are forgotten.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// update runs fn in a write transaction; fn returns the change in the
// number of keys, applied when the transaction commits.
func (s *Store) update(ctx context.Context, fn func(b *bolt.Bucket, now time.Time) (int, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock() // one writer at a time anyway; keeps n exact
	defer s.mu.Unlock()
	var delta int
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		delta, err = fn(tx.Bucket(bucket), s.now())
		return err
	})
	if err == nil {
		s.n += delta
	}
	return err
}

func get(b *bolt.Bucket, k []byte, now time.Time) (*idempotency.Entry, error) {
	v := b.Get(k)
	if v == nil {
		return nil, nil
	}
	e, err := idempotency.UnmarshalEntry(v)
	if err != nil {
		return nil, err
	}
	if !e.Live(now) {
		return nil, nil
	}
	return e, nil
}

// Claim implements idempotency.Store.
func (s *Store) Claim(ctx context.Context, k idempotency.Key, owner string, lease time.Duration) (idempotency.Record, error) {
	var rec idempotency.Record
	kb := k.Bytes()
	err := s.update(ctx, func(b *bolt.Bucket, now time.Time) (int, error) {
		old := b.Get(kb)
		e, err := get(b, kb, now)
		if err != nil {
			return 0, err
		}
		if e != nil {
			rec = e.Record()
			return 0, nil
		}
		delta := 0
		if old == nil {
			delta = 1
			if s.n >= s.max {
				freed, err := s.makeRoom(b, now)
				if err != nil {
					return 0, err
				}
				if s.n-freed >= s.max {
					return -freed, fmt.Errorf("%w: %d live claims", idempotency.ErrFull, s.n-freed)
				}
				delta -= freed
			}
		}
		rec = idempotency.Record{State: idempotency.StateClaimed, Owner: owner}
		return delta, b.Put(kb, idempotency.MarshalEntry(&idempotency.Entry{Owner: owner, Expires: now.Add(lease)}))
	})
	if err != nil && !errors.Is(err, idempotency.ErrFull) {
		return idempotency.Record{}, fmt.Errorf("idembolt: claim: %w", err)
	}
	return rec, err
}

// makeRoom deletes the expired entries, and if none expired, the result
// that expires first; it returns how many keys it deleted.
func (s *Store) makeRoom(b *bolt.Bucket, now time.Time) (int, error) {
	var dead [][]byte
	var oldest []byte
	var oldestAt time.Time
	err := b.ForEach(func(k, v []byte) error {
		e, err := idempotency.UnmarshalEntry(v)
		switch {
		case err != nil || !e.Live(now):
			dead = append(dead, append([]byte(nil), k...))
		case e.Done && (oldest == nil || e.Expires.Before(oldestAt)):
			oldest, oldestAt = append([]byte(nil), k...), e.Expires
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if len(dead) == 0 && oldest != nil {
		dead = append(dead, oldest)
	}
	for _, k := range dead {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(dead), nil
}

// held returns owner's live claim of k, or ErrNotOwner.
func held(b *bolt.Bucket, kb []byte, k idempotency.Key, owner string, now time.Time) (*idempotency.Entry, error) {
	e, err := get(b, kb, now)
	if err != nil {
		return nil, err
	}
	if e == nil || e.Done || e.Owner != owner {
		return nil, fmt.Errorf("%w: key %q", idempotency.ErrNotOwner, k.Key)
	}
	return e, nil
}

// Renew implements idempotency.Store.
func (s *Store) Renew(ctx context.Context, k idempotency.Key, owner string, lease time.Duration) error {
	kb := k.Bytes()
	return s.update(ctx, func(b *bolt.Bucket, now time.Time) (int, error) {
		e, err := held(b, kb, k, owner, now)
		if err != nil {
			return 0, err
		}
		e.Expires = now.Add(lease)
		return 0, b.Put(kb, idempotency.MarshalEntry(e))
	})
}

// Complete implements idempotency.Store.
func (s *Store) Complete(ctx context.Context, k idempotency.Key, owner string, result []byte, ttl time.Duration) error {
	kb := k.Bytes()
	return s.update(ctx, func(b *bolt.Bucket, now time.Time) (int, error) {
		e, err := held(b, kb, k, owner, now)
		if err != nil {
			return 0, err
		}
		e.Done, e.Result, e.Expires = true, result, now.Add(ttl)
		return 0, b.Put(kb, idempotency.MarshalEntry(e))
	})
}

// Release implements idempotency.Store.
func (s *Store) Release(ctx context.Context, k idempotency.Key, owner string) error {
	kb := k.Bytes()
	return s.update(ctx, func(b *bolt.Bucket, now time.Time) (int, error) {
		if _, err := held(b, kb, k, owner, now); err != nil {
			return 0, nil
		}
		return -1, b.Delete(kb)
	})
}

// Get implements idempotency.Store.
func (s *Store) Get(ctx context.Context, k idempotency.Key) (idempotency.Record, error) {
	if err := ctx.Err(); err != nil {
		return idempotency.Record{}, err
	}
	var rec idempotency.Record
	err := s.db.View(func(tx *bolt.Tx) error {
		e, err := get(tx.Bucket(bucket), k.Bytes(), s.now())
		if e != nil {
			rec = e.Record()
		}
		return err
	})
	return rec, err
}
