// Package dlqtest checks that a dlq.Store implementation behaves as the
// interface's documentation says: IDs, ordering, paging, copies, purging,
// concurrency, contexts and Close. The stores of tether run it, and so can
// any other (a store over a database of your own):
//
//	func TestMyStore(t *testing.T) {
//		dlqtest.TestStore(t, func(t *testing.T) dlq.Store { return openMyStore(t) })
//	}
package dlqtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether/dlq"
)

// TestStore runs the Store conformance tests, each as a subtest on a new,
// empty store from open. open may register cleanups with t (the tests close
// some stores themselves; Close is idempotent).
func TestStore(t *testing.T, open func(t *testing.T) dlq.Store) {
	for _, tc := range []struct {
		name string
		test func(t *testing.T, s dlq.Store)
	}{
		{"CRUD", testCRUD},
		{"PutDefaultsAndValidation", testPutDefaultsAndValidation},
		{"IDsNeverReused", testIDsNeverReused},
		{"ListOrderAndOptions", testListOrderAndOptions},
		{"Purge", testPurge},
		{"ConcurrentPut", testConcurrentPut},
		{"ContextAndClose", testContextAndClose},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.test(t, open(t)) })
	}
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)

func sampleEntry(proc string) *dlq.Entry {
	return &dlq.Entry{
		Procedure:      proc,
		Request:        []byte{0x0a, 0x02, 'h', 'i', 0x00, 0xff},
		Metadata:       map[string][]string{"x-user": {"ada"}, "x-multi": {"a", "b"}},
		IdempotencyKey: "idem-" + proc,
		Attempts:       5,
		LastCode:       14,
		LastError:      "unavailable: connection refused",
		FirstAttempt:   t0,
		DeadLettered:   t0.Add(3 * time.Second),
	}
}

// SameEntry fails the test unless got and want are equal, comparing times
// with Equal (a store may keep another location or drop the monotonic
// reading).
func SameEntry(t testing.TB, got, want *dlq.Entry) {
	t.Helper()
	g, w := got.Clone(), want.Clone()
	for _, p := range []struct{ g, w *time.Time }{
		{&g.FirstAttempt, &w.FirstAttempt}, {&g.DeadLettered, &w.DeadLettered}, {&g.LastReplay, &w.LastReplay},
	} {
		if !p.g.Equal(*p.w) {
			t.Errorf("time: got %v, want %v", *p.g, *p.w)
		}
		*p.g, *p.w = time.Time{}, time.Time{}
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("entry:\n got %+v\nwant %+v", g, w)
	}
}

func ids(es []*dlq.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}

func testCRUD(t *testing.T, s dlq.Store) {
	ctx := context.Background()
	e := sampleEntry("/echo.v1.EchoService/Say")
	id, err := s.Put(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	if id == "" || e.ID != id {
		t.Fatalf("Put returned %q and set e.ID %q", id, e.ID)
	}
	if len(id) != 20 {
		t.Errorf("ID %q is not 20 digits", id)
	}

	// The store keeps a copy.
	e.Request[0] = 0x99
	e.Metadata["x-user"][0] = "mallory"
	want := sampleEntry("/echo.v1.EchoService/Say")
	want.ID = id

	got, err := s.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	SameEntry(t, got, want)

	// Neither does changing what Get returned.
	got.Metadata["x-user"][0] = "eve"
	again, _ := s.Get(ctx, id)
	SameEntry(t, again, want)

	if n, err := s.Len(ctx); err != nil || n != 1 {
		t.Fatalf("Len = %d, %v; want 1", n, err)
	}

	upd := again.Clone()
	upd.Replays, upd.LastReplay, upd.LastReplayError = 2, t0.Add(time.Hour), "still down"
	if err := s.Update(ctx, upd); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Get(ctx, id)
	SameEntry(t, got, upd)

	if err := s.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, id); !errors.Is(err, dlq.ErrNotFound) {
		t.Fatalf("Get after Delete: %v, want dlq.ErrNotFound", err)
	}
	if err := s.Delete(ctx, id); !errors.Is(err, dlq.ErrNotFound) {
		t.Fatalf("second Delete: %v, want dlq.ErrNotFound", err)
	}
	if err := s.Update(ctx, upd); !errors.Is(err, dlq.ErrNotFound) {
		t.Fatalf("Update of deleted: %v, want dlq.ErrNotFound", err)
	}
	if n, _ := s.Len(ctx); n != 0 {
		t.Fatalf("Len = %d, want 0", n)
	}
}

func testPutDefaultsAndValidation(t *testing.T, s dlq.Store) {
	ctx := context.Background()
	before := time.Now()
	e := &dlq.Entry{Procedure: "/a.B/C"}
	id, err := s.Put(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	if e.DeadLettered.Before(before) || e.DeadLettered.After(time.Now()) {
		t.Errorf("DeadLettered = %v, want about now", e.DeadLettered)
	}
	got, _ := s.Get(ctx, id)
	if !got.DeadLettered.Equal(e.DeadLettered) {
		t.Errorf("stored DeadLettered %v, set %v", got.DeadLettered, e.DeadLettered)
	}
	if got.Request != nil || got.Metadata != nil {
		t.Errorf("empty request/metadata came back as %#v, %#v", got.Request, got.Metadata)
	}

	for _, bad := range []*dlq.Entry{
		{},
		{Procedure: "/a.B/C", Attempts: -1},
		{Procedure: "/a.B/C", Replays: -1},
		{Procedure: "/a.B/C", DeadLettered: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		if _, err := s.Put(ctx, bad); err == nil {
			t.Errorf("Put(%+v) succeeded", bad)
		}
	}
	if err := s.Update(ctx, &dlq.Entry{ID: id}); err == nil {
		t.Error("Update with no procedure succeeded")
	}

	// A caller-chosen ID is kept, must be new, and is skipped by
	// the sequence.
	mine := &dlq.Entry{ID: dlq.FormatID(2), Procedure: "/a.B/C"}
	if got, err := s.Put(ctx, mine); err != nil || got != dlq.FormatID(2) {
		t.Fatalf("Put with ID: %q, %v", got, err)
	}
	if _, err := s.Put(ctx, &dlq.Entry{ID: dlq.FormatID(2), Procedure: "/a.B/C"}); !errors.Is(err, dlq.ErrExists) {
		t.Fatalf("Put of existing ID: %v, want dlq.ErrExists", err)
	}
	next, err := s.Put(ctx, &dlq.Entry{Procedure: "/a.B/C"})
	if err != nil {
		t.Fatal(err)
	}
	if next != dlq.FormatID(3) {
		t.Errorf("next assigned ID %q, want %q", next, dlq.FormatID(3))
	}
	if n, _ := s.Len(ctx); n != 3 {
		t.Errorf("Len = %d, want 3", n)
	}
}

func testIDsNeverReused(t *testing.T, s dlq.Store) {
	ctx := context.Background()
	a, _ := s.Put(ctx, sampleEntry("/a.B/C"))
	if err := s.Delete(ctx, a); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Purge(ctx, dlq.PurgeOptions{}); err != nil {
		t.Fatal(err)
	}
	b, _ := s.Put(ctx, sampleEntry("/a.B/C"))
	if b <= a {
		t.Errorf("ID after delete and purge %q, not after %q", b, a)
	}
}

func testListOrderAndOptions(t *testing.T, s dlq.Store) {
	ctx := context.Background()
	var all, says []string
	// More than 9 and 99 entries would reveal IDs that sort as
	// text but not as numbers; 120 entries cover both.
	for i := range 120 {
		proc := "/echo.v1.EchoService/Say"
		if i%3 == 0 {
			proc = "/echo.v1.EchoService/Chat"
		}
		id, err := s.Put(ctx, &dlq.Entry{Procedure: proc, Attempts: i})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, id)
		if i%3 != 0 {
			says = append(says, id)
		}
	}
	if !sort.StringsAreSorted(all) {
		t.Fatalf("assigned IDs are not increasing: %v", all)
	}

	got, err := s.List(ctx, dlq.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ids(got), all) {
		t.Fatalf("List order:\n got %v\nwant %v", ids(got), all)
	}
	for i, e := range got {
		if e.Attempts != i {
			t.Fatalf("entry %d has attempts %d: not oldest first", i, e.Attempts)
		}
	}

	got, _ = s.List(ctx, dlq.ListOptions{Procedure: "/echo.v1.EchoService/Say"})
	if !reflect.DeepEqual(ids(got), says) {
		t.Fatalf("procedure filter:\n got %v\nwant %v", ids(got), says)
	}
	got, _ = s.List(ctx, dlq.ListOptions{Limit: 5})
	if !reflect.DeepEqual(ids(got), all[:5]) {
		t.Fatalf("limit: got %v", ids(got))
	}
	got, _ = s.List(ctx, dlq.ListOptions{After: all[9], Limit: 3})
	if !reflect.DeepEqual(ids(got), all[10:13]) {
		t.Fatalf("after: got %v, want %v", ids(got), all[10:13])
	}
	got, _ = s.List(ctx, dlq.ListOptions{After: all[len(all)-1]})
	if len(got) != 0 {
		t.Fatalf("after the last: got %v", ids(got))
	}
	got, _ = s.List(ctx, dlq.ListOptions{Procedure: "/echo.v1.EchoService/Say", After: all[0], Limit: 2})
	if !reflect.DeepEqual(ids(got), says[:2]) {
		t.Fatalf("combined: got %v, want %v", ids(got), says[:2])
	}
	// An After that is not an ID still positions the page.
	got, _ = s.List(ctx, dlq.ListOptions{After: all[4] + "x", Limit: 1})
	if !reflect.DeepEqual(ids(got), all[5:6]) {
		t.Fatalf("after a non-ID: got %v", ids(got))
	}

	// Paging visits every entry once.
	var paged []string
	for after := ""; ; {
		page, err := s.List(ctx, dlq.ListOptions{After: after, Limit: 7})
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		paged = append(paged, ids(page)...)
		after = page[len(page)-1].ID
	}
	if !reflect.DeepEqual(paged, all) {
		t.Fatalf("paging visited %d entries, want %d", len(paged), len(all))
	}
}

func testPurge(t *testing.T, s dlq.Store) {
	ctx := context.Background()
	put := func(proc string, age time.Duration) string {
		t.Helper()
		id, err := s.Put(ctx, &dlq.Entry{Procedure: proc, DeadLettered: t0.Add(-age)})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	oldSay := put("/s.S/Say", 48*time.Hour)
	newSay := put("/s.S/Say", time.Hour)
	oldChat := put("/s.S/Chat", 72*time.Hour)
	newChat := put("/s.S/Chat", time.Minute)
	exact := put("/s.S/Chat", 24*time.Hour)

	left := func() []string {
		es, err := s.List(ctx, dlq.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return ids(es)
	}

	if n, err := s.Purge(ctx, dlq.PurgeOptions{Procedure: "/s.S/None"}); err != nil || n != 0 {
		t.Fatalf("purge of no match = %d, %v", n, err)
	}
	// OlderThan is strict: an entry dead-lettered at that instant stays.
	n, err := s.Purge(ctx, dlq.PurgeOptions{Procedure: "/s.S/Say", OlderThan: t0.Add(-24 * time.Hour)})
	if err != nil || n != 1 {
		t.Fatalf("purge old Say = %d, %v; want 1", n, err)
	}
	if got, want := left(), []string{newSay, oldChat, newChat, exact}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after purging old Say: %v, want %v (removed %v)", got, want, oldSay)
	}
	n, err = s.Purge(ctx, dlq.PurgeOptions{OlderThan: t0.Add(-24 * time.Hour)})
	if err != nil || n != 1 {
		t.Fatalf("purge old = %d, %v; want 1", n, err)
	}
	if got, want := left(), []string{newSay, newChat, exact}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after purging old: %v, want %v", got, want)
	}
	n, err = s.Purge(ctx, dlq.PurgeOptions{Procedure: "/s.S/Chat"})
	if err != nil || n != 2 {
		t.Fatalf("purge Chat = %d, %v; want 2", n, err)
	}
	if got, want := left(), []string{newSay}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after purging Chat: %v, want %v", got, want)
	}
	put("/s.S/Say", 0)
	n, err = s.Purge(ctx, dlq.PurgeOptions{})
	if err != nil || n != 2 {
		t.Fatalf("purge all = %d, %v; want 2", n, err)
	}
	if l, _ := s.Len(ctx); l != 0 {
		t.Fatalf("Len after purge all = %d", l)
	}
}

func testConcurrentPut(t *testing.T, s dlq.Store) {
	ctx := context.Background()
	const workers, each = 20, 10
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		seen = map[string]string{}
	)
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				key := fmt.Sprintf("w%d-%d", w, i)
				id, err := s.Put(ctx, &dlq.Entry{Procedure: "/c.C/Put", IdempotencyKey: key, Request: []byte(key)})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if prev, dup := seen[id]; dup {
					errs <- fmt.Errorf("ID %s given to %s and %s", id, prev, key)
				}
				seen[id] = key
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(seen) != workers*each {
		t.Fatalf("%d distinct IDs, want %d", len(seen), workers*each)
	}
	if n, _ := s.Len(ctx); n != workers*each {
		t.Fatalf("Len = %d, want %d", n, workers*each)
	}
	es, err := s.List(ctx, dlq.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if seen[e.ID] != e.IdempotencyKey || !bytes.Equal(e.Request, []byte(e.IdempotencyKey)) {
			t.Errorf("entry %s holds %q/%q, Put as %q", e.ID, e.IdempotencyKey, e.Request, seen[e.ID])
		}
	}
}

func testContextAndClose(t *testing.T, s dlq.Store) {
	id, err := s.Put(context.Background(), sampleEntry("/a.B/C"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Put(ctx, sampleEntry("/a.B/C")); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with canceled ctx: %v", err)
	}
	if _, err := s.List(ctx, dlq.ListOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("List with canceled ctx: %v", err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	bg := context.Background()
	if _, err := s.Get(bg, id); !errors.Is(err, dlq.ErrClosed) {
		t.Errorf("Get after Close: %v, want dlq.ErrClosed", err)
	}
	if _, err := s.Put(bg, sampleEntry("/a.B/C")); !errors.Is(err, dlq.ErrClosed) {
		t.Errorf("Put after Close: %v, want dlq.ErrClosed", err)
	}
	if _, err := s.Len(bg); !errors.Is(err, dlq.ErrClosed) {
		t.Errorf("Len after Close: %v, want dlq.ErrClosed", err)
	}
}
