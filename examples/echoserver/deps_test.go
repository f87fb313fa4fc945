package main

import (
	"os/exec"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Issue 16 part 1: a program that only serves a generated service links
// neither the client (its connection manager and reconnection backoff) nor
// the dead-letter queue (bbolt and golang.org/x/sys). .ci/run checks the
// same with go list.
func TestServerLinksNoClientCode(t *testing.T) {
	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH:", err)
	}
	out, err := exec.Command(gotool, "list", "-deps", "-f", "{{.ImportPath}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	has := func(pkg string) bool {
		for _, d := range deps {
			if d == pkg {
				return true
			}
		}
		return false
	}
	// The list is the real one: the server and what generated code needs.
	for _, want := range []string{"github.com/tetherrpc/tether/server", "github.com/tetherrpc/tether/clientconn"} {
		if !has(want) {
			t.Fatalf("go list -deps lacks %s: %v", want, deps)
		}
	}
	for _, d := range deps {
		for _, banned := range []string{
			"go.etcd.io/bbolt",
			"github.com/cenkalti/backoff",
			"golang.org/x/sys/",
			"github.com/tetherrpc/tether/client",
			"github.com/tetherrpc/tether/dlq",
		} {
			if d == banned || strings.HasPrefix(d, strings.TrimSuffix(banned, "/")+"/") {
				t.Errorf("a server-only program links %s", d)
			}
		}
	}
}
