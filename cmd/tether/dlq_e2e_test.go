package main

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// keyRecorder is the echo handler, noting the idempotency key and a custom
// header of each Say it serves, and failing while down is set.
type keyRecorder struct {
	echo.Handler
	mu   sync.Mutex
	down bool
	keys []string
	user []string
}

func (h *keyRecorder) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	h.mu.Lock()
	if ci, ok := server.CallInfoFromContext(ctx); ok {
		h.keys = append(h.keys, ci.RequestHeader().Get(tether.MetadataIdempotencyKey))
		h.user = append(h.user, ci.RequestHeader().Get("x-user"))
	}
	down := h.down
	h.mu.Unlock()
	if down {
		return nil, tether.Errorf(tether.CodeFailedPrecondition, "not today")
	}
	return h.Handler.Say(ctx, req)
}

// TestReplayAgainstServer replays dead-lettered Says to a real echo server
// over loopback, through the real client: a failure is recorded and the
// entry kept, a success deletes it, and the server sees the original
// idempotency key and metadata every time.
func TestReplayAgainstServer(t *testing.T) {
	h := &keyRecorder{down: true}
	srv := server.New()
	echov1.RegisterEchoServiceHandler(srv, h)
	hs := httptest.NewServer(srv)
	defer func() {
		srv.Close()
		hs.Close()
	}()
	url := "ws" + strings.TrimPrefix(hs.URL, "http")

	req, err := proto.Marshal(&echov1.SayRequest{Text: "hello again"})
	if err != nil {
		t.Fatal(err)
	}
	path, ids := seed(t, &dlq.Entry{
		Procedure:      echov1.EchoServiceSayProcedure,
		Request:        req,
		Metadata:       map[string][]string{"x-user": {"ada"}, tether.MetadataIdempotencyKey: {"e2e-key"}},
		IdempotencyKey: "e2e-key",
		Attempts:       3,
		LastCode:       uint32(tether.CodeUnavailable),
	})

	code, stdout, stderr := runTether(t, "dlq", "replay", "-store", path, "-url", url, "-timeout", "10s", ids[0])
	if code != exitFailure || !strings.Contains(stdout, "FAILED (failed_precondition)") || !strings.Contains(stdout, "not today") {
		t.Fatalf("replay to a failing server: exit %d, %q, %q", code, stdout, stderr)
	}
	if e := getEntry(t, path, ids[0]); e.Replays != 1 || !strings.Contains(e.LastReplayError, "not today") {
		t.Fatalf("failure not recorded: %+v", e)
	}

	h.mu.Lock()
	h.down = false
	h.mu.Unlock()
	code, stdout, stderr = runTether(t, "dlq", "replay", "-store", path, "-url", url, "-all")
	if code != exitOK || !strings.Contains(stdout, ids[0]+": ok") || !strings.Contains(stdout, "1 replayed, 0 failed, 0 left") {
		t.Fatalf("replay to a healthy server: exit %d, %q, %q", code, stdout, stderr)
	}
	if left := storeIDs(t, path); len(left) != 0 {
		t.Fatalf("entry kept after a successful replay: %v", left)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.keys) != 2 || h.keys[0] != "e2e-key" || h.keys[1] != "e2e-key" || h.user[0] != "ada" || h.user[1] != "ada" {
		t.Fatalf("server saw keys %q and x-user %q, want e2e-key and ada twice", h.keys, h.user)
	}
}

func TestDialClientConnects(t *testing.T) {
	srv := server.New()
	hs := httptest.NewServer(srv)
	defer func() {
		srv.Close()
		hs.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	inv, closer, err := dialClient(ctx, "ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	if err != nil {
		t.Fatalf("dialClient to a live server: %v", err)
	}
	defer closer.Close()
	if _, err := inv.InvokeRaw(ctx, "/no.Such/Method", nil, nil); tether.CodeOf(err) != tether.CodeUnimplemented {
		t.Fatalf("call to an unknown procedure: %v, want unimplemented", err)
	}
}
