package idempotency

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// MemoryStore is a Store in one process's memory, bounded in keys. It is
// what the interceptor's built-in cache does, behind the Store interface: a
// reference implementation, and a store to share between several
// interceptors of one process. It forgets settled results (and expired
// claims) to make room, never a live claim; when only live claims are left,
// Claim of a new key fails with ErrFull.
type MemoryStore struct {
	max int
	now func() time.Time

	mu   sync.Mutex
	keys map[Key]*memRecord
}

type memRecord struct {
	owner   string
	done    bool
	result  []byte
	expires time.Time // end of the lease, or of the TTL once done
}

// NewMemoryStore returns a MemoryStore that holds up to maxKeys keys
// (DefaultMaxEntries when maxKeys <= 0).
func NewMemoryStore(maxKeys int) *MemoryStore {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxEntries
	}
	return &MemoryStore{max: maxKeys, now: time.Now, keys: map[Key]*memRecord{}}
}

var _ Store = (*MemoryStore)(nil)

// live returns k's record if it has not expired, forgetting it otherwise.
func (s *MemoryStore) live(k Key, now time.Time) *memRecord {
	r := s.keys[k]
	if r != nil && !now.Before(r.expires) {
		delete(s.keys, k)
		return nil
	}
	return r
}

// Claim implements Store.
func (s *MemoryStore) Claim(ctx context.Context, k Key, owner string, lease time.Duration) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if r := s.live(k, now); r != nil {
		if r.done {
			return Record{State: StateDone, Result: append([]byte(nil), r.result...)}, nil
		}
		return Record{State: StateRunning, Owner: r.owner}, nil
	}
	if len(s.keys) >= s.max {
		s.makeRoom(now)
	}
	if len(s.keys) >= s.max {
		return Record{}, fmt.Errorf("%w: %d live claims", ErrFull, len(s.keys))
	}
	s.keys[k] = &memRecord{owner: owner, expires: now.Add(lease)}
	return Record{State: StateClaimed, Owner: owner}, nil
}

// makeRoom forgets expired keys and then the settled result that expires
// first.
func (s *MemoryStore) makeRoom(now time.Time) {
	var oldest Key
	var oldestAt time.Time
	found := false
	for k, r := range s.keys {
		if !now.Before(r.expires) {
			delete(s.keys, k)
			continue
		}
		if r.done && (!found || r.expires.Before(oldestAt)) {
			oldest, oldestAt, found = k, r.expires, true
		}
	}
	if len(s.keys) >= s.max && found {
		delete(s.keys, oldest)
	}
}

// held returns owner's live claim of k, or ErrNotOwner.
func (s *MemoryStore) held(k Key, owner string) (*memRecord, error) {
	r := s.live(k, s.now())
	if r == nil || r.done || r.owner != owner {
		return nil, fmt.Errorf("%w: key %q", ErrNotOwner, k.Key)
	}
	return r, nil
}

// Renew implements Store.
func (s *MemoryStore) Renew(ctx context.Context, k Key, owner string, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.held(k, owner)
	if err != nil {
		return err
	}
	r.expires = s.now().Add(lease)
	return nil
}

// Complete implements Store.
func (s *MemoryStore) Complete(ctx context.Context, k Key, owner string, result []byte, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.held(k, owner)
	if err != nil {
		return err
	}
	r.done, r.result, r.expires = true, append([]byte(nil), result...), s.now().Add(ttl)
	return nil
}

// Release implements Store.
func (s *MemoryStore) Release(ctx context.Context, k Key, owner string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, err := s.held(k, owner); err == nil && r != nil {
		delete(s.keys, k)
	}
	return nil
}

// Get implements Store.
func (s *MemoryStore) Get(ctx context.Context, k Key) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.live(k, s.now())
	switch {
	case r == nil:
		return Record{}, nil
	case r.done:
		return Record{State: StateDone, Result: append([]byte(nil), r.result...)}, nil
	}
	return Record{State: StateRunning, Owner: r.owner}, nil
}

// Len returns the number of keys held, expired ones included until they
// are forgotten.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys)
}
