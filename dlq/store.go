package dlq

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrNotFound is returned (wrapped) by Get, Update and Delete for an ID that
// is not in the store. Test for it with errors.Is.
var ErrNotFound = errors.New("dlq: entry not found")

// ErrExists is returned (wrapped) by Put for an entry whose ID is already in
// the store.
var ErrExists = errors.New("dlq: entry already exists")

// ErrClosed is returned (wrapped) by the methods of a closed store.
var ErrClosed = errors.New("dlq: store is closed")

// Store is a dead-letter queue. Implementations are safe for concurrent use.
// Entries handed to a store and returned by it are copies: changing one
// afterwards does not change the stored entry.
type Store interface {
	// Put adds e to the store and returns its ID. When e.ID is empty, Put
	// assigns a new one; in both cases it sets e.ID. When e.DeadLettered
	// is zero, Put sets it to the current time. A durable store has
	// written the entry to stable storage (fsync) before Put returns.
	// Put fails with ErrExists if e.ID is already in the store, and for
	// an entry with no Procedure or negative counts.
	Put(ctx context.Context, e *Entry) (id string, err error)
	// Get returns the entry with the given ID, or ErrNotFound.
	Get(ctx context.Context, id string) (*Entry, error)
	// List returns the entries that match opts, in ID order: oldest
	// first, for IDs the store assigned.
	List(ctx context.Context, opts ListOptions) ([]*Entry, error)
	// Update replaces the stored entry that has e.ID with e, for example
	// to record a replay. It returns ErrNotFound if there is none.
	Update(ctx context.Context, e *Entry) error
	// Delete removes the entry with the given ID, or returns ErrNotFound.
	Delete(ctx context.Context, id string) error
	// Purge removes every entry that matches opts and returns how many it
	// removed. The zero PurgeOptions removes all entries.
	Purge(ctx context.Context, opts PurgeOptions) (int, error)
	// Len returns the number of entries.
	Len(ctx context.Context) (int, error)
	// Close releases the store. Calls made after Close fail with
	// ErrClosed. Close is idempotent.
	Close() error
}

// ListOptions selects the entries that List returns. The zero value selects
// all of them.
type ListOptions struct {
	// Procedure, when set, keeps only entries for that procedure.
	Procedure string
	// Limit, when positive, caps the number of entries returned.
	Limit int
	// After, when set, keeps only entries whose ID sorts after it. Pass
	// the last ID of one page to get the next.
	After string
}

// PurgeOptions selects the entries that Purge removes. The zero value
// selects all of them.
type PurgeOptions struct {
	// Procedure, when set, removes only entries for that procedure.
	Procedure string
	// OlderThan, when not zero, removes only entries dead-lettered before
	// that time.
	OlderThan time.Time
}

// Match reports whether opts selects e (its Procedure; Limit and After are
// the store's to apply), for Store implementations.
func (o ListOptions) Match(e *Entry) bool {
	return o.Procedure == "" || e.Procedure == o.Procedure
}

// Match reports whether opts selects e, for Store implementations.
func (o PurgeOptions) Match(e *Entry) bool {
	return (o.Procedure == "" || e.Procedure == o.Procedure) &&
		(o.OlderThan.IsZero() || e.DeadLettered.Before(o.OlderThan))
}

// FormatID returns the ID a store assigns for its sequence number n: 20
// decimal digits, enough for any uint64, so that IDs sort as their numbers
// do (see "IDs" in the package documentation).
func FormatID(n uint64) string { return fmt.Sprintf("%020d", n) }

// PrepareEntry checks e (Validate) and returns the copy of it that a Store's
// Put keeps under id: with ID set to id and, when e.DeadLettered is zero,
// DeadLettered set to now.
func PrepareEntry(e *Entry, id string, now time.Time) (*Entry, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	c := e.Clone()
	c.ID = id
	if c.DeadLettered.IsZero() {
		c.DeadLettered = now
	}
	return c, nil
}

func notFound(id string) error { return fmt.Errorf("%w: %q", ErrNotFound, id) }

func exists(id string) error { return fmt.Errorf("%w: %q", ErrExists, id) }
