package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/idempotency"
)

// Tokens of the authenticated test server, and the principals they stand for.
const (
	aliceToken = "alice-secret-token-1f3a"
	bobToken   = "bob-secret-token-9c2e"
)

// countingEcho counts the Say calls its handler runs.
type countingEcho struct {
	echo.Handler
	runs atomic.Int64
}

func (h *countingEcho) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	h.runs.Add(1)
	return h.Handler.Say(ctx, req)
}

// authServer serves echo behind a bearer-token authenticator and the
// idempotency interceptor, on 127.0.0.1.
func authServer(t *testing.T) (*countingEcho, string) {
	t.Helper()
	auth := server.BearerToken(func(r *http.Request, tok string) (server.Identity, error) {
		switch tok {
		case aliceToken:
			return server.Identity{Principal: "alice"}, nil
		case bobToken:
			return server.Identity{Principal: "bob"}, nil
		}
		return server.Identity{}, tether.Errorf(tether.CodeUnauthenticated, "unknown token")
	})
	h := &countingEcho{}
	srv := server.New(server.WithAuthenticator(auth), server.WithInterceptors(idempotency.New()))
	echov1.RegisterEchoServiceHandler(srv, h)
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.Close()
		hs.Close()
	})
	return h, "ws" + strings.TrimPrefix(hs.URL, "http")
}

// TestReplayWithCallerCredentials (issue 10 item 6): a call that reached the
// handler, but was parked as if its response had been lost, is replayed by
// the CLI. With the original caller's credentials (-header, or -token-file)
// the server answers the replay from its idempotency cache: the handler ran
// once. Under another identity the key is another principal's, so the
// handler runs again: dedup holds per principal. Tokens are never echoed.
func TestReplayWithCallerCredentials(t *testing.T) {
	h, url := authServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// The original calls, as alice.
	c, err := client.New(url, client.WithHandshakeHeader(http.Header{"Authorization": {"Bearer " + aliceToken}}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	say := func(key string) *dlq.Entry {
		t.Helper()
		req := &echov1.SayRequest{Text: "pay " + key}
		if _, err := echov1.NewEchoServiceClient(c).Say(ctx, req, client.WithIdempotencyKey(key)); err != nil {
			t.Fatal(err)
		}
		b, _ := proto.Marshal(req)
		return &dlq.Entry{
			Procedure:      echov1.EchoServiceSayProcedure,
			Request:        b,
			Metadata:       map[string][]string{tether.MetadataIdempotencyKey: {key}},
			IdempotencyKey: key,
			Attempts:       1,
			LastCode:       uint32(tether.CodeDeadlineExceeded),
		}
	}
	path, ids := seed(t, say("k-header"), say("k-file"), say("k-bob"))
	if n := h.runs.Load(); n != 3 {
		t.Fatalf("handler ran %d times for 3 calls", n)
	}

	// No credentials: refused at the handshake, entry kept.
	code, stdout, stderr := runTether(t, "dlq", "replay", "-store", path, "-url", url, "-timeout", "2s", ids[0])
	if code != exitFailure {
		t.Fatalf("replay without credentials: exit %d, %q, %q", code, stdout, stderr)
	}

	// The caller's identity, as a header: answered from the cache.
	code, stdout, stderr = runTether(t, "dlq", "replay", "-store", path, "-url", url, "-timeout", "10s",
		"-header", "Authorization: Bearer "+aliceToken, ids[0])
	if code != exitOK || !strings.Contains(stdout, ids[0]+": ok") {
		t.Fatalf("replay with -header: exit %d, %q, %q", code, stdout, stderr)
	}
	if n := h.runs.Load(); n != 3 {
		t.Errorf("replay under the caller's identity ran the handler again (%d runs, want 3)", n)
	}

	// The same identity from a token file.
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(aliceToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout2, stderr2 := runTether(t, "dlq", "replay", "-store", path, "-url", url, "-timeout", "10s",
		"-token-file", tokenFile, ids[1])
	if code != exitOK || !strings.Contains(stdout2, ids[1]+": ok") {
		t.Fatalf("replay with -token-file: exit %d, %q, %q", code, stdout2, stderr2)
	}
	if n := h.runs.Load(); n != 3 {
		t.Errorf("replay with -token-file ran the handler again (%d runs, want 3)", n)
	}

	// Another identity: not the same scope, so the handler runs again.
	code, stdout3, stderr3 := runTether(t, "dlq", "replay", "-store", path, "-url", url, "-timeout", "10s",
		"-header", "Authorization: Bearer "+bobToken, ids[2])
	if code != exitOK {
		t.Fatalf("replay as bob: exit %d, %q, %q", code, stdout3, stderr3)
	}
	if n := h.runs.Load(); n != 4 {
		t.Errorf("replay under another identity: %d runs, want 4 (dedup is per principal)", n)
	}

	for _, out := range []string{stdout, stderr, stdout2, stderr2, stdout3, stderr3} {
		if strings.Contains(out, aliceToken) || strings.Contains(out, bobToken) {
			t.Errorf("a token was echoed: %q", out)
		}
	}
}

// TestReplayCredentialFlags: bad -header and -token-file values are
// usage errors that do not echo the value.
func TestReplayCredentialFlags(t *testing.T) {
	path, ids := standardSeed(t)
	dials := useFakeServer(t, &fakeServer{})
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"-header", "Authorization Bearer s3cr3t"}, `want "Name: value"`},
		{[]string{"-header", ": s3cr3t"}, `want "Name: value"`},
		{[]string{"-token-file", filepath.Join(t.TempDir(), "missing")}, "-token-file"},
		{[]string{"-token-file", empty}, "is empty"},
		{[]string{"-token-file", empty, "-header", "authorization: Bearer s3cr3t"}, "not both"},
	} {
		args := append([]string{"dlq", "replay", "-store", path, "-url", "ws://127.0.0.1:1"}, tc.args...)
		code, stdout, stderr := runTether(t, append(args, ids[0])...)
		if code == exitOK || !strings.Contains(stderr, tc.msg) || strings.Contains(stdout+stderr, "s3cr3t") {
			t.Errorf("replay %q: exit %d, %q, %q; want a failure saying %q without the secret", tc.args, code, stdout, stderr, tc.msg)
		}
	}
	if *dials != 0 {
		t.Errorf("dialed %d times for bad credentials", *dials)
	}
}
