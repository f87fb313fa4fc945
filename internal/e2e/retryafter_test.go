package e2e

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// TestRetryAfterHonoured: a server that refuses the upgrade with 503 and
// Retry-After: 1 is not asked again within that second, although the
// client's own backoff would come back after 10 ms; the waiting call then
// succeeds on the next attempt.
func TestRetryAfterHonoured(t *testing.T) {
	srv := server.New(server.WithLogger(discardLogger()))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	var mu sync.Mutex
	var attempts []time.Time
	u := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		attempts = append(attempts, time.Now())
		n := len(attempts)
		mu.Unlock()
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "tether: busy", http.StatusServiceUnavailable)
			return
		}
		srv.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { _ = srv.Close() })
	_, ec := secClient(t, u, client.WithBackoff(client.BackoffConfig{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond}))
	if _, err := ec.Say(testCtx(t), &echov1.SayRequest{Text: "hi"}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != 2 {
		t.Fatalf("%d connection attempts; want 2", len(attempts))
	}
	if gap := attempts[1].Sub(attempts[0]); gap < time.Second || gap > 4*time.Second {
		t.Fatalf("second attempt %v after the 503 with Retry-After: 1; want between 1 s and 1.5 s (plus scheduling)", gap)
	}
}
