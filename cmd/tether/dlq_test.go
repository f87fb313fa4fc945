package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/dlq"
)

var tBase = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// seed writes entries to a new store file and returns its path and the IDs.
func seed(t *testing.T, entries ...*dlq.Entry) (string, []string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dlq.db")
	s, err := dlq.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ids []string
	for _, e := range entries {
		id, err := s.Put(context.Background(), e)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return path, ids
}

func entry(proc string, age time.Duration) *dlq.Entry {
	return &dlq.Entry{
		Procedure:      proc,
		Request:        []byte{0x0a, 0x05, 'h', 'e', 'l', 'l', 'o'},
		Metadata:       map[string][]string{"x-user": {"ada"}, "x-trace": {"t1", "t2"}},
		IdempotencyKey: "key-" + proc,
		Attempts:       4,
		LastCode:       uint32(tether.CodeUnavailable),
		LastError:      "connection refused",
		FirstAttempt:   tBase.Add(-age - time.Second),
		DeadLettered:   tBase.Add(-age),
	}
}

// standardSeed is three entries: Say (2 days old), Chat (1 hour), Say (now).
func standardSeed(t *testing.T) (string, []string) {
	return seed(t,
		entry("/echo.v1.EchoService/Say", 48*time.Hour),
		entry("/echo.v1.EchoService/Chat", time.Hour),
		entry("/echo.v1.EchoService/Say", 0),
	)
}

// storeIDs returns the IDs in the store at path (opened and closed again).
func storeIDs(t *testing.T, path string) []string {
	t.Helper()
	s, err := dlq.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	es, err := s.List(context.Background(), dlq.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{}
	for _, e := range es {
		ids = append(ids, e.ID)
	}
	return ids
}

func getEntry(t *testing.T, path, id string) *dlq.Entry {
	t.Helper()
	s, err := dlq.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestList(t *testing.T) {
	path, ids := standardSeed(t)
	code, stdout, stderr := runTether(t, "dlq", "list", "-store", path)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := "" +
		"ID                    PROCEDURE                  ATTEMPTS  LAST CODE    DEAD-LETTERED         REPLAYS\n" +
		ids[0] + "  /echo.v1.EchoService/Say   4         unavailable  2026-02-27T12:00:00Z  0\n" +
		ids[1] + "  /echo.v1.EchoService/Chat  4         unavailable  2026-03-01T11:00:00Z  0\n" +
		ids[2] + "  /echo.v1.EchoService/Say   4         unavailable  2026-03-01T12:00:00Z  0\n"
	if stdout != want {
		t.Errorf("table:\n%s\nwant:\n%s", stdout, want)
	}

	_, stdout, _ = runTether(t, "dlq", "list", "-store", path, "-procedure", "/echo.v1.EchoService/Say", "-limit", "1")
	if lines := strings.Split(strings.TrimSpace(stdout), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[1], ids[0]) {
		t.Errorf("-procedure -limit 1:\n%s", stdout)
	}
	_, stdout, _ = runTether(t, "dlq", "list", "-store", path, "-after", ids[0])
	if lines := strings.Split(strings.TrimSpace(stdout), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[1], ids[1]) {
		t.Errorf("-after:\n%s", stdout)
	}
}

func TestListJSON(t *testing.T) {
	path, ids := standardSeed(t)
	code, stdout, stderr := runTether(t, "dlq", "list", "-json", "-store", path, "-procedure", "/echo.v1.EchoService/Chat")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got []map[string]any
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, stdout)
	}
	if len(got) != 1 {
		t.Fatalf("%d entries, want 1", len(got))
	}
	e := got[0]
	for k, want := range map[string]any{
		"id": ids[1], "procedure": "/echo.v1.EchoService/Chat", "attempts": 4.0, "last_code": 14.0,
		"last_code_name": "unavailable", "request_size": 7.0, "request": "CgVoZWxsbw==",
		"dead_lettered": "2026-03-01T11:00:00Z", "replays": 0.0, "idempotency_key": "key-/echo.v1.EchoService/Chat",
	} {
		if !reflect.DeepEqual(e[k], want) {
			t.Errorf("%s = %#v, want %#v", k, e[k], want)
		}
	}

	// An empty store lists as an empty array, and as a bare header.
	empty, _ := seed(t)
	if _, stdout, _ := runTether(t, "dlq", "list", "-json", "-store", empty); strings.TrimSpace(stdout) != "[]" {
		t.Errorf("empty -json: %q", stdout)
	}
	if _, stdout, _ := runTether(t, "dlq", "list", "-store", empty); !strings.HasPrefix(stdout, "ID ") || strings.Count(stdout, "\n") != 1 {
		t.Errorf("empty table: %q", stdout)
	}
}

func TestListErrors(t *testing.T) {
	path, _ := standardSeed(t)
	missing := filepath.Join(t.TempDir(), "none.db")
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"-store", missing}, exitFailure, "no dead-letter queue at " + missing},
		{[]string{"-store", path, "-limit", "x"}, exitUsage, "invalid value"},
		{[]string{"-store", path, "-limit", "-1"}, exitUsage, "must not be negative"},
		{[]string{"-store", path, "extra"}, exitUsage, `unexpected argument "extra"`},
		{[]string{"-bogus"}, exitUsage, "flag provided but not defined"},
		{[]string{"-h"}, exitOK, "Usage: tether dlq list"},
	} {
		code, _, stderr := runTether(t, append([]string{"dlq", "list"}, tc.args...)...)
		if code != tc.code || !strings.Contains(stderr, tc.msg) {
			t.Errorf("list %q: exit %d, stderr %q; want %d, %q", tc.args, code, stderr, tc.code, tc.msg)
		}
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("list created the missing store: %v", err)
	}
}

func TestDefaultStorePath(t *testing.T) {
	path, ids := standardSeed(t)
	t.Setenv("TETHER_DLQ", path)
	if code, stdout, stderr := runTether(t, "dlq", "list"); code != exitOK || !strings.Contains(stdout, ids[2]) {
		t.Errorf("$TETHER_DLQ: exit %d, %q, %q", code, stdout, stderr)
	}

	t.Setenv("TETHER_DLQ", "")
	dir := t.TempDir()
	t.Chdir(dir)
	code, _, stderr := runTether(t, "dlq", "list")
	if code != exitFailure || !strings.Contains(stderr, "no dead-letter queue at tether-dlq.db") {
		t.Errorf("no store in cwd: exit %d, %q", code, stderr)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tether-dlq.db"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := runTether(t, "dlq", "list"); code != exitOK || !strings.Contains(stdout, ids[0]) {
		t.Errorf("tether-dlq.db in cwd: exit %d, %q, %q", code, stdout, stderr)
	}
}

func TestLockedStore(t *testing.T) {
	path, _ := standardSeed(t)
	s, err := dlq.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	code, _, stderr := runTether(t, "dlq", "list", "-store", path)
	if code != exitFailure || !strings.Contains(stderr, "locked") || !strings.Contains(stderr, "stop the program") {
		t.Errorf("locked store: exit %d, %q", code, stderr)
	}
}

func TestShow(t *testing.T) {
	e := entry("/echo.v1.EchoService/Say", time.Hour)
	e.Replays, e.LastReplay, e.LastReplayError = 2, tBase.Add(30*time.Minute), "deadline_exceeded: timed out"
	path, ids := seed(t, e)

	// Flags may follow the ID.
	code, stdout, stderr := runTether(t, "dlq", "show", ids[0], "-store", path)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"ID:                " + ids[0],
		"Procedure:         /echo.v1.EchoService/Say",
		"Idempotency key:   key-/echo.v1.EchoService/Say",
		"Attempts:          4",
		"Last code:         unavailable (14)",
		"Last error:        connection refused",
		"First attempt:     2026-03-01T10:59:59Z",
		"Dead-lettered:     2026-03-01T11:00:00Z",
		"Replays:           2",
		"Last replay:       2026-03-01T12:30:00Z",
		"Last replay error: deadline_exceeded: timed out",
		"Metadata:          2 keys",
		"\nMetadata:\n  x-trace: t1\n  x-trace: t2\n  x-user:  ada\n",
		"Request:           7 bytes",
		"  00000000  0a 05 68 65 6c 6c 6f",
		"|..hello|",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("show output lacks %q:\n%s", want, stdout)
		}
	}

	_, stdout, _ = runTether(t, "dlq", "show", "-store", path, "-raw", ids[0])
	if stdout != string(e.Request) {
		t.Errorf("-raw wrote %x, want %x", stdout, e.Request)
	}
	_, stdout, _ = runTether(t, "dlq", "show", "-store", path, "-json", ids[0])
	var j jsonEntry
	if err := json.Unmarshal([]byte(stdout), &j); err != nil {
		t.Fatal(err)
	}
	if j.ID != ids[0] || j.Replays != 2 || !bytes.Equal(j.Request, e.Request) || j.LastReplayError != e.LastReplayError {
		t.Errorf("-json: %+v", j)
	}

	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"-store", path, "00000000000000000099"}, exitFailure, "not found"},
		{[]string{"-store", path}, exitUsage, "need exactly one entry ID"},
		{[]string{"-store", path, "a", "b"}, exitUsage, "need exactly one entry ID"},
		{[]string{"-store", path, "-json", "-raw", ids[0]}, exitUsage, "exclude each other"},
	} {
		code, _, stderr := runTether(t, append([]string{"dlq", "show"}, tc.args...)...)
		if code != tc.code || !strings.Contains(stderr, tc.msg) {
			t.Errorf("show %q: exit %d, %q; want %d, %q", tc.args, code, stderr, tc.code, tc.msg)
		}
	}
}

func TestShowLargeRequest(t *testing.T) {
	e := entry("/a.B/C", 0)
	e.Request = bytes.Repeat([]byte{0xab}, showHexLimit+100)
	e.Metadata = nil
	path, ids := seed(t, e)
	_, stdout, _ := runTether(t, "dlq", "show", "-store", path, ids[0])
	if !strings.Contains(stdout, "Request:           4196 bytes") || !strings.Contains(stdout, "... 100 more bytes") ||
		!strings.Contains(stdout, "Metadata:          -") {
		t.Errorf("large request:\n%s", stdout[:400])
	}
	if n := strings.Count(stdout, "\n  0000"); n != showHexLimit/16 {
		t.Errorf("%d hex lines, want %d", n, showHexLimit/16)
	}
	_, stdout, _ = runTether(t, "dlq", "show", "-store", path, "-raw", ids[0])
	if len(stdout) != len(e.Request) {
		t.Errorf("-raw wrote %d bytes, want %d", len(stdout), len(e.Request))
	}
}

// fakeServer is the Invoker that replay tests dial. It fails the
// procedures in fail.
type fakeServer struct {
	mu     sync.Mutex
	url    string
	calls  []map[string][]string
	fail   map[string]error
	closed bool
}

func (f *fakeServer) InvokeRaw(ctx context.Context, procedure string, request []byte, md map[string][]string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, md)
	if err := f.fail[procedure]; err != nil {
		return nil, err
	}
	return []byte("response:" + procedure), nil
}

func (f *fakeServer) Close() error { f.closed = true; return nil }

// useFakeServer makes replay dial srv, and counts the dials.
func useFakeServer(t *testing.T, srv *fakeServer) *int {
	dials := new(int)
	orig := dialInvoker
	dialInvoker = func(ctx context.Context, url string, _ http.Header) (dlq.Invoker, io.Closer, error) {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("dial without a deadline")
		}
		*dials++
		srv.url = url
		return srv, srv, nil
	}
	t.Cleanup(func() { dialInvoker = orig })
	return dials
}

func TestReplayOne(t *testing.T) {
	path, ids := standardSeed(t)
	srv := &fakeServer{fail: map[string]error{
		"/echo.v1.EchoService/Chat": tether.Errorf(tether.CodeUnavailable, "still down"),
	}}
	useFakeServer(t, srv)

	code, stdout, stderr := runTether(t, "dlq", "replay", "-store", path, "-url", "ws://127.0.0.1:9/tether", ids[0])
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if want := ids[0] + ": ok, 33-byte response; deleted\n"; stdout != want {
		t.Errorf("stdout %q, want %q", stdout, want)
	}
	if srv.url != "ws://127.0.0.1:9/tether" || !srv.closed {
		t.Errorf("dialed %q, closed %v", srv.url, srv.closed)
	}
	wantMD := map[string][]string{
		"x-user": {"ada"}, "x-trace": {"t1", "t2"},
		dlq.IdempotencyKeyHeader: {"key-/echo.v1.EchoService/Say"},
	}
	if !reflect.DeepEqual(srv.calls[0], wantMD) {
		t.Errorf("metadata %v, want %v", srv.calls[0], wantMD)
	}
	if got := storeIDs(t, path); !reflect.DeepEqual(got, ids[1:]) {
		t.Errorf("left %v, want %v", got, ids[1:])
	}

	// A failure keeps the entry and records it; exit 1.
	code, stdout, _ = runTether(t, "dlq", "replay", "-store", path, "-url", "ws://x", ids[1])
	if code != exitFailure || !strings.Contains(stdout, ids[1]+": FAILED (unavailable)") || !strings.Contains(stdout, "still down; kept, 1 failed replay(s)") {
		t.Errorf("failed replay: exit %d, %q", code, stdout)
	}
	e := getEntry(t, path, ids[1])
	if e.Replays != 1 || e.LastReplayError != "unavailable: still down" || e.LastReplay.IsZero() {
		t.Errorf("bookkeeping: %+v", e)
	}
	// ... which list shows.
	_, stdout, _ = runTether(t, "dlq", "list", "-store", path)
	if !regexp.MustCompile(ids[1] + `\s.*unavailable.*\s1\n`).MatchString(stdout) {
		t.Errorf("list does not show the replay:\n%s", stdout)
	}
}

func TestReplayAllCommand(t *testing.T) {
	path, ids := standardSeed(t)
	srv := &fakeServer{fail: map[string]error{"/echo.v1.EchoService/Chat": errors.New("boom")}}
	dials := useFakeServer(t, srv)

	code, stdout, _ := runTether(t, "dlq", "replay", "-store", path, "-url", "ws://x", "-all")
	if code != exitFailure {
		t.Errorf("exit %d with a failed replay, want 1", code)
	}
	for _, want := range []string{
		ids[0] + ": ok", ids[1] + ": FAILED (unknown): dlq: replay " + ids[1] + ": boom", ids[2] + ": ok",
		"2 replayed, 1 failed, 1 left in the queue",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	if got := storeIDs(t, path); !reflect.DeepEqual(got, ids[1:2]) {
		t.Errorf("left %v", got)
	}

	srv.fail = nil
	code, stdout, _ = runTether(t, "dlq", "replay", "-store", path, "-url", "ws://x", "-all", "-procedure", "/echo.v1.EchoService/Chat")
	if code != exitOK || !strings.Contains(stdout, "1 replayed, 0 failed, 0 left") {
		t.Errorf("second run: exit %d, %q", code, stdout)
	}
	code, stdout, _ = runTether(t, "dlq", "replay", "-store", path, "-url", "ws://x", "-all")
	if code != exitOK || stdout != "nothing to replay\n" {
		t.Errorf("empty queue: exit %d, %q", code, stdout)
	}
	if *dials != 2 {
		t.Errorf("%d dials, want 2 (none for an empty queue)", *dials)
	}
}

func TestReplayLimit(t *testing.T) {
	path, ids := standardSeed(t)
	useFakeServer(t, &fakeServer{})
	code, stdout, _ := runTether(t, "dlq", "replay", "-store", path, "-url", "ws://x", "-all", "-limit", "2")
	if code != exitOK || !strings.Contains(stdout, "2 replayed, 0 failed, 1 left") {
		t.Errorf("exit %d, %q", code, stdout)
	}
	if got := storeIDs(t, path); !reflect.DeepEqual(got, ids[2:]) {
		t.Errorf("left %v, want the newest", got)
	}
}

func TestReplayErrors(t *testing.T) {
	path, ids := standardSeed(t)
	dials := useFakeServer(t, &fakeServer{})
	t.Setenv("TETHER_URL", "")
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"-url", "ws://x"}, exitUsage, "need exactly one entry ID, or -all"},
		{[]string{"-url", "ws://x", "-all", ids[0]}, exitUsage, "not both"},
		{[]string{"-url", "ws://x", "-procedure", "/p", ids[0]}, exitUsage, "go with -all"},
		{[]string{ids[0]}, exitUsage, "need the server's -url"},
		{[]string{"-url", "ws://x", "-timeout", "0s", ids[0]}, exitUsage, "-timeout must be positive"},
		{[]string{"-url", "ws://x", "00000000000000000042"}, exitFailure, "not found"},
	} {
		code, _, stderr := runTether(t, append([]string{"dlq", "replay", "-store", path}, tc.args...)...)
		if code != tc.code || !strings.Contains(stderr, tc.msg) {
			t.Errorf("replay %q: exit %d, %q; want %d, %q", tc.args, code, stderr, tc.code, tc.msg)
		}
	}
	if *dials != 0 {
		t.Errorf("dialed %d times for bad command lines", *dials)
	}

	// $TETHER_URL stands in for -url; a dial failure is exit 1.
	t.Setenv("TETHER_URL", "ws://from-env")
	dialInvoker = func(ctx context.Context, url string, _ http.Header) (dlq.Invoker, io.Closer, error) {
		return nil, nil, errors.New("cannot connect to " + url)
	}
	code, _, stderr := runTether(t, "dlq", "replay", "-store", path, ids[0])
	if code != exitFailure || !strings.Contains(stderr, "cannot connect to ws://from-env") {
		t.Errorf("dial failure: exit %d, %q", code, stderr)
	}
	if got := storeIDs(t, path); !reflect.DeepEqual(got, ids) {
		t.Errorf("a failed dial changed the store: %v", got)
	}
}

func TestDialClient(t *testing.T) {
	if _, _, err := dialClient(context.Background(), "http://127.0.0.1:1/", nil); err == nil {
		t.Error("dial of an http:// URL succeeded")
	}
	// Nothing listens on port 1: the dial gives up when ctx ends, with the
	// connection error, and leaves no goroutine behind (goleak).
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err := dialClient(ctx, "ws://127.0.0.1:1/tether", nil)
	if err == nil || !strings.Contains(err.Error(), "cannot connect to ws://127.0.0.1:1/tether") {
		t.Fatalf("dial of a closed port: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestPurgeCommand(t *testing.T) {
	path, ids := standardSeed(t)
	origNow := now
	now = func() time.Time { return tBase }
	t.Cleanup(func() { now = origNow })

	// Without -yes nothing is deleted.
	code, stdout, stderr := runTether(t, "dlq", "purge", "-store", path, "-older-than", "30m")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "2 entries dead-lettered before 2026-03-01T11:30:00Z would be purged") || !strings.Contains(stdout, "add -yes to delete") {
		t.Errorf("dry run: %q", stdout)
	}
	if got := storeIDs(t, path); len(got) != 3 {
		t.Fatalf("dry run deleted: %v", got)
	}

	code, stdout, _ = runTether(t, "dlq", "purge", "-store", path, "-older-than", "30m", "-procedure", "/echo.v1.EchoService/Say", "-yes")
	if code != exitOK || stdout != "purged 1 entry for /echo.v1.EchoService/Say dead-lettered before 2026-03-01T11:30:00Z from "+path+"\n" {
		t.Errorf("purge: exit %d, %q", code, stdout)
	}
	if got := storeIDs(t, path); !reflect.DeepEqual(got, ids[1:]) {
		t.Errorf("left %v, want %v", got, ids[1:])
	}

	code, stdout, _ = runTether(t, "dlq", "purge", "-store", path, "-yes")
	if code != exitOK || !strings.Contains(stdout, "purged 2 entries from") {
		t.Errorf("purge all: exit %d, %q", code, stdout)
	}
	if got := storeIDs(t, path); len(got) != 0 {
		t.Errorf("left %v", got)
	}

	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"-older-than", "-1h"}, "must not be negative"},
		{[]string{"-older-than", "soon"}, "invalid value"},
		{[]string{ids[0]}, "unexpected argument"},
	} {
		code, _, stderr := runTether(t, append([]string{"dlq", "purge", "-store", path}, tc.args...)...)
		if code != exitUsage || !strings.Contains(stderr, tc.msg) {
			t.Errorf("purge %q: exit %d, %q", tc.args, code, stderr)
		}
	}
}

func TestParseInterspersed(t *testing.T) {
	f := newDLQFlags("x", "", io.Discard)
	v := f.Bool("v", false, "")
	pos, _, stop := f.parse([]string{"a", "-v", "b", "--", "-c", "d"})
	if stop || !*v || !reflect.DeepEqual(pos, []string{"a", "b", "-c", "d"}) {
		t.Errorf("parse = %q, v=%v, stop=%v", pos, *v, stop)
	}
}
