package idempotency

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"time"
)

// Key identifies one logical call in a Store: the caller's scope (see the
// package documentation on principals), the procedure and the idempotency
// key the client sent.
type Key struct {
	Principal string
	Procedure string
	Key       string
}

// State is what a Store holds for a key.
type State int

// States of a key.
const (
	// StateNone: the store holds nothing for the key.
	StateNone State = iota
	// StateClaimed: Claim created a claim for the caller's owner, which
	// now runs the handler.
	StateClaimed
	// StateRunning: another owner holds a live claim (its lease has not
	// expired).
	StateRunning
	// StateDone: the key was completed; Record.Result is the encoded
	// result.
	StateDone
)

// Record is a store's answer for one key.
type Record struct {
	State State
	// Owner is the owner of the claim (StateClaimed, StateRunning).
	Owner string
	// Result is the encoded result a completed key holds (StateDone). It
	// is opaque to the store.
	Result []byte
}

// ErrFull is returned (wrapped) by Store.Claim when the store has no room
// for a new key: a typed refusal. The interceptor refuses the call with
// unavailable, as unprocessed (server.RefuseUnprocessed), without running
// its handler, so the client retries it transparently.
var ErrFull = errors.New("idempotency: store full")

// ErrNotOwner is returned (wrapped) by Store.Renew and Store.Complete when
// the owner no longer holds the key's claim: its lease expired (and maybe
// another owner claimed the key) or the claim was released.
var ErrNotOwner = errors.New("idempotency: claim not held by this owner")

// Store holds claims and results of keyed calls, shared by every server
// that uses it. A claim has an owner (unique per call attempt) and a lease:
// a claim whose lease has passed counts as absent, so a repeat of a call
// whose server died runs again once the lease expires, and exactly one
// repeat wins that claim. The interceptor renews the lease while the handler
// runs. Implementations are safe for concurrent use, by any number of
// processes for shared stores. Package idemtest checks an implementation.
//
// Errors other than ErrFull and ErrNotOwner mean the store could not be
// reached or failed; see WithStore for what the interceptor then does.
type Store interface {
	// Claim claims k for owner for lease, unless the store holds a live
	// claim (StateRunning) or a result (StateDone) for it; it returns
	// StateClaimed when the claim is the caller's. Of concurrent Claims of
	// a key, exactly one gets StateClaimed. It fails with ErrFull when the
	// store has no room for a new key.
	Claim(ctx context.Context, k Key, owner string, lease time.Duration) (Record, error)
	// Renew extends owner's claim of k to lease from now, or fails with
	// ErrNotOwner if owner does not hold it.
	Renew(ctx context.Context, k Key, owner string, lease time.Duration) error
	// Complete replaces owner's claim of k with result, kept for ttl, or
	// fails with ErrNotOwner if owner does not hold the claim.
	Complete(ctx context.Context, k Key, owner string, result []byte, ttl time.Duration) error
	// Release removes owner's claim of k (the call left no result: a
	// transient error or a panic), so that a repeat runs again. It does
	// nothing if owner does not hold the claim.
	Release(ctx context.Context, k Key, owner string) error
	// Get returns what the store holds for k (StateNone, StateRunning or
	// StateDone), without changing it.
	Get(ctx context.Context, k Key) (Record, error)
}

// Bytes returns an unambiguous encoding of k (each part prefixed with its
// length), for stores that key their records by bytes.
func (k Key) Bytes() []byte {
	var b []byte
	for _, part := range []string{k.Principal, k.Procedure, k.Key} {
		b = binary.AppendUvarint(b, uint64(len(part)))
		b = append(b, part...)
	}
	return b
}

// Hash returns a fixed-length name for k made of hex digits (SHA-256 of
// Bytes), for stores whose keys allow few characters or few bytes (NATS
// key-value).
func (k Key) Hash() string {
	sum := sha256.Sum256(k.Bytes())
	return hex.EncodeToString(sum[:])
}

// Entry is what a store keeps for one key, for Store implementations that
// keep bytes (MarshalEntry, UnmarshalEntry): a claim (Done false) or a
// result (Done true), alive until Expires.
type Entry struct {
	Owner   string
	Done    bool
	Expires time.Time
	Result  []byte
}

// Live reports whether e has not expired at now.
func (e *Entry) Live(now time.Time) bool { return now.Before(e.Expires) }

// Record returns what Claim (by another owner) and Get answer for e.
func (e *Entry) Record() Record {
	if e.Done {
		return Record{State: StateDone, Result: append([]byte(nil), e.Result...)}
	}
	return Record{State: StateRunning, Owner: e.Owner}
}

// MarshalEntry encodes e: a version byte, a flags byte, the expiry
// (Unix nanoseconds, 8 bytes big-endian), the owner (uvarint length and
// bytes), then the result.
func MarshalEntry(e *Entry) []byte {
	b := make([]byte, 0, 2+8+binary.MaxVarintLen64+len(e.Owner)+len(e.Result))
	var flags byte
	if e.Done {
		flags = 1
	}
	b = append(b, entryVersion, flags)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Expires.UnixNano()))
	b = binary.AppendUvarint(b, uint64(len(e.Owner)))
	b = append(b, e.Owner...)
	return append(b, e.Result...)
}

const entryVersion = 1

// UnmarshalEntry decodes what MarshalEntry encoded.
func UnmarshalEntry(b []byte) (*Entry, error) {
	if len(b) < 10 || b[0] != entryVersion || b[1] > 1 {
		return nil, errors.New("idempotency: bad stored entry")
	}
	e := &Entry{Done: b[1] == 1, Expires: time.Unix(0, int64(binary.BigEndian.Uint64(b[2:10])))}
	n, w := binary.Uvarint(b[10:])
	if w <= 0 || uint64(len(b)-10-w) < n {
		return nil, errors.New("idempotency: bad stored entry")
	}
	rest := b[10+w:]
	e.Owner = string(rest[:n])
	if len(rest) > int(n) {
		e.Result = append([]byte(nil), rest[n:]...)
	}
	return e, nil
}
