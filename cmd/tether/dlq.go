package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/dlq"
)

const dlqUsage = `Usage:

	tether dlq list   [-store path] [-procedure p] [-limit n] [-after ID] [-json]
	tether dlq show   [-store path] [-json | -raw] ID
	tether dlq replay [-store path] [-url ws://...] [-timeout 10s]
	                  [-header 'Name: value']... [-token-file path]
	                  (ID | -all [-procedure p] [-limit n])
	tether dlq purge  [-store path] [-procedure p] [-older-than 24h] [-yes]

list    prints the dead-lettered calls, oldest first.
show    prints every field of one entry, with its request as a hex dump.
replay  sends entries again to a tether server, with their original metadata
        and idempotency key; an entry is deleted when its replay succeeds and
        kept, with the failure recorded, when it fails. The server recognises
        a replay of a call it did run only if the replay authenticates as the
        original caller did: give the caller's credentials with -header or
        -token-file (see "Replay" in docs/DELIVERY.md).
purge   deletes the entries that match; without -yes it only counts them.

The store is the file named by -store, else $TETHER_DLQ, else tether-dlq.db in
the current directory. It must exist, and no other process may have it open
(a program holding its dead-letter queue open locks the file).

Run "tether dlq <command> -h" for a command's flags. Exit status: 0 on
success, 1 on failure (including a failed replay), 2 for a bad command line.
`

// defaultStorePath is the store used when -store is not given.
const defaultStorePath = "tether-dlq.db"

// showHexLimit caps the hex dump of show; -raw writes a request whole.
const showHexLimit = 4096

// Hooks for the tests.
var (
	// dialInvoker connects to the tether server at url, sending header
	// with the WebSocket handshake, waiting for the connection until ctx
	// ends, and returns the Invoker replay uses and what to close
	// afterwards.
	dialInvoker = dialClient
	// now is the clock purge measures -older-than from.
	now = time.Now
)

// runDLQ runs "tether dlq ...".
func runDLQ(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, dlqUsage)
		return exitUsage
	}
	var run func(args []string, stdout, stderr io.Writer) int
	switch args[0] {
	case "list", "ls":
		run = dlqList
	case "show":
		run = dlqShow
	case "replay":
		run = dlqReplay
	case "purge":
		run = dlqPurge
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, dlqUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "tether dlq: unknown command %q\n\n%s", args[0], dlqUsage)
		return exitUsage
	}
	return run(args[1:], stdout, stderr)
}

// dlqFlags is a flag set for a dlq subcommand, with the -store flag that
// all of them share.
type dlqFlags struct {
	*flag.FlagSet
	store *string
}

func newDLQFlags(name, synopsis string, stderr io.Writer) *dlqFlags {
	fs := flag.NewFlagSet("tether dlq "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: tether dlq %s %s\n\n", name, synopsis)
		fs.PrintDefaults()
	}
	def := os.Getenv("TETHER_DLQ")
	if def == "" {
		def = defaultStorePath
	}
	return &dlqFlags{FlagSet: fs, store: fs.String("store", def, "the dead-letter queue `file`; without it, $TETHER_DLQ, else "+defaultStorePath)}
}

// parse parses args, allowing flags after positional arguments
// ("show ID -store x"), and returns the positional arguments. Everything
// after "--" is positional. It returns an exit code when the command
// should stop: exitOK for -h, exitUsage for a bad flag.
func (f *dlqFlags) parse(args []string) (positional []string, code int, stop bool) {
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK, true
			}
			return nil, exitUsage, true // flag has printed the error and usage
		}
		rest := f.Args()
		consumed := len(args) - len(rest)
		if len(rest) == 0 {
			return positional, 0, false
		}
		if consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), 0, false
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// usageError prints msg and the command's usage and returns exitUsage.
func (f *dlqFlags) usageError(format string, a ...any) int {
	fmt.Fprintf(f.Output(), "%s: %s\n", f.Name(), fmt.Sprintf(format, a...))
	f.Usage()
	return exitUsage
}

// fail prints err for the command and returns exitFailure.
func (f *dlqFlags) fail(err error) int {
	fmt.Fprintf(f.Output(), "%s: %v\n", f.Name(), err)
	return exitFailure
}

// open opens the store named by -store. The file must exist: a command
// that finds none reports it rather than creating an empty queue.
func (f *dlqFlags) open(readOnly bool) (*dlq.BoltStore, error) {
	path := *f.store
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no dead-letter queue at %s (use -store or set $TETHER_DLQ)", path)
		}
		return nil, err
	}
	var opts []dlq.BoltOption
	if readOnly {
		opts = append(opts, dlq.WithReadOnly())
	}
	s, err := dlq.OpenBolt(path, opts...)
	if errors.Is(err, dlq.ErrLocked) {
		return nil, fmt.Errorf("%w\n(stop the program that has the dead-letter queue open, or copy the file and use -store)", err)
	}
	return s, err
}

func dlqList(args []string, stdout, stderr io.Writer) int {
	f := newDLQFlags("list", "[-store path] [-procedure p] [-limit n] [-after ID] [-json]", stderr)
	procedure := f.String("procedure", "", "list only calls to this `procedure` (/pkg.Service/Method)")
	limit := f.Int("limit", 0, "list at most `n` entries (0: all)")
	after := f.String("after", "", "list only entries after this `ID` (for paging)")
	asJSON := f.Bool("json", false, "print a JSON array instead of a table")
	pos, code, stop := f.parse(args)
	if stop {
		return code
	}
	if len(pos) > 0 {
		return f.usageError("unexpected argument %q", pos[0])
	}
	if *limit < 0 {
		return f.usageError("-limit must not be negative")
	}
	s, err := f.open(true)
	if err != nil {
		return f.fail(err)
	}
	defer s.Close()
	entries, err := s.List(context.Background(), dlq.ListOptions{Procedure: *procedure, Limit: *limit, After: *after})
	if err != nil {
		return f.fail(err)
	}
	if *asJSON {
		out := make([]jsonEntry, len(entries))
		for i, e := range entries {
			out[i] = toJSON(e)
		}
		if err := writeJSON(stdout, out); err != nil {
			return f.fail(err)
		}
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPROCEDURE\tATTEMPTS\tLAST CODE\tDEAD-LETTERED\tREPLAYS")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\n",
			e.ID, e.Procedure, e.Attempts, tether.Code(e.LastCode), formatTime(e.DeadLettered), e.Replays)
	}
	if err := tw.Flush(); err != nil {
		return f.fail(err)
	}
	return exitOK
}

func dlqShow(args []string, stdout, stderr io.Writer) int {
	f := newDLQFlags("show", "[-store path] [-json | -raw] ID", stderr)
	asJSON := f.Bool("json", false, "print the entry as JSON")
	raw := f.Bool("raw", false, "write only the request's protobuf bytes, unchanged")
	pos, code, stop := f.parse(args)
	if stop {
		return code
	}
	if len(pos) != 1 {
		return f.usageError("need exactly one entry ID")
	}
	if *asJSON && *raw {
		return f.usageError("-json and -raw exclude each other")
	}
	s, err := f.open(true)
	if err != nil {
		return f.fail(err)
	}
	defer s.Close()
	e, err := s.Get(context.Background(), pos[0])
	if err != nil {
		return f.fail(err)
	}
	switch {
	case *raw:
		_, err = stdout.Write(e.Request)
	case *asJSON:
		err = writeJSON(stdout, toJSON(e))
	default:
		err = writeEntry(stdout, e)
	}
	if err != nil {
		return f.fail(err)
	}
	return exitOK
}

// writeEntry prints every field of e for a person.
func writeEntry(w io.Writer, e *dlq.Entry) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	orNone := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	fmt.Fprintf(tw, "ID:\t%s\n", e.ID)
	fmt.Fprintf(tw, "Procedure:\t%s\n", e.Procedure)
	if e.ServerStreaming {
		fmt.Fprintf(tw, "Call:\tserver-streaming (replay reads the responses to the end)\n")
	}
	fmt.Fprintf(tw, "Idempotency key:\t%s\n", orNone(e.IdempotencyKey))
	fmt.Fprintf(tw, "Attempts:\t%d\n", e.Attempts)
	fmt.Fprintf(tw, "Last code:\t%s (%d)\n", tether.Code(e.LastCode), e.LastCode)
	fmt.Fprintf(tw, "Last error:\t%s\n", orNone(e.LastError))
	fmt.Fprintf(tw, "First attempt:\t%s\n", formatTime(e.FirstAttempt))
	fmt.Fprintf(tw, "Dead-lettered:\t%s\n", formatTime(e.DeadLettered))
	fmt.Fprintf(tw, "Replays:\t%d\n", e.Replays)
	fmt.Fprintf(tw, "Last replay:\t%s\n", formatTime(e.LastReplay))
	fmt.Fprintf(tw, "Last replay error:\t%s\n", orNone(e.LastReplayError))
	if len(e.Metadata) == 0 {
		fmt.Fprintf(tw, "Metadata:\t-\n")
	} else {
		fmt.Fprintf(tw, "Metadata:\t%s\n", plural(len(e.Metadata), "key", "keys"))
	}
	fmt.Fprintf(tw, "Request:\t%s\n", plural(len(e.Request), "byte", "bytes"))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(e.Metadata) > 0 {
		io.WriteString(w, "\nMetadata:\n")
		keys := make([]string, 0, len(e.Metadata))
		for k := range e.Metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		mw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
		for _, k := range keys {
			for _, v := range e.Metadata[k] {
				fmt.Fprintf(mw, "  %s:\t%s\n", k, v)
			}
		}
		if err := mw.Flush(); err != nil {
			return err
		}
	}
	if len(e.Request) > 0 {
		io.WriteString(w, "\nRequest (hex):\n")
	}
	dump := e.Request
	if len(dump) > showHexLimit {
		dump = dump[:showHexLimit]
	}
	if len(dump) > 0 {
		if _, err := io.WriteString(w, indent(hex.Dump(dump), "  ")); err != nil {
			return err
		}
	}
	if len(e.Request) > len(dump) {
		_, err := fmt.Fprintf(w, "  ... %d more bytes (show -raw writes the whole request)\n", len(e.Request)-len(dump))
		return err
	}
	return nil
}

// plural returns "1 entry", "2 entries" and so on.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

func indent(s, prefix string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "")
}

// headerFlags collects repeated -header values as given; they are checked
// after parsing, so that an error never echoes a value (a credential).
type headerFlags []string

func (h *headerFlags) String() string { return "" }

func (h *headerFlags) Set(v string) error {
	*h = append(*h, v)
	return nil
}

// credentials builds the handshake headers of a replay from the -header
// values and the -token-file. Its errors name flags and files, never values.
func credentials(headers []string, tokenFile string) (http.Header, error) {
	h := http.Header{}
	for i, kv := range headers {
		name, value, ok := strings.Cut(kv, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf("-header number %d: want \"Name: value\"", i+1)
		}
		h.Add(name, strings.TrimSpace(value))
	}
	if tokenFile == "" {
		return h, nil
	}
	if h.Get("Authorization") != "" {
		return nil, errors.New("an Authorization -header and -token-file: give one, not both")
	}
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("-token-file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return nil, fmt.Errorf("-token-file %s is empty", tokenFile)
	}
	if strings.ContainsAny(token, "\r\n") {
		return nil, fmt.Errorf("-token-file %s holds more than one line", tokenFile)
	}
	h.Set("Authorization", "Bearer "+token)
	return h, nil
}

func dlqReplay(args []string, stdout, stderr io.Writer) int {
	f := newDLQFlags("replay", "[-store path] [-url ws://...] [-timeout 10s] [-header 'Name: value']... [-token-file path] (ID | -all [-procedure p] [-limit n])", stderr)
	url := f.String("url", os.Getenv("TETHER_URL"), "the tether server's ws:// or wss:// `URL` (default: $TETHER_URL)")
	timeout := f.Duration("timeout", 10*time.Second, "how long to wait for the connection, and for each call")
	all := f.Bool("all", false, "replay every entry (that -procedure selects), oldest first")
	procedure := f.String("procedure", "", "with -all: replay only calls to this `procedure`")
	limit := f.Int("limit", 0, "with -all: replay at most `n` entries (0: all)")
	var headers headerFlags
	f.Var(&headers, "header", "an HTTP `'Name: value'` header for the WebSocket handshake, such as the original caller's\n'Authorization: Bearer ...' (repeatable); never printed")
	tokenFile := f.String("token-file", os.Getenv("TETHER_TOKEN_FILE"), "a `file` holding the original caller's bearer token, sent as 'Authorization: Bearer <token>'\n(default: $TETHER_TOKEN_FILE); never printed")
	pos, code, stop := f.parse(args)
	if stop {
		return code
	}
	switch {
	case *all && len(pos) > 0:
		return f.usageError("give an entry ID or -all, not both")
	case !*all && len(pos) != 1:
		return f.usageError("need exactly one entry ID, or -all")
	case !*all && (*procedure != "" || *limit != 0):
		return f.usageError("-procedure and -limit go with -all")
	case *limit < 0:
		return f.usageError("-limit must not be negative")
	case *url == "":
		return f.usageError("need the server's -url (or $TETHER_URL)")
	case *timeout <= 0:
		return f.usageError("-timeout must be positive")
	}
	header, err := credentials(headers, *tokenFile)
	if err != nil {
		return f.fail(err)
	}

	s, err := f.open(false)
	if err != nil {
		return f.fail(err)
	}
	defer s.Close()
	ctx := context.Background()

	// Find the work before dialing, so a typo in the ID is reported as such.
	var ids []string
	if *all {
		entries, err := s.List(ctx, dlq.ListOptions{Procedure: *procedure, Limit: *limit})
		if err != nil {
			return f.fail(err)
		}
		for _, e := range entries {
			ids = append(ids, e.ID)
		}
		if len(ids) == 0 {
			fmt.Fprintln(stdout, "nothing to replay")
			return exitOK
		}
	} else {
		if _, err := s.Get(ctx, pos[0]); err != nil {
			return f.fail(err)
		}
		ids = pos
	}

	dialCtx, cancel := context.WithTimeout(ctx, *timeout)
	inv, closer, err := dialInvoker(dialCtx, *url, header)
	cancel()
	if err != nil {
		return f.fail(err)
	}
	defer closer.Close()

	var ok, failed int
	for _, id := range ids {
		callCtx, cancel := context.WithTimeout(ctx, *timeout)
		res, err := dlq.Replay(callCtx, s, inv, id)
		cancel()
		switch {
		case errors.Is(err, dlq.ErrNotFound):
			// Deleted since it was listed (by another replay, say).
			fmt.Fprintf(stdout, "%s: gone, skipped\n", id)
		case err != nil:
			failed++
			replays := "?"
			if e, gerr := s.Get(ctx, id); gerr == nil {
				replays = fmt.Sprint(e.Replays)
			}
			fmt.Fprintf(stdout, "%s: FAILED (%s): %v; kept, %s failed replay(s)\n", id, tether.CodeOf(err), err, replays)
		default:
			ok++
			fmt.Fprintf(stdout, "%s: ok, %d-byte response; deleted\n", id, len(res))
		}
	}
	if *all {
		left, err := s.Len(ctx)
		if err != nil {
			return f.fail(err)
		}
		fmt.Fprintf(stdout, "%d replayed, %d failed, %d left in the queue\n", ok, failed, left)
	}
	if failed > 0 {
		return exitFailure
	}
	return exitOK
}

func dlqPurge(args []string, stdout, stderr io.Writer) int {
	f := newDLQFlags("purge", "[-store path] [-procedure p] [-older-than 24h] [-yes]", stderr)
	procedure := f.String("procedure", "", "purge only calls to this `procedure`")
	olderThan := f.Duration("older-than", 0, "purge only entries dead-lettered longer than this `duration` ago (0: any age)")
	yes := f.Bool("yes", false, "delete the entries; without it, purge only counts them")
	pos, code, stop := f.parse(args)
	if stop {
		return code
	}
	if len(pos) > 0 {
		return f.usageError("unexpected argument %q (purge selects with -procedure and -older-than)", pos[0])
	}
	if *olderThan < 0 {
		return f.usageError("-older-than must not be negative")
	}
	opts := dlq.PurgeOptions{Procedure: *procedure}
	if *olderThan > 0 {
		opts.OlderThan = now().Add(-*olderThan)
	}
	what := ""
	if *procedure != "" {
		what += " for " + *procedure
	}
	if *olderThan > 0 {
		what += fmt.Sprintf(" dead-lettered before %s", formatTime(opts.OlderThan))
	}

	s, err := f.open(!*yes)
	if err != nil {
		return f.fail(err)
	}
	defer s.Close()
	ctx := context.Background()
	if !*yes {
		entries, err := s.List(ctx, dlq.ListOptions{Procedure: *procedure})
		if err != nil {
			return f.fail(err)
		}
		n := 0
		for _, e := range entries {
			if opts.OlderThan.IsZero() || e.DeadLettered.Before(opts.OlderThan) {
				n++
			}
		}
		fmt.Fprintf(stdout, "%s%s would be purged from %s; nothing deleted (add -yes to delete)\n", plural(n, "entry", "entries"), what, *f.store)
		return exitOK
	}
	n, err := s.Purge(ctx, opts)
	if err != nil {
		return f.fail(err)
	}
	fmt.Fprintf(stdout, "purged %s%s from %s\n", plural(n, "entry", "entries"), what, *f.store)
	return exitOK
}

// jsonEntry is how list -json and show -json print an entry.
type jsonEntry struct {
	ID              string              `json:"id"`
	Procedure       string              `json:"procedure"`
	ServerStreaming bool                `json:"server_streaming,omitempty"`
	IdempotencyKey  string              `json:"idempotency_key,omitempty"`
	Attempts        int                 `json:"attempts"`
	LastCode        uint32              `json:"last_code"`
	LastCodeName    string              `json:"last_code_name"`
	LastError       string              `json:"last_error,omitempty"`
	FirstAttempt    time.Time           `json:"first_attempt,omitzero"`
	DeadLettered    time.Time           `json:"dead_lettered,omitzero"`
	Replays         int                 `json:"replays"`
	LastReplay      time.Time           `json:"last_replay,omitzero"`
	LastReplayError string              `json:"last_replay_error,omitempty"`
	Metadata        map[string][]string `json:"metadata,omitempty"`
	RequestSize     int                 `json:"request_size"`
	Request         []byte              `json:"request"` // base64
}

func toJSON(e *dlq.Entry) jsonEntry {
	return jsonEntry{
		ID:              e.ID,
		Procedure:       e.Procedure,
		ServerStreaming: e.ServerStreaming,
		IdempotencyKey:  e.IdempotencyKey,
		Attempts:        e.Attempts,
		LastCode:        e.LastCode,
		LastCodeName:    tether.Code(e.LastCode).String(),
		LastError:       e.LastError,
		FirstAttempt:    e.FirstAttempt.UTC(),
		DeadLettered:    e.DeadLettered.UTC(),
		Replays:         e.Replays,
		LastReplay:      e.LastReplay.UTC(),
		LastReplayError: e.LastReplayError,
		Metadata:        e.Metadata,
		RequestSize:     len(e.Request),
		Request:         e.Request,
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// formatTime prints t in UTC to the second, or "-" for the zero time.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// dialClient is dialInvoker's implementation: a tether client for url that
// sends header with every handshake, once it has connected. It fails if the client is not connected when ctx
// ends, with the last connection error. (*client.Client).InvokeRaw does not
// dead-letter a call that fails again, so a failed replay only updates its
// entry.
func dialClient(ctx context.Context, url string, header http.Header) (dlq.Invoker, io.Closer, error) {
	var (
		mu      sync.Mutex
		lastErr error
	)
	c, err := client.New(url,
		client.WithHandshakeHeader(header),
		client.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))),
		client.WithStateListener(func(_ client.State, err error) {
			if err != nil {
				mu.Lock()
				lastErr = err
				mu.Unlock()
			}
		}))
	if err != nil {
		return nil, nil, err
	}
	for st := c.State(); st != client.StateReady; st = c.WaitForStateChange(ctx, st) {
		if ctx.Err() != nil {
			c.Close()
			mu.Lock()
			defer mu.Unlock()
			if lastErr != nil {
				return nil, nil, fmt.Errorf("cannot connect to %s: %w", c.URL(), lastErr)
			}
			return nil, nil, fmt.Errorf("cannot connect to %s: %w", c.URL(), ctx.Err())
		}
	}
	return c, c, nil
}

// The client is the Invoker replay uses.
var _ dlq.Invoker = (*client.Client)(nil)
