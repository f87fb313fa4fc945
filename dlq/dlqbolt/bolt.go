// Package dlqbolt is the durable dead-letter store: a dlq.Store in one bbolt
// file. It is a package of its own so that only programs that open one link
// bbolt; the dlq package keeps the Store interface, the in-memory store and
// replay.
//
//	store, err := dlqbolt.Open("tether-dlq.db")
//	if err != nil { ... }
//	defer store.Close()
//	c, err := client.New(url, client.WithDeadLetterQueue(store))
//
// Every Put is committed and fsynced before it returns, so an entry survives
// a crash or a SIGKILL of the process right after Put. bbolt takes an
// exclusive lock on the file, so only one process (one open handle) may use
// it at a time; a second Open waits for the lock timeout (one second by
// default) and fails with ErrLocked.
package dlqbolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/tetherrpc/tether/dlq"
)

// ErrLocked is returned (wrapped) by Open when another process, or another
// open handle in this one, holds the store's file lock for longer than the
// lock timeout.
var ErrLocked = errors.New("dlq: store is locked by another process")

// BucketName is the bbolt bucket that holds the entries of a Store,
// keyed by ID. Its name carries the layout version.
const BucketName = "tether.dlq.v1"

// DefaultLockTimeout is how long Open waits for the file lock unless
// WithLockTimeout says otherwise.
const DefaultLockTimeout = time.Second

// FileMode is the permission a Store's file is created with: the
// entries hold request payloads and metadata, which may be sensitive.
const FileMode = 0o600

var bucketName = []byte(BucketName)

// Store is the durable dlq.Store: one bbolt file. Each write is committed
// and fsynced before it returns. A Store is safe for concurrent use; only
// one Store (in any process) can have a given file open at a time.
type Store struct {
	db   *bolt.DB
	path string
}

var _ dlq.Store = (*Store)(nil)

// Option configures Open.
type Option func(*boltConfig)

type boltConfig struct {
	lockTimeout time.Duration
	readOnly    bool
}

// WithLockTimeout sets how long Open waits for the file lock held by
// another process or handle before it fails with ErrLocked. Zero or less
// waits for as long as it takes. The default is DefaultLockTimeout.
func WithLockTimeout(d time.Duration) Option {
	return func(c *boltConfig) { c.lockTimeout = d }
}

// WithReadOnly opens the store for reading only: the file must exist, and
// Put, Update, Delete and Purge fail. A read-only store takes a shared lock,
// so several read-only handles can be open at once, but not alongside a
// read-write one.
func WithReadOnly() Option {
	return func(c *boltConfig) { c.readOnly = true }
}

// Open opens the bbolt store at path, creating the file (mode 0600) and
// its bucket when they do not exist. It waits for the file lock for the lock
// timeout (DefaultLockTimeout unless WithLockTimeout says otherwise) and
// fails with an error wrapping ErrLocked when the file is still held by
// another process or another open Store.
func Open(path string, opts ...Option) (*Store, error) {
	cfg := boltConfig{lockTimeout: DefaultLockTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	timeout := cfg.lockTimeout
	if timeout < 0 {
		timeout = 0 // bbolt: wait indefinitely
	}
	db, err := bolt.Open(path, FileMode, &bolt.Options{
		Timeout:  timeout,
		ReadOnly: cfg.readOnly,
		// Durability is the point of this store: every commit is
		// fsynced. Never set NoSync (nor NoFreelistSync, which only
		// trades open time for write time).
		NoSync: false,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s is held by another process or open store (waited %v for the file lock): %w",
			ErrLocked, path, timeout, err)
	}
	if err != nil {
		return nil, fmt.Errorf("dlq: open %s: %w", path, err)
	}
	if !cfg.readOnly {
		err = db.Update(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucketIfNotExists(bucketName)
			return err
		})
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("dlq: open %s: create bucket: %w", path, err)
		}
	}
	return &Store{db: db, path: path}, nil
}

// Path returns the file the store was opened from.
func (s *Store) Path() string { return s.path }

// Put implements dlq.Store. The entry is committed and fsynced before Put
// returns. Concurrent Puts are batched into one transaction (and one fsync)
// when they arrive together.
func (s *Store) Put(ctx context.Context, e *dlq.Entry) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if err := e.Validate(); err != nil {
		return "", err
	}
	now := time.Now()
	var stored *dlq.Entry
	// Batch may run the function more than once (alone, after a failed
	// batch), so it only sets stored and never touches e.
	err := s.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		if b == nil {
			return berrors.ErrBucketNotFound
		}
		id := e.ID
		if id == "" {
			// The sequence only grows, so an ID is never reused; skip
			// any that a caller-chosen ID already took.
			for {
				n, err := b.NextSequence()
				if err != nil {
					return err
				}
				id = dlq.FormatID(n)
				if b.Get([]byte(id)) == nil {
					break
				}
			}
		} else if b.Get([]byte(id)) != nil {
			return fmt.Errorf("%w: %q", dlq.ErrExists, id)
		}
		c, err := dlq.PrepareEntry(e, id, now)
		if err != nil {
			return err
		}
		v, err := dlq.MarshalEntry(c)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(id), v); err != nil {
			return err
		}
		stored = c
		return nil
	})
	if err != nil {
		return "", s.wrap("put", err)
	}
	e.ID, e.DeadLettered = stored.ID, stored.DeadLettered
	return stored.ID, nil
}

// Get implements dlq.Store.
func (s *Store) Get(ctx context.Context, id string) (*dlq.Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var e *dlq.Entry
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		if b == nil {
			return fmt.Errorf("%w: %q", dlq.ErrNotFound, id)
		}
		v := b.Get([]byte(id))
		if v == nil {
			return fmt.Errorf("%w: %q", dlq.ErrNotFound, id)
		}
		var err error
		e, err = decodeStored([]byte(id), v)
		return err
	})
	if err != nil {
		return nil, s.wrap("get", err)
	}
	return e, nil
}

// List implements dlq.Store.
func (s *Store) List(ctx context.Context, opts dlq.ListOptions) ([]*dlq.Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []*dlq.Entry
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		k, v := c.First()
		if opts.After != "" {
			k, v = c.Seek([]byte(opts.After))
			if k != nil && bytes.Equal(k, []byte(opts.After)) {
				k, v = c.Next()
			}
		}
		for n := 0; k != nil; k, v = c.Next() {
			if n++; n%256 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			e, err := decodeStored(k, v)
			if err != nil {
				return err
			}
			if !opts.Match(e) {
				continue
			}
			out = append(out, e)
			if opts.Limit > 0 && len(out) >= opts.Limit {
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap("list", err)
	}
	return out, nil
}

// Update implements dlq.Store. The change is committed and fsynced before Update
// returns.
func (s *Store) Update(ctx context.Context, e *dlq.Entry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v, err := dlq.MarshalEntry(e)
	if err != nil {
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		if b == nil || b.Get([]byte(e.ID)) == nil {
			return fmt.Errorf("%w: %q", dlq.ErrNotFound, e.ID)
		}
		return b.Put([]byte(e.ID), v)
	})
	return s.wrap("update", err)
}

// Delete implements dlq.Store. The deletion is committed and fsynced before
// Delete returns.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		if b == nil || b.Get([]byte(id)) == nil {
			return fmt.Errorf("%w: %q", dlq.ErrNotFound, id)
		}
		return b.Delete([]byte(id))
	})
	return s.wrap("delete", err)
}

// Purge implements dlq.Store. It removes the matching entries in one
// transaction: all of them or, on error, none. The zero PurgeOptions removes
// every entry without reading it; with a filter, an entry that cannot be
// decoded makes Purge fail with an error that names it (Delete removes it).
func (s *Store) Purge(ctx context.Context, opts dlq.PurgeOptions) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	all := opts == dlq.PurgeOptions{}
	var purged int
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		if b == nil {
			return nil
		}
		// Collect first: deleting under a cursor makes it skip keys.
		var keys [][]byte
		c := b.Cursor()
		n := 0
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if n++; n%256 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if !all {
				e, err := decodeStored(k, v)
				if err != nil {
					return err
				}
				if !opts.Match(e) {
					continue
				}
			}
			keys = append(keys, bytes.Clone(k))
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		purged = len(keys)
		return nil
	})
	if err != nil {
		return 0, s.wrap("purge", err)
	}
	return purged, nil
}

// Len implements dlq.Store.
func (s *Store) Len(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var n int
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketName); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	})
	if err != nil {
		return 0, s.wrap("len", err)
	}
	return n, nil
}

// Close implements dlq.Store: it releases the file and its lock.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("dlq: close %s: %w", s.path, err)
	}
	return nil
}

// wrap adds the store's path to an error and maps bbolt's closed-database
// error to ErrClosed. Errors of this package and context errors pass as
// they are.
func (s *Store) wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, berrors.ErrDatabaseNotOpen):
		return fmt.Errorf("dlq: %s: %w", op, dlq.ErrClosed)
	case errors.Is(err, dlq.ErrNotFound), errors.Is(err, dlq.ErrExists),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return fmt.Errorf("dlq: %s %s: %w", op, s.path, err)
}

// decodeStored decodes the value stored under key; the key is the ID.
func decodeStored(key, v []byte) (*dlq.Entry, error) {
	e, err := dlq.UnmarshalEntry(v)
	if err != nil {
		return nil, fmt.Errorf("entry %q: %w", key, err)
	}
	e.ID = string(key)
	return e, nil
}
