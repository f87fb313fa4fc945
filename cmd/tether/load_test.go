package main

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tetherrpc/tether"
)

// What varies from run to run in tether load's summary: every measured
// number, the histogram's counts and bars.
var (
	loadDecimal   = regexp.MustCompile(`[0-9]+\.[0-9]+`)
	loadHistogram = regexp.MustCompile(`(?m)^  <n> \[[0-9]+\]\t\|∎*$`)
	// Which side's timer ends a call past its deadline first (and so the
	// message) varies from run to run: the lines of deadline_exceeded errors are
	// masked to one.
	loadDeadline = regexp.MustCompile(`(?m)^  \[[0-9]+\]\tdeadline_exceeded: .*\n(  \[[0-9]+\]\tdeadline_exceeded: .*\n)*`)
)

// TestLoad checks the summary's shape for each kind of call, failed calls
// and the JSON output, against the example services on 127.0.0.1.
func TestLoad(t *testing.T) {
	url := startExamples(t, false)
	cases := []struct {
		name string
		args []string
	}{
		{"load-unary", []string{"load", "-n", "40", "-c", "4", "--connections", "2", "URL", "example.echo.v1.EchoService/Say", "-d", `{"text": "hi"}`}},
		{"load-server-stream", []string{"load", "-n", "10", "-c", "2", "URL", "example.echo.v1.EchoService/Countdown", "-d", `{"count": 3}`}},
		{"load-client-stream", []string{"load", "-n", "10", "-c", "2", "URL", "example.echo.v1.EchoService/Collect", "-d", `[{"text": "a"}, {"text": "b"}]`}},
		{"load-bidi", []string{"load", "-n", "10", "-c", "2", "URL", "example.echo.v1.EchoService/Chat", "-d", `{"text": "a"} {"text": "b"}`}},
		// The handler waits 60 s; every call ends at its 100 ms deadline.
		{"load-deadline", []string{"load", "-n", "4", "-c", "4", "--timeout", "100ms", "URL", "example.echo.v1.EchoService/Say", "-d", `{"sleepMillis": 60000}`}},
		{"load-rps", []string{"load", "-n", "10", "-c", "2", "--rps", "200", "URL", "example.echo.v1.EchoService/Say"}},
		{"load-unknown-method", []string{"load", "URL", "example.echo.v1.EchoService/Nope"}},
		{"load-bad-request", []string{"load", "URL", "example.echo.v1.EchoService/Say", "-d", `{"nope": 1}`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := make([]string, len(c.args))
			for i, a := range c.args {
				args[i] = strings.ReplaceAll(a, "URL", url)
			}
			code, stdout, stderr := runTether(t, args...)
			got := "$ tether " + strings.Join(c.args, " ") + "\n--- stdout\n" + stdout + "--- stderr\n" + stderr + "--- exit " + itoa(code) + "\n"
			got = loadDecimal.ReplaceAllString(got, "<n>")
			got = loadHistogram.ReplaceAllString(got, "  <n> [<count>]\t|<bar>")
			got = loadDeadline.ReplaceAllString(got, "  [<n>]\tdeadline_exceeded: <any>\n")
			path := filepath.Join("testdata", "cli", c.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go -C cmd/tether test . -update)", err)
			}
			if got != string(want) {
				t.Errorf("output differs from %s:\n--- got\n%s--- want\n%s", path, got, want)
			}
		})
	}
}

// TestLoadJSON checks --format json: the counts add up and the numbers
// are in order.
func TestLoadJSON(t *testing.T) {
	url := startExamples(t, false)
	code, stdout, stderr := runTether(t, "load", "--format", "json", "-n", "30", "-c", "3", url, "example.echo.v1.EchoService/Say", "-d", `{"text": "hi"}`)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep loadReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	if rep.Count != 30 || rep.StatusCodes["ok"] != 30 || rep.Method != "example.echo.v1.EchoService/Say" || rep.Kind != "unary" {
		t.Errorf("report %+v", rep)
	}
	n := 0
	for _, b := range rep.Histogram {
		n += b.Count
	}
	if n != 30 || len(rep.Histogram) != histogramBuckets {
		t.Errorf("histogram counts %d calls in %d buckets, want 30 in %d", n, len(rep.Histogram), histogramBuckets)
	}
	if !(rep.FastestMs <= rep.Percentiles["p50"] && rep.Percentiles["p50"] <= rep.Percentiles["p90"] &&
		rep.Percentiles["p90"] <= rep.Percentiles["p95"] && rep.Percentiles["p95"] <= rep.Percentiles["p99"] &&
		rep.Percentiles["p99"] <= rep.SlowestMs) || rep.CallsPerSecond <= 0 || rep.TotalMs <= 0 {
		t.Errorf("numbers out of order: %+v", rep)
	}
}

// TestLoadDuration stops starting calls when --duration has passed.
func TestLoadDuration(t *testing.T) {
	url := startExamples(t, false)
	code, stdout, stderr := runTether(t, "load", "--format", "json", "--duration", "300ms", "-c", "2", "--rps", "50", url, "example.echo.v1.EchoService/Say")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep loadReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	// 50 calls/s for 0.3 s: the calls of slots 0 to 14 at most.
	if rep.Count < 1 || rep.Count > 15 || rep.StatusCodes["ok"] != rep.Count {
		t.Errorf("%d calls (%v), want 1 to 15, all ok", rep.Count, rep.StatusCodes)
	}
}

// TestLoadUnreachable: a server that cannot be reached ends the command
// as unavailable before any call is counted.
func TestLoadUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "ws://" + ln.Addr().String() + "/rpc"
	ln.Close()
	code, stdout, stderr := runTether(t, "load", "--proto", "example/echo/v1/echo.proto", "--import-path", "../../proto", url, "example.echo.v1.EchoService/Say")
	if code != exitStatusBase+int(tether.CodeUnavailable) || stdout != "" || !strings.Contains(stderr, "Code: unavailable") {
		t.Errorf("exit %d, stdout %q, stderr %q; want 78, nothing, unavailable", code, stdout, stderr)
	}
}
