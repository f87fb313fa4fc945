package main

import (
	"bytes"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// runTether runs the command line args and returns its exit code and output.
func runTether(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestDispatch(t *testing.T) {
	code, _, stderr := runTether(t)
	if code != exitUsage || !strings.Contains(stderr, "tether <command>") {
		t.Errorf("no command: %d, %q", code, stderr)
	}
	code, _, stderr = runTether(t, "nope")
	if code != exitUsage || !strings.Contains(stderr, `unknown command "nope"`) {
		t.Errorf("unknown command: %d, %q", code, stderr)
	}
	code, stdout, _ := runTether(t, "help")
	if code != exitOK || !strings.Contains(stdout, "dlq") {
		t.Errorf("help: %d, %q", code, stdout)
	}
	code, _, stderr = runTether(t, "dlq")
	if code != exitUsage || !strings.Contains(stderr, "tether dlq list") {
		t.Errorf("dlq alone: %d, %q", code, stderr)
	}
	code, stdout, _ = runTether(t, "dlq", "help")
	if code != exitOK || !strings.Contains(stdout, "tether dlq replay") {
		t.Errorf("dlq help: %d, %q", code, stdout)
	}
	code, _, stderr = runTether(t, "dlq", "frobnicate")
	if code != exitUsage || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("dlq frobnicate: %d, %q", code, stderr)
	}
}
