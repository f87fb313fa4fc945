package dlq

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// IdempotencyKeyHeader is the metadata key under which Replay sends an
// entry's original idempotency key, so that a server that did receive the
// call once can recognise the replay as a duplicate.
const IdempotencyKeyHeader = "tether-idempotency-key"

// Invoker sends one raw call: procedure, protobuf-encoded request, metadata
// (which includes the idempotency key). The client package will implement it.
//
// An Invoker used for replay should not dead-letter a call that fails again:
// Replay already keeps the entry and records the failure on it.
type Invoker interface {
	InvokeRaw(ctx context.Context, procedure string, request []byte, md map[string][]string) (response []byte, err error)
}

// StreamInvoker is an Invoker that can also replay server-streaming calls
// (entries with ServerStreaming set). The client package implements it.
type StreamInvoker interface {
	Invoker
	// InvokeServerStreamRaw sends one server-streaming call and reads its
	// responses to the end, calling onResponse for each. It returns the
	// call's error, nil when it ended cleanly.
	InvokeServerStreamRaw(ctx context.Context, procedure string, request []byte, md map[string][]string, onResponse func([]byte) error) error
}

// Replay sends the entry with the given ID again through inv, with its
// original metadata and, under IdempotencyKeyHeader, its original
// idempotency key.
//
// When the call succeeds, Replay deletes the entry and returns the
// response (nil for a server-streaming entry: its responses are read to the
// end and dropped). When it fails, Replay keeps the entry, increments its Replays,
// sets LastReplay and LastReplayError, and returns the call's error wrapped
// (so tether.CodeOf still finds its code). The bookkeeping is written even if
// ctx has ended, since a timeout is a common reason for the failure. An
// entry that is not in the store gives ErrNotFound and no call.
func Replay(ctx context.Context, s Store, inv Invoker, id string) (response []byte, err error) {
	e, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	res, callErr, storeErr := replay(ctx, s, inv, e)
	switch {
	case callErr != nil && storeErr != nil:
		return nil, errors.Join(fmt.Errorf("dlq: replay %s: %w", id, callErr), storeErr)
	case callErr != nil:
		return nil, fmt.Errorf("dlq: replay %s: %w", id, callErr)
	case storeErr != nil:
		return res, storeErr
	}
	return res, nil
}

// replay makes the call for e and does the bookkeeping. callErr is the
// call's error; storeErr is an error recording the outcome in the store.
func replay(ctx context.Context, s Store, inv Invoker, e *Entry) (res []byte, callErr, storeErr error) {
	if e.ServerStreaming {
		callErr = replayStream(ctx, inv, e)
	} else {
		res, callErr = inv.InvokeRaw(ctx, e.Procedure, e.Request, replayMetadata(e))
	}
	// Record the outcome even when ctx is what made the call fail.
	bg := context.WithoutCancel(ctx)
	if callErr == nil {
		if err := s.Delete(bg, e.ID); err != nil && !errors.Is(err, ErrNotFound) {
			storeErr = fmt.Errorf("dlq: replay of %s succeeded but the entry could not be deleted: %w", e.ID, err)
		}
		return res, nil, storeErr
	}
	e.Replays++
	e.LastReplay = time.Now()
	e.LastReplayError = callErr.Error()
	if err := s.Update(bg, e); err != nil && !errors.Is(err, ErrNotFound) {
		storeErr = fmt.Errorf("dlq: replay of %s failed and the failure could not be recorded: %w", e.ID, err)
	}
	return nil, callErr, storeErr
}

// replayStream replays a server-streaming entry, dropping its responses.
func replayStream(ctx context.Context, inv Invoker, e *Entry) error {
	si, ok := inv.(StreamInvoker)
	if !ok {
		return fmt.Errorf("dlq: entry %s is a server-streaming call, and this Invoker (%T) cannot replay streams", e.ID, inv)
	}
	return si.InvokeServerStreamRaw(ctx, e.Procedure, e.Request, replayMetadata(e), func([]byte) error { return nil })
}

// replayMetadata returns a copy of e's metadata carrying e's idempotency key
// under IdempotencyKeyHeader (in place of any spelling of it already there).
func replayMetadata(e *Entry) map[string][]string {
	md := cloneMetadata(e.Metadata)
	if e.IdempotencyKey == "" {
		return md
	}
	if md == nil {
		md = make(map[string][]string, 1)
	}
	for k := range md {
		if strings.EqualFold(k, IdempotencyKeyHeader) {
			delete(md, k)
		}
	}
	md[IdempotencyKeyHeader] = []string{e.IdempotencyKey}
	return md
}

// replayPage is how many entries ReplayAll reads from the store at a time.
const replayPage = 64

// ReplayAll replays, oldest first, the entries that opts selects (Limit caps
// how many are tried), as Replay does each one, and returns how many
// succeeded and how many failed. A failed call does not stop it; an error
// of the store or the end of ctx does, and is returned with the counts so
// far.
//
// ReplayAll works on a snapshot: it first lists the IDs of the selected
// entries, then replays those, so it always ends, even if entries are added
// meanwhile (they wait for the next ReplayAll). An entry of the snapshot
// that is gone by its turn (deleted or replayed by someone else) is skipped
// and not counted.
func ReplayAll(ctx context.Context, s Store, inv Invoker, opts ListOptions) (ok, failed int, err error) {
	ids, err := snapshot(ctx, s, opts)
	if err != nil {
		return 0, 0, err
	}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return ok, failed, err
		}
		e, err := s.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return ok, failed, err
		}
		_, callErr, storeErr := replay(ctx, s, inv, e)
		if callErr != nil {
			failed++
		} else {
			ok++
		}
		if storeErr != nil {
			return ok, failed, storeErr
		}
	}
	return ok, failed, nil
}

// snapshot returns the IDs of the entries that opts selects, oldest first,
// reading the store a page at a time.
func snapshot(ctx context.Context, s Store, opts ListOptions) ([]string, error) {
	var ids []string
	after := opts.After
	for {
		page := replayPage
		if opts.Limit > 0 {
			left := opts.Limit - len(ids)
			if left <= 0 {
				return ids, nil
			}
			page = min(page, left)
		}
		entries, err := s.List(ctx, ListOptions{Procedure: opts.Procedure, Limit: page, After: after})
		if err != nil {
			return ids, err
		}
		if len(entries) == 0 {
			return ids, nil
		}
		for _, e := range entries {
			ids = append(ids, e.ID)
		}
		after = entries[len(entries)-1].ID
	}
}
