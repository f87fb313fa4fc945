package main

import (
	"context"
	"encoding/pem"
	"flag"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tetherrpc/tether"

	"github.com/tetherrpc/tether/examples/echo"
	"github.com/tetherrpc/tether/examples/ledger"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	reflectionv1 "github.com/tetherrpc/tether/gen/tether/reflection/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/reflection"
)

var (
	randomKey    = regexp.MustCompile(`(tether-idempotency-key: )[0-9a-f]{32}\b`)
	loopbackAddr = regexp.MustCompile(`127\.0\.0\.1:[0-9]+`)
	errorMessage = regexp.MustCompile(`(?m)^(  Message: ).*$`)
)

// descriptorSet replaces SET in a case's arguments.
var descriptorSet string

var update = flag.Bool("update", false, "rewrite the golden files of the list, describe and call tests")

// startExamples serves the example services (echo and ledger) on
// 127.0.0.1, with reflection unless noReflection, and returns the ws:// URL.
func startExamples(t *testing.T, noReflection bool) string {
	t.Helper()
	srv := server.New(server.WithLogger(discardLogger()))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	ledgerv1.RegisterLedgerServiceHandler(srv, &ledger.Handler{Book: ledger.NewBook()})
	reflection.Register(srv, reflection.WithEnabled(!noReflection))
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { _ = srv.Close(); hs.Close() })
	return "ws" + strings.TrimPrefix(hs.URL, "http")
}

// cliCase is one command line and the input it reads.
type cliCase struct {
	name  string
	args  []string // URL stands for the server's URL
	stdin string
	exit  int
	// anyMessage masks the error message: which side's timer ends a call
	// past its deadline first (and so the message) varies from run to run.
	anyMessage bool
}

// runGolden runs each case and compares its exit code, stdout and stderr
// with testdata/cli/<name>.golden (rewritten with -update).
func runGolden(t *testing.T, url string, cases []cliCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := make([]string, len(c.args))
			for i, a := range c.args {
				args[i] = strings.ReplaceAll(strings.ReplaceAll(a, "URL", url), "SET", descriptorSet)
			}
			stdin = strings.NewReader(c.stdin)
			defer func() { stdin = os.Stdin }()
			code, stdout, stderr := runTether(t, args...)
			got := "$ tether " + strings.Join(c.args, " ") + "\n"
			if c.stdin != "" {
				got += "--- stdin\n" + c.stdin
			}
			got += "--- stdout\n" + stdout + "--- stderr\n" + strings.ReplaceAll(stderr, url, "URL")
			got += "--- exit " + itoa(code) + "\n"
			// What varies from run to run: random idempotency keys, ports.
			got = randomKey.ReplaceAllString(got, "${1}<random key>")
			got = loopbackAddr.ReplaceAllString(got, "127.0.0.1:<port>")
			if c.anyMessage {
				got = errorMessage.ReplaceAllString(got, "${1}<any>")
			}
			if code != c.exit {
				t.Errorf("exit code %d, want %d\n%s", code, c.exit, got)
			}
			path := filepath.Join("testdata", "cli", c.name+".golden")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
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

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// TestListDescribe: tether list and tether describe against the example
// services, through reflection.
func TestListDescribe(t *testing.T) {
	url := startExamples(t, false)
	runGolden(t, url, []cliCase{
		{name: "list", args: []string{"list", "URL"}},
		{name: "list-service", args: []string{"list", "URL", "example.ledger.v1.LedgerService"}},
		{name: "describe-service", args: []string{"describe", "URL", "example.echo.v1.EchoService"}},
		{name: "describe-method", args: []string{"describe", "URL", "example.ledger.v1.LedgerService/Credit"}},
		{name: "describe-message", args: []string{"describe", "URL", "example.echo.v1.SayRequest"}},
		{name: "describe-envelope", args: []string{"describe", "URL", "tether.v1.Status"}},
		{name: "describe-unknown", args: []string{"describe", "URL", "no.such.Thing"}, exit: 69},
	})
}

// TestCall: tether call of each kind of method, reading stdin for client
// and bidi streaming, and the exit code of each outcome.
func TestCall(t *testing.T) {
	url := startExamples(t, false)
	runGolden(t, url, []cliCase{
		{name: "call-unary", args: []string{"call", "URL", "example.echo.v1.EchoService/Say", "-d", `{"text": "hello", "payload": "AQID"}`, "-v"}},
		{name: "call-unary-emit-defaults", args: []string{"call", "--emit-defaults", "URL", "example.echo.v1.EchoService/Say", "-d", `{"text": "hello"}`}},
		{name: "call-unary-stdin", args: []string{"call", "URL", "example.echo.v1.EchoService.Say"}, stdin: `{"text": "from stdin"}` + "\n"},
		{name: "call-server-stream", args: []string{"call", "URL", "example.echo.v1.EchoService/Countdown", "-d", `{"count": 3}`}},
		{name: "call-client-stream", args: []string{"call", "URL", "example.echo.v1.EchoService/Collect"}, stdin: "{\"text\": \"one\"}\n{\"text\": \"two\"}\n{\"text\": \"three\"}\n"},
		{name: "call-bidi", args: []string{"call", "URL", "example.echo.v1.EchoService/Chat", "-v"}, stdin: "{\"text\": \"hi\"}\n{\"text\": \"there\"}\n"},
		{name: "call-idempotency-key", args: []string{"call", "-v", "--idempotency-key", "credit-42", "-H", "x-request-id: r1", "-H", "x-trace-bin: q6ur", "URL", "example.ledger.v1.LedgerService/Credit", "-d", `{"account": "alice", "amount": "5"}`}},
		{name: "exit-invalid-argument", args: []string{"call", "URL", "example.ledger.v1.LedgerService/Credit", "-d", `{"amount": "5"}`}, exit: 67},
		{name: "exit-not-found", args: []string{"call", "URL", "tether.reflection.v1.ReflectionService/FileByFilename", "-d", `{"filename": "no/such.proto"}`}, exit: 69},
		{name: "exit-no-such-method", args: []string{"call", "URL", "example.echo.v1.EchoService/Shout", "-d", `{}`}, exit: 69},
		{name: "exit-deadline-exceeded", args: []string{"call", "--timeout", "300ms", "URL", "example.echo.v1.EchoService/Say", "-d", `{"sleep_millis": 20000}`}, exit: 68, anyMessage: true},
		{name: "exit-bad-json", args: []string{"call", "URL", "example.echo.v1.EchoService/Say", "-d", `{"nope": 1}`}, exit: 67},
		{name: "exit-usage", args: []string{"call", "URL"}, exit: 2},
	})
}

// TestCallWithoutReflection: a server without reflection answers list with
// unimplemented (and says what to do); --descriptor-set and --proto (the
// repository's .proto files, compiled in-process) then work, and a
// method the descriptors have but the server does not serve is
// unimplemented. A server that is not there is unavailable.
func TestCallWithoutReflection(t *testing.T) {
	url := startExamples(t, true)
	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		for i := range fd.Imports().Len() {
			add(fd.Imports().Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
	}
	add(echov1.File_example_echo_v1_echo_proto)
	add(reflectionv1.File_tether_reflection_v1_reflection_proto)
	b, err := proto.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "echo.binpb"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "ws://" + ln.Addr().String()
	_ = ln.Close()
	descriptorSet = filepath.Join(dir, "echo.binpb")
	defer func() { descriptorSet = "" }()
	set2 := "SET"
	runGolden(t, url, []cliCase{
		{name: "exit-unimplemented-reflection", args: []string{"list", "URL"}, exit: 76},
		{name: "descriptor-set-list", args: []string{"list", "--descriptor-set", set2, "URL"}},
		{name: "descriptor-set-call", args: []string{"call", "--descriptor-set", set2, "URL", "example.echo.v1.EchoService/Say", "-d", `{"text": "no reflection"}`}},
		{name: "proto-describe", args: []string{"describe", "--import-path", "../../proto", "--proto", "example/ledger/v1/ledger.proto", "URL", "example.ledger.v1.LedgerService"}},
		{name: "proto-call", args: []string{"call", "--import-path", "../../proto", "--proto", "example/echo/v1/echo.proto", "URL", "example.echo.v1.EchoService/Countdown", "-d", `{"count": 2}`}},
		{name: "exit-unimplemented", args: []string{"call", "--descriptor-set", set2, "URL", "tether.reflection.v1.ReflectionService/ListServices", "-d", `{}`}, exit: 76},
	})
	runGolden(t, closed, []cliCase{
		{name: "exit-unavailable", args: []string{"call", "--timeout", "30s", "--descriptor-set", set2, "URL", "example.echo.v1.EchoService/Say", "-d", `{}`}, exit: 78},
	})
}

// detailEcho fails Say with a detail, for the error output.
type detailEcho struct{ echo.Handler }

func (*detailEcho) Say(context.Context, *echov1.SayRequest) (*echov1.SayResponse, error) {
	e := tether.Errorf(tether.CodeFailedPrecondition, "not now")
	_ = e.AddDetail(wrapperspb.String("try later"))
	return nil, e
}

// TestCallTLSAndDetails: a wss:// server is reached with --cacert (and with
// --insecure), not without either; a failed call's details are printed as
// JSON on stderr.
func TestCallTLSAndDetails(t *testing.T) {
	srv := server.New(server.WithLogger(discardLogger()))
	echov1.RegisterEchoServiceHandler(srv, &detailEcho{})
	reflection.Register(srv)
	hs := httptest.NewTLSServer(srv)
	t.Cleanup(func() { _ = srv.Close(); hs.Close() })
	url := "wss" + strings.TrimPrefix(hs.URL, "https")
	pemFile := filepath.Join(t.TempDir(), "ca.pem")
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: hs.Certificate().Raw})
	if err := os.WriteFile(pemFile, cert, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--cacert", pemFile}, {"--insecure"}} {
		code, stdout, stderr := runTether(t, append([]string{"list", url}, args...)...)
		if code != exitOK || !strings.Contains(stdout, "example.echo.v1.EchoService") {
			t.Errorf("list %v: exit %d, %q %q", args, code, stdout, stderr)
		}
	}
	if code, _, stderr := runTether(t, "list", "--timeout", "30s", url); code != exitStatusBase+int(tether.CodeUnavailable) {
		t.Errorf("list without the CA: exit %d, %q; want unavailable (78)", code, stderr)
	}
	code, _, stderr := runTether(t, "call", "--insecure", url, "example.echo.v1.EchoService/Say", "-d", "{}")
	want := "ERROR:\n  Code: failed_precondition\n  Message: not now\n  Details:\n  1) {\"@type\":\"type.googleapis.com/google.protobuf.StringValue\",\"value\":\"try later\"}\n"
	if code != exitStatusBase+int(tether.CodeFailedPrecondition) || stderr != want {
		t.Errorf("failed call: exit %d, stderr\n%s\nwant\n%s", code, stderr, want)
	}
}
