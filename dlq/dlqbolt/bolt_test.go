package dlqbolt

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/dlq/dlqtest"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		// The SIGKILL test's child: it runs TestHelperProcess only and is
		// killed, so there is nothing for goleak to check.
		os.Exit(m.Run())
	}
	goleak.VerifyTestMain(m)
}

// The Store conformance suite (the dlq package runs it on its memory store).
func TestConformance(t *testing.T) {
	dlqtest.TestStore(t, func(t *testing.T) dlq.Store {
		s, err := Open(filepath.Join(t.TempDir(), "dlq.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
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

func TestBoltDurableAcrossReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "dlq.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.db.NoSync {
		t.Fatal("NoSync is set")
	}
	if s.Path() != path {
		t.Errorf("Path() = %q", s.Path())
	}
	want := sampleEntry("/echo.v1.EchoService/Say")
	id, err := s.Put(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := s.Put(ctx, sampleEntry("/echo.v1.EchoService/Chat"))
	if err := s.Delete(ctx, other); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("file mode %v, want 0600", perm)
	}

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	dlqtest.SameEntry(t, got, want)
	if n, _ := s.Len(ctx); n != 1 {
		t.Errorf("Len after reopen = %d, want 1", n)
	}
	// The sequence survives too: no ID is handed out twice.
	next, _ := s.Put(ctx, sampleEntry("/a.B/C"))
	if next <= other {
		t.Errorf("ID after reopen %q, not after %q", next, other)
	}
}

func TestBoltLockTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dlq.db")
	holder, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()

	start := time.Now()
	s, err := Open(path, WithLockTimeout(150*time.Millisecond))
	if err == nil {
		s.Close()
		t.Fatal("second OpenBolt succeeded while the file is held")
	}
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("error %v does not wrap ErrLocked", err)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "another process") {
		t.Errorf("error is not clear: %v", err)
	}
	// bbolt polls every 50ms and gives up up to one poll early.
	if d := time.Since(start); d < 90*time.Millisecond || d > 5*time.Second {
		t.Errorf("gave up after %v, want about 150ms", d)
	}

	// A read-only open needs a shared lock, which the writer's exclusive
	// lock excludes as well.
	if s, err := Open(path, WithReadOnly(), WithLockTimeout(50*time.Millisecond)); !errors.Is(err, ErrLocked) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("read-only open while held: %v, want ErrLocked", err)
	}

	// Once released, the file can be opened at once.
	if err := holder.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, WithLockTimeout(150*time.Millisecond))
	if err != nil {
		t.Fatalf("open after release: %v", err)
	}
	s.Close()
}

func TestBoltReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "missing.db"), WithReadOnly()); err == nil {
		t.Fatal("read-only open of a missing file succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "missing.db")); !os.IsNotExist(err) {
		t.Fatalf("read-only open created the file: %v", err)
	}

	path := filepath.Join(dir, "dlq.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := s.Put(ctx, sampleEntry("/a.B/C"))
	s.Close()

	r1, err := Open(path, WithReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := Open(path, WithReadOnly(), WithLockTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatalf("second read-only handle: %v", err)
	}
	defer r2.Close()
	if _, err := r2.Get(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Put(ctx, sampleEntry("/a.B/C")); err == nil {
		t.Fatal("Put on a read-only store succeeded")
	}
	if err := r1.Delete(ctx, id); err == nil {
		t.Fatal("Delete on a read-only store succeeded")
	}
}

func TestBoltCorruptEntry(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "dlq.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	good, _ := s.Put(ctx, sampleEntry("/a.B/C"))
	bad := dlq.FormatID(1000)
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketName).Put([]byte(bad), []byte(`{"v":1,"procedure":`))
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("Get of a corrupt entry: %v, want an error naming it", err)
	}
	if _, err := s.List(ctx, dlq.ListOptions{}); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("List over a corrupt entry: %v, want an error naming it", err)
	}
	if _, err := s.Purge(ctx, dlq.PurgeOptions{Procedure: "/a.B/C"}); err == nil {
		t.Fatal("filtered Purge over a corrupt entry succeeded")
	}
	if _, err := s.Get(ctx, good); err != nil {
		t.Fatalf("failed Purge lost a good entry: %v", err)
	}
	// Delete needs no decoding, so the operator can remove it.
	if err := s.Delete(ctx, bad); err != nil {
		t.Fatal(err)
	}
	if es, err := s.List(ctx, dlq.ListOptions{}); err != nil || len(es) != 1 {
		t.Fatalf("List after removing the corrupt entry: %d, %v", len(es), err)
	}
}

const (
	helperEnv = "TETHER_DLQ_TEST_HELPER_STORE"
	// helperLoopEnv makes the child also Put entries in a loop after the
	// first, printing each ID, so that it is killed amid writes.
	helperLoopEnv = "TETHER_DLQ_TEST_HELPER_LOOP"
)

// TestHelperProcess is not a test: TestSIGKILL runs the test binary again
// with only this function selected and helperEnv set, as its child process.
// The child opens the store, Puts, prints each ID once Put has returned, and
// then blocks until it is killed.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		t.Skip("helper process for TestSIGKILL")
	}
	s, err := Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(3)
	}
	ctx := context.Background()
	for i := 0; ; i++ {
		e := sampleEntry("/echo.v1.EchoService/Say")
		e.Attempts = i
		id, err := s.Put(ctx, e)
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(3)
		}
		fmt.Println(id)
		if os.Getenv(helperLoopEnv) == "" {
			break
		}
	}
	for { // wait for SIGKILL (-test.timeout ends an orphan)
		time.Sleep(time.Hour)
	}
}

func TestSIGKILL(t *testing.T) {
	for _, loop := range []bool{false, true} {
		t.Run(fmt.Sprintf("loop=%v", loop), func(t *testing.T) {
			sigkill(t, loop)
		})
	}
}

func sigkill(t *testing.T, loop bool) {
	path := filepath.Join(t.TempDir(), "dlq.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	if loop {
		cmd.Env = append(cmd.Env, helperLoopEnv+"=1")
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Read the IDs the child reports as written; give up after a while.
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			for range lines {
			}
			cmd.Wait()
		}
	}()
	want := 1
	if loop {
		want = 25
	}
	var written []string
	timeout := time.After(60 * time.Second)
	for len(written) < want {
		select {
		case id, ok := <-lines:
			if !ok {
				t.Fatalf("child exited after printing %v", written)
			}
			written = append(written, id)
		case <-timeout:
			t.Fatalf("child printed only %v", written)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	for range lines { // drain what the child printed before it died
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want killed by SIGKILL", err)
	}

	s, err := Open(path)
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	defer s.Close()
	if err := s.db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() { // read to the end: Check's goroutine sends them all
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}); err != nil {
		t.Fatalf("bbolt consistency check: %v", err)
	}
	ctx := context.Background()
	for i, id := range written {
		e, err := s.Get(ctx, id)
		if err != nil {
			t.Fatalf("entry %s, reported written, is lost: %v", id, err)
		}
		w := sampleEntry("/echo.v1.EchoService/Say")
		w.ID, w.Attempts = id, i
		dlqtest.SameEntry(t, e, w)
	}
	t.Logf("%d reported entries intact after SIGKILL", len(written))
}
