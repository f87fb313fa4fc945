package bench

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// TestServeDebugTrace checks that a server child's debug endpoint serves an
// execution trace for go tool trace.
func TestServeDebugTrace(t *testing.T) {
	addr, stop, err := ServeDebug(func(*http.Request) any { return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	resp, err := http.Get("http://" + addr + "/debug/pprof/trace?seconds=0.05")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !bytes.HasPrefix(b, []byte("go 1.")) {
		t.Fatalf("status %d, %d bytes starting %q: want an execution trace", resp.StatusCode, len(b), b[:min(len(b), 16)])
	}
}
