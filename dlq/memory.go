package dlq

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// MemoryStore is a Store that keeps its entries in memory. It is NOT
// durable: every entry is lost when the process exits or the store is
// closed. Use it in tests, or when a program deliberately opts out of
// durability; use the bbolt store (package dlqbolt) otherwise.
//
// A MemoryStore assigns IDs and orders entries exactly as the bbolt store does,
// and stores entries in the same encoding, so code tested against it sees
// the same behaviour (times lose their monotonic clock reading, for one).
type MemoryStore struct {
	mu     sync.Mutex
	seq    uint64
	keys   []string          // sorted
	values map[string][]byte // encoded entries by ID
	closed bool
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{values: make(map[string][]byte)}
}

// lock locks the store and returns nil, or ErrClosed (with the store
// unlocked) if it is closed, or the context's error.
func (s *MemoryStore) lock(ctx context.Context, op string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("dlq: %s: %w", op, ErrClosed)
	}
	return nil
}

// Put implements Store.
func (s *MemoryStore) Put(ctx context.Context, e *Entry) (string, error) {
	if err := e.Validate(); err != nil {
		return "", err
	}
	if err := s.lock(ctx, "put"); err != nil {
		return "", err
	}
	defer s.mu.Unlock()
	id := e.ID
	if id == "" {
		for {
			s.seq++
			id = FormatID(s.seq)
			if _, ok := s.values[id]; !ok {
				break
			}
		}
	} else if _, ok := s.values[id]; ok {
		return "", exists(id)
	}
	c, err := PrepareEntry(e, id, time.Now())
	if err != nil {
		return "", err
	}
	v, err := MarshalEntry(c)
	if err != nil {
		return "", err
	}
	i, _ := slices.BinarySearch(s.keys, id)
	s.keys = slices.Insert(s.keys, i, id)
	s.values[id] = v
	e.ID, e.DeadLettered = c.ID, c.DeadLettered
	return id, nil
}

// Get implements Store.
func (s *MemoryStore) Get(ctx context.Context, id string) (*Entry, error) {
	if err := s.lock(ctx, "get"); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	v, ok := s.values[id]
	if !ok {
		return nil, notFound(id)
	}
	return decodeStored([]byte(id), v)
}

// List implements Store.
func (s *MemoryStore) List(ctx context.Context, opts ListOptions) ([]*Entry, error) {
	if err := s.lock(ctx, "list"); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	i := 0
	if opts.After != "" {
		var found bool
		i, found = slices.BinarySearch(s.keys, opts.After)
		if found {
			i++
		}
	}
	var out []*Entry
	for _, id := range s.keys[i:] {
		e, err := decodeStored([]byte(id), s.values[id])
		if err != nil {
			return nil, err
		}
		if !opts.Match(e) {
			continue
		}
		out = append(out, e)
		if opts.Limit > 0 && len(out) >= opts.Limit {
			break
		}
	}
	return out, nil
}

// Update implements Store.
func (s *MemoryStore) Update(ctx context.Context, e *Entry) error {
	v, err := MarshalEntry(e)
	if err != nil {
		return err
	}
	if err := s.lock(ctx, "update"); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if _, ok := s.values[e.ID]; !ok {
		return notFound(e.ID)
	}
	s.values[e.ID] = v
	return nil
}

// Delete implements Store.
func (s *MemoryStore) Delete(ctx context.Context, id string) error {
	if err := s.lock(ctx, "delete"); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if _, ok := s.values[id]; !ok {
		return notFound(id)
	}
	s.remove(id)
	return nil
}

func (s *MemoryStore) remove(id string) {
	delete(s.values, id)
	if i, ok := slices.BinarySearch(s.keys, id); ok {
		s.keys = slices.Delete(s.keys, i, i+1)
	}
}

// Purge implements Store.
func (s *MemoryStore) Purge(ctx context.Context, opts PurgeOptions) (int, error) {
	if err := s.lock(ctx, "purge"); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	if opts == (PurgeOptions{}) {
		n := len(s.keys)
		s.keys, s.values = nil, make(map[string][]byte)
		return n, nil
	}
	var doomed []string
	for _, id := range s.keys {
		e, err := decodeStored([]byte(id), s.values[id])
		if err != nil {
			return 0, err
		}
		if opts.Match(e) {
			doomed = append(doomed, id)
		}
	}
	for _, id := range doomed {
		s.remove(id)
	}
	return len(doomed), nil
}

// Len implements Store.
func (s *MemoryStore) Len(ctx context.Context) (int, error) {
	if err := s.lock(ctx, "len"); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	return len(s.keys), nil
}

// Close implements Store: it drops every entry.
func (s *MemoryStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.keys, s.values = nil, nil
	return nil
}

// decodeStored decodes the value stored under key; the key is the ID.
func decodeStored(key, v []byte) (*Entry, error) {
	e, err := UnmarshalEntry(v)
	if err != nil {
		return nil, fmt.Errorf("entry %q: %w", key, err)
	}
	e.ID = string(key)
	return e, nil
}
