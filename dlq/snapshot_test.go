package dlq

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestReplayAllWorksOnASnapshot (issue 10 item 5): an invoker that parks a
// new entry for every failed call (as a client with a dead-letter policy
// did) must not make ReplayAll chase its own copies: it replays the
// entries that existed when it started, and ends.
func TestReplayAllWorksOnASnapshot(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for range 3 {
			if _, err := s.Put(ctx, sampleEntry("/echo.v1.EchoService/Say")); err != nil {
				t.Fatal(err)
			}
		}
		calls := 0
		inv := invokerFunc(func(ctx context.Context, procedure string, request []byte, md map[string][]string) ([]byte, error) {
			calls++
			if calls > 100 {
				return nil, errors.New("runaway")
			}
			if _, err := s.Put(ctx, &Entry{Procedure: procedure, Request: request, Metadata: md}); err != nil {
				return nil, err
			}
			return nil, &codedError{code: 14}
		})
		ok, failed, err := ReplayAll(ctx, s, inv, ListOptions{})
		if err != nil || ok != 0 || failed != 3 || calls != 3 {
			t.Fatalf("ReplayAll: %d ok, %d failed, err %v after %d calls; want 0, 3, nil after 3", ok, failed, err, calls)
		}
	})
}

// TestReplayAllSkipsEntriesDeletedMeanwhile: an entry in the snapshot that
// is gone by its turn is skipped, not counted.
func TestReplayAllSkipsEntriesDeletedMeanwhile(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		a, _ := s.Put(ctx, sampleEntry("/a.A/A"))
		b, _ := s.Put(ctx, sampleEntry("/a.A/A"))
		var got []string
		inv := invokerFunc(func(ctx context.Context, procedure string, request []byte, md map[string][]string) ([]byte, error) {
			got = append(got, procedure)
			if err := s.Delete(ctx, b); err != nil {
				t.Errorf("delete %s: %v", b, err)
			}
			return nil, nil
		})
		ok, failed, err := ReplayAll(ctx, s, inv, ListOptions{})
		if err != nil || ok != 1 || failed != 0 || len(got) != 1 {
			t.Fatalf("ReplayAll: %d ok, %d failed, err %v, %d calls; want 1, 0, nil, 1 (entry %s replayed, %s deleted meanwhile)", ok, failed, err, len(got), a, b)
		}
	})
}

// TestReplayServerStreamNeedsStreamInvoker: a server-streaming entry is
// replayed through a StreamInvoker, and survives, with the failure
// recorded, an Invoker that cannot replay streams; its flag survives the
// store's encoding.
func TestReplayServerStreamNeedsStreamInvoker(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		e := sampleEntry("/echo.v1.EchoService/Countdown")
		e.ServerStreaming = true
		id, err := s.Put(ctx, e)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := s.Get(ctx, id); err != nil || !got.ServerStreaming {
			t.Fatalf("stored entry: %+v, %v; want ServerStreaming", got, err)
		}
		unary := &fakeInvoker{}
		if _, err := Replay(ctx, s, unary, id); err == nil || len(unary.calls) != 0 {
			t.Fatalf("replay through a unary Invoker: %v after %d calls, want an error and no call", err, len(unary.calls))
		}
		if got, _ := s.Get(ctx, id); got.Replays != 1 {
			t.Errorf("failure not recorded: %+v", got)
		}
		inv := &streamInvoker{}
		if _, err := Replay(ctx, s, inv, id); err != nil || inv.calls != 1 {
			t.Fatalf("replay through a StreamInvoker: %v after %d calls", err, inv.calls)
		}
		if n, _ := s.Len(ctx); n != 0 {
			t.Errorf("%d entries left", n)
		}
	})
}

type streamInvoker struct {
	fakeInvoker
	calls int
}

func (f *streamInvoker) InvokeServerStreamRaw(ctx context.Context, procedure string, request []byte, md map[string][]string, onResponse func([]byte) error) error {
	f.calls++
	for range 3 {
		if err := onResponse([]byte("r")); err != nil {
			return err
		}
	}
	return nil
}
