package dlq

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"
)

// fakeInvoker records the calls it gets and fails those whose procedure is
// in fail.
type fakeInvoker struct {
	mu    sync.Mutex
	calls []fakeCall
	fail  map[string]error
}

type fakeCall struct {
	procedure string
	request   []byte
	md        map[string][]string
}

func (f *fakeInvoker) InvokeRaw(ctx context.Context, procedure string, request []byte, md map[string][]string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fakeCall{procedure, request, md})
	if err := f.fail[procedure]; err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return append([]byte("ok:"), request...), nil
}

// codedError stands for a *tether.Error.
type codedError struct{ code uint32 }

func (e *codedError) Error() string { return "unavailable: server is down" }

func TestReplaySuccess(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		e := sampleEntry("/echo.v1.EchoService/Say")
		e.Metadata["Tether-Idempotency-Key"] = []string{"stale"} // replaced by the entry's key
		id, _ := s.Put(ctx, e)
		inv := &fakeInvoker{}
		res, err := Replay(ctx, s, inv, id)
		if err != nil {
			t.Fatal(err)
		}
		if want := "ok:" + string(e.Request); string(res) != want {
			t.Errorf("response %q, want %q", res, want)
		}
		if len(inv.calls) != 1 {
			t.Fatalf("%d calls, want 1", len(inv.calls))
		}
		c := inv.calls[0]
		if c.procedure != e.Procedure || string(c.request) != string(e.Request) {
			t.Errorf("call %q %x, want %q %x", c.procedure, c.request, e.Procedure, e.Request)
		}
		wantMD := map[string][]string{
			"x-user":             {"ada"},
			"x-multi":            {"a", "b"},
			IdempotencyKeyHeader: {e.IdempotencyKey},
		}
		if !reflect.DeepEqual(c.md, wantMD) {
			t.Errorf("metadata %v, want %v", c.md, wantMD)
		}
		if _, err := s.Get(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("entry still there after a successful replay: %v", err)
		}
		if _, err := Replay(ctx, s, inv, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("second replay: %v, want ErrNotFound", err)
		}
		if len(inv.calls) != 1 {
			t.Errorf("replay of a missing entry made a call")
		}
	})
}

func TestReplayWithoutKeyKeepsMetadata(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	ctx := context.Background()
	id, _ := s.Put(ctx, &Entry{Procedure: "/a.B/C"})
	inv := &fakeInvoker{}
	if _, err := Replay(ctx, s, inv, id); err != nil {
		t.Fatal(err)
	}
	if md := inv.calls[0].md; md != nil {
		t.Errorf("metadata %v, want none", md)
	}
}

func TestReplayFailureBookkeeping(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		e := sampleEntry("/echo.v1.EchoService/Say")
		id, _ := s.Put(ctx, e)
		callErr := &codedError{14}
		inv := &fakeInvoker{fail: map[string]error{e.Procedure: callErr}}

		for round := 1; round <= 2; round++ {
			before := time.Now()
			res, err := Replay(ctx, s, inv, id)
			if err == nil || res != nil {
				t.Fatalf("replay %d: %q, %v; want the call's error", round, res, err)
			}
			var ce *codedError
			if !errors.As(err, &ce) || ce != callErr {
				t.Fatalf("replay error %v does not wrap the call's error", err)
			}
			got, err := s.Get(ctx, id)
			if err != nil {
				t.Fatalf("entry gone after a failed replay: %v", err)
			}
			if got.Replays != round {
				t.Errorf("Replays = %d, want %d", got.Replays, round)
			}
			if got.LastReplay.Before(before) || got.LastReplay.After(time.Now()) {
				t.Errorf("LastReplay = %v, want about now", got.LastReplay)
			}
			if got.LastReplayError != callErr.Error() {
				t.Errorf("LastReplayError = %q", got.LastReplayError)
			}
			// The original failure is kept.
			if got.Attempts != e.Attempts || got.LastCode != e.LastCode || got.LastError != e.LastError {
				t.Errorf("original failure overwritten: %+v", got)
			}
		}

		// The server recovers.
		inv.fail = nil
		if _, err := Replay(ctx, s, inv, id); err != nil {
			t.Fatal(err)
		}
		if n, _ := s.Len(ctx); n != 0 {
			t.Errorf("Len = %d after the replay succeeded", n)
		}
		for _, c := range inv.calls {
			if c.md[IdempotencyKeyHeader][0] != e.IdempotencyKey {
				t.Errorf("a replay sent idempotency key %v", c.md[IdempotencyKeyHeader])
			}
		}
	})
}

func TestReplayTimeoutIsRecorded(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	id, _ := s.Put(context.Background(), sampleEntry("/a.B/C"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	inv := &fakeInvoker{}
	// Get fails first with the ended context: nothing happens.
	if _, err := Replay(ctx, s, inv, id); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Replay with an ended ctx: %v", err)
	}
	// A call that times out is recorded even though ctx has ended.
	e, _ := s.Get(context.Background(), id)
	res, callErr, storeErr := replay(ctx, s, inv, e)
	if res != nil || !errors.Is(callErr, context.DeadlineExceeded) || storeErr != nil {
		t.Fatalf("replay = %q, %v, %v", res, callErr, storeErr)
	}
	got, _ := s.Get(context.Background(), id)
	if got.Replays != 1 || got.LastReplayError != context.DeadlineExceeded.Error() {
		t.Fatalf("timeout not recorded: %+v", got)
	}
}

func TestReplayAll(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		var sayIDs, chatIDs []string
		for i := range 150 { // more than one page
			proc := "/s.S/Say"
			if i%5 == 0 {
				proc = "/s.S/Chat"
			}
			id, err := s.Put(ctx, &Entry{Procedure: proc, IdempotencyKey: proc + string(rune('a'+i%26))})
			if err != nil {
				t.Fatal(err)
			}
			if proc == "/s.S/Say" {
				sayIDs = append(sayIDs, id)
			} else {
				chatIDs = append(chatIDs, id)
			}
		}
		inv := &fakeInvoker{fail: map[string]error{"/s.S/Chat": errors.New("chat is down")}}

		ok, failed, err := ReplayAll(ctx, s, inv, ListOptions{Limit: 10})
		if err != nil || ok+failed != 10 || failed != 2 {
			t.Fatalf("ReplayAll limit 10 = %d ok, %d failed, %v; want 8, 2", ok, failed, err)
		}

		ok, failed, err = ReplayAll(ctx, s, inv, ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ok != len(sayIDs)-8 || failed != len(chatIDs) {
			t.Fatalf("ReplayAll = %d ok, %d failed; want %d, %d", ok, failed, len(sayIDs)-8, len(chatIDs))
		}
		left, _ := s.List(ctx, ListOptions{})
		if !reflect.DeepEqual(ids(left), chatIDs) {
			t.Fatalf("left %d entries, want the %d Chat ones", len(left), len(chatIDs))
		}
		for _, e := range left {
			want := 1
			if e.ID <= chatIDs[1] {
				want = 2 // tried by both runs
			}
			if e.Replays != want || e.LastReplayError != "chat is down" {
				t.Errorf("entry %s: Replays %d (want %d), LastReplayError %q", e.ID, e.Replays, want, e.LastReplayError)
			}
		}
		// Each entry is called once per run: 10 + 150 - 8 calls.
		if len(inv.calls) != 10+150-8 {
			t.Errorf("%d calls, want %d", len(inv.calls), 10+150-8)
		}

		// Procedure filter; then the server recovers.
		inv.fail = nil
		ok, failed, err = ReplayAll(ctx, s, inv, ListOptions{Procedure: "/s.S/Say"})
		if err != nil || ok != 0 || failed != 0 {
			t.Fatalf("ReplayAll of nothing = %d, %d, %v", ok, failed, err)
		}
		ok, failed, err = ReplayAll(ctx, s, inv, ListOptions{Procedure: "/s.S/Chat"})
		if err != nil || ok != len(chatIDs) || failed != 0 {
			t.Fatalf("ReplayAll after recovery = %d, %d, %v", ok, failed, err)
		}
		if n, _ := s.Len(ctx); n != 0 {
			t.Fatalf("Len = %d", n)
		}
	})
}

func TestReplayAllStopsOnContext(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	for range 5 {
		s.Put(ctx, sampleEntry("/a.B/C"))
	}
	inv := invokerFunc(func(ctx context.Context, proc string, req []byte, md map[string][]string) ([]byte, error) {
		cancel() // the first call ends the run
		return nil, nil
	})
	ok, failed, err := ReplayAll(ctx, s, inv, ListOptions{})
	if !errors.Is(err, context.Canceled) || ok != 1 || failed != 0 {
		t.Fatalf("ReplayAll = %d, %d, %v; want 1, 0, canceled", ok, failed, err)
	}
	if n, _ := s.Len(context.Background()); n != 4 {
		t.Fatalf("Len = %d, want 4", n)
	}
}

type invokerFunc func(ctx context.Context, procedure string, request []byte, md map[string][]string) ([]byte, error)

func (f invokerFunc) InvokeRaw(ctx context.Context, procedure string, request []byte, md map[string][]string) ([]byte, error) {
	return f(ctx, procedure, request, md)
}
