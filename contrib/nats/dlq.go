package tethernats

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tetherrpc/tether/dlq"
)

// DefaultDLQBucket is the key-value bucket of a DLQ unless WithDLQBucket
// says otherwise.
const DefaultDLQBucket = "tether_dlq"

// DLQ is a dlq.Store on a JetStream key-value bucket, for clients whose
// local disk does not outlive them (containers): every Put is acknowledged
// by JetStream (on disk, on a quorum of the bucket's replicas) before it
// returns. Several clients may share one bucket: IDs come from a counter in
// the bucket advanced by compare-and-swap, so they are unique and
// increasing across all of them.
//
// Layout: the entry with ID id is under the key "e." followed by the hex
// digits of id (which sort as the IDs do), its value dlq.MarshalEntry's
// encoding; the counter is under "seq" (8 bytes, big-endian).
type DLQ struct {
	kv     jetstream.KeyValue
	closed atomic.Bool
}

var _ dlq.Store = (*DLQ)(nil)

// DLQOption configures NewDLQ.
type DLQOption func(*dlqConfig)

type dlqConfig struct {
	bucket   string
	replicas int
	memory   bool
}

// WithDLQBucket names the bucket (default "tether_dlq").
func WithDLQBucket(name string) DLQOption { return func(c *dlqConfig) { c.bucket = name } }

// WithDLQReplicas sets the bucket's replicas in a cluster (default 1).
func WithDLQReplicas(n int) DLQOption { return func(c *dlqConfig) { c.replicas = n } }

// WithDLQMemoryStorage keeps the bucket in the servers' memory (tests).
func WithDLQMemoryStorage() DLQOption { return func(c *dlqConfig) { c.memory = true } }

// NewDLQ creates the bucket if it does not exist and returns a store on
// it; an existing bucket keeps its configuration. Close does not close js's connection.
func NewDLQ(ctx context.Context, js jetstream.JetStream, opts ...DLQOption) (*DLQ, error) {
	c := dlqConfig{bucket: DefaultDLQBucket, replicas: 1}
	for _, o := range opts {
		o(&c)
	}
	cfg := jetstream.KeyValueConfig{
		Bucket:      c.bucket,
		Description: "tether dead letters",
		History:     1,
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
	kv, err = consistent(ctx, js, kv, c.bucket, 0)
	if err != nil {
		return nil, err
	}
	return &DLQ{kv: kv}, nil
}

const (
	entryPrefix = "e."
	seqKey      = "seq"
)

func entryKey(id string) string { return entryPrefix + hex.EncodeToString([]byte(id)) }

func idOf(key string) (string, bool) {
	if !strings.HasPrefix(key, entryPrefix) {
		return "", false
	}
	b, err := hex.DecodeString(key[len(entryPrefix):])
	return string(b), err == nil
}

func (s *DLQ) check(ctx context.Context) error {
	if s.closed.Load() {
		return dlq.ErrClosed
	}
	return ctx.Err()
}

func (s *DLQ) wrap(op string, err error) error {
	if err == nil || errors.Is(err, dlq.ErrNotFound) || errors.Is(err, dlq.ErrExists) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("tethernats: dlq %s: %w", op, err)
}

// next advances the counter and returns its new value.
func (s *DLQ) next(ctx context.Context) (uint64, error) {
	for {
		var n, rev uint64
		kve, err := s.kv.Get(ctx, seqKey)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return 0, err
		case len(kve.Value()) == 8:
			n, rev = binary.BigEndian.Uint64(kve.Value()), kve.Revision()
		default:
			return 0, errors.New("tethernats: dlq: bad counter")
		}
		v := binary.BigEndian.AppendUint64(nil, n+1)
		if rev == 0 {
			_, err = s.kv.Create(ctx, seqKey, v)
		} else {
			_, err = s.kv.Update(ctx, seqKey, v, rev)
		}
		if err == nil {
			return n + 1, nil
		}
		if !wrongRevision(err) {
			return 0, err
		}
	}
}

// Put implements dlq.Store.
func (s *DLQ) Put(ctx context.Context, e *dlq.Entry) (string, error) {
	if err := s.check(ctx); err != nil {
		return "", err
	}
	if err := e.Validate(); err != nil {
		return "", err
	}
	now := time.Now()
	for {
		id := e.ID
		if id == "" {
			n, err := s.next(ctx)
			if err != nil {
				return "", s.wrap("put", err)
			}
			id = dlq.FormatID(n)
		}
		c, err := dlq.PrepareEntry(e, id, now)
		if err != nil {
			return "", err
		}
		v, err := dlq.MarshalEntry(c)
		if err != nil {
			return "", err
		}
		_, err = s.kv.Create(ctx, entryKey(id), v)
		switch {
		case err == nil:
			e.ID, e.DeadLettered = c.ID, c.DeadLettered
			return id, nil
		case wrongRevision(err) && e.ID != "":
			return "", fmt.Errorf("%w: %q", dlq.ErrExists, id)
		case wrongRevision(err):
			continue // a caller-chosen ID took this number: take the next
		}
		return "", s.wrap("put", err)
	}
}

func (s *DLQ) get(ctx context.Context, id string) (*dlq.Entry, uint64, error) {
	kve, err := s.kv.Get(ctx, entryKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, fmt.Errorf("%w: %q", dlq.ErrNotFound, id)
	}
	if err != nil {
		return nil, 0, err
	}
	e, err := dlq.UnmarshalEntry(kve.Value())
	if err != nil {
		return nil, 0, err
	}
	e.ID = id
	return e, kve.Revision(), nil
}

// Get implements dlq.Store.
func (s *DLQ) Get(ctx context.Context, id string) (*dlq.Entry, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	e, _, err := s.get(ctx, id)
	return e, s.wrap("get", err)
}

// ids returns the IDs in the bucket, sorted.
func (s *DLQ) ids(ctx context.Context) ([]string, error) {
	l, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	defer l.Stop()
	var ids []string
	for k := range l.Keys() {
		if id, ok := idOf(k); ok {
			ids = append(ids, id)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sort.Strings(ids)
	return ids, nil
}

// list returns the entries that match, in ID order, after after, up to
// limit (0: all).
func (s *DLQ) list(ctx context.Context, match func(*dlq.Entry) bool, after string, limit int) ([]*dlq.Entry, error) {
	ids, err := s.ids(ctx)
	if err != nil {
		return nil, err
	}
	var out []*dlq.Entry
	for _, id := range ids {
		if after != "" && id <= after {
			continue
		}
		e, _, err := s.get(ctx, id)
		if errors.Is(err, dlq.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		if match(e) {
			out = append(out, e)
			if limit > 0 && len(out) == limit {
				break
			}
		}
	}
	return out, nil
}

// List implements dlq.Store.
func (s *DLQ) List(ctx context.Context, opts dlq.ListOptions) ([]*dlq.Entry, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	es, err := s.list(ctx, opts.Match, opts.After, opts.Limit)
	return es, s.wrap("list", err)
}

// Update implements dlq.Store.
func (s *DLQ) Update(ctx context.Context, e *dlq.Entry) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if err := e.Validate(); err != nil {
		return err
	}
	for {
		_, rev, err := s.get(ctx, e.ID)
		if err != nil {
			return s.wrap("update", err)
		}
		v, err := dlq.MarshalEntry(e)
		if err != nil {
			return err
		}
		_, err = s.kv.Update(ctx, entryKey(e.ID), v, rev)
		if err == nil || !wrongRevision(err) {
			return s.wrap("update", err)
		}
	}
}

// Delete implements dlq.Store.
func (s *DLQ) Delete(ctx context.Context, id string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	for {
		_, rev, err := s.get(ctx, id)
		if err != nil {
			return s.wrap("delete", err)
		}
		err = s.kv.Delete(ctx, entryKey(id), jetstream.LastRevision(rev))
		if err == nil || !wrongRevision(err) {
			return s.wrap("delete", err)
		}
	}
}

// Purge implements dlq.Store.
func (s *DLQ) Purge(ctx context.Context, opts dlq.PurgeOptions) (int, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	es, err := s.list(ctx, opts.Match, "", 0)
	if err != nil {
		return 0, s.wrap("purge", err)
	}
	n := 0
	for _, e := range es {
		err := s.Delete(ctx, e.ID)
		if errors.Is(err, dlq.ErrNotFound) {
			continue
		}
		if err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// Len implements dlq.Store.
func (s *DLQ) Len(ctx context.Context) (int, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	ids, err := s.ids(ctx)
	return len(ids), s.wrap("len", err)
}

// Close implements dlq.Store: later calls fail with dlq.ErrClosed. The
// NATS connection stays open (it is the caller's).
func (s *DLQ) Close() error {
	s.closed.Store(true)
	return nil
}
