package chaos

import (
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHostileAttacks runs every attack of the hostile peer against a fresh
// server: the server closes every connection, leaves no stream open, and no
// attack has an effect. On the code at 030d538 half-close-mid-message is
// applied (issue 10 item 10: a HALF_CLOSE in the middle of a fragmented
// message is taken as a clean end of the requests).
func TestHostileAttacks(t *testing.T) {
	log, err := OpenEffectLog(filepath.Join(t.TempDir(), "effects.log"), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	srv := NewServer(log, false, discard())
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	addr := strings.TrimPrefix(hs.URL, "http://")
	for v, name := range HostileAttacks {
		res, err := Hostile(addr, v, "hostile-"+name, uint64(v))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%-24s close code %d", name, res.CloseCode)
	}
	deadline := time.Now().Add(10 * time.Second)
	for srv.Stats().Connections > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := srv.Stats(); st.Connections > 0 || st.ActiveStreams > 0 {
		t.Errorf("after the attacks: %d connections, %d streams still open", st.Connections, st.ActiveStreams)
	}
	if _, n := log.Balance("hostile"); n != 0 {
		t.Errorf("the attacks applied %d effects", n)
	}
}
