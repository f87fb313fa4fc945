package main

// tether load: a load generator for any method, in the spirit of ghz. The
// method and its request type come from the same place as tether call's
// (reflection, --descriptor-set or --proto); requests are JSON, encoded once
// before the run.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/clientconn"
)

// loadDefaultTotal is the number of calls when neither -n nor --duration
// is given (as ghz's default).
const loadDefaultTotal = 200

// histogramBuckets is the number of bars of the response time histogram.
const histogramBuckets = 10

func runLoad(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	var lo loadOptions
	fs.IntVar(&lo.concurrency, "c", 50, "concurrent callers")
	fs.IntVar(&lo.connections, "connections", 1, "connections (clients) the callers share, round robin")
	fs.Float64Var(&lo.rps, "rps", 0, "calls started per second, over all callers (default: as fast as they go)")
	fs.DurationVar(&lo.duration, "duration", 0, "stop starting calls after this long, e.g. 10s")
	fs.IntVar(&lo.total, "n", 0, fmt.Sprintf("total calls (default %d when --duration is not given)", loadDefaultTotal))
	data := fs.String("d", "", "request as JSON: an object, or an array of objects (or several objects) used in turn; client and bidi streams send them all (default {})")
	dataFile := fs.String("data-file", "", "read the request JSON from `file` instead of -d; - reads stdin")
	format := fs.String("format", "summary", "output: summary (text) or json")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: tether load [flags] URL package.Service/Method

Calls a method of the server at URL again and again from -c concurrent
callers over --connections connections, until -n calls were made or
--duration has passed (whichever comes first; -n %d when neither is given),
at most --rps calls started per second, and prints a summary: count, total
time, calls/s, latency percentiles, a response time histogram and the count
of each status code (--format json for scripts). --timeout is each call's
deadline. Calls are not retried.

A call is the whole call: for streaming methods, from opening the stream to
its end, every response read. Responses are read as protobuf wire format and
not decoded into the method's message type.

Exit status: 0 when the run completed (failed calls are counted in the
summary), 64 + the status code when the method cannot be found, 2 for a bad
command line.

`, loadDefaultTotal)
		fs.PrintDefaults()
	}
	if err := parseInterspersed(fs, args); err != nil {
		return exitUsage
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return exitUsage
	}
	if lo.concurrency < 1 || lo.connections < 1 || lo.total < 0 || lo.rps < 0 || lo.duration < 0 {
		fmt.Fprintln(stderr, "tether: -c and --connections must be at least 1; -n, --rps and --duration not negative")
		return exitUsage
	}
	if *format != "summary" && *format != "json" {
		fmt.Fprintf(stderr, "tether: --format %q: want summary or json\n", *format)
		return exitUsage
	}
	if lo.total == 0 && lo.duration == 0 {
		lo.total = loadDefaultTotal
	}
	if *data != "" && *dataFile != "" {
		fmt.Fprintln(stderr, "tether: give -d or --data-file, not both")
		return exitUsage
	}
	var input io.Reader = strings.NewReader("{}")
	switch {
	case *dataFile == "-":
		input = stdin
	case *dataFile != "":
		b, err := os.ReadFile(*dataFile)
		if err != nil {
			fmt.Fprintln(stderr, "tether:", err)
			return exitUsage
		}
		input = strings.NewReader(string(b))
	case *data != "":
		input = strings.NewReader(*data)
	}
	md, err := cf.headers.metadata()
	if err != nil {
		fmt.Fprintln(stderr, "tether:", err)
		return exitUsage
	}
	lo.header = md
	lo.timeout = cf.timeout
	return withSchema(&cf, fs.Arg(0), stderr, func(c *client.Client, sc schema) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		desc, spec, err := resolveMethod(ctx, sc, fs.Arg(1))
		if err != nil {
			return err
		}
		reqs, err := loadRequests(input, desc.Input(), newResolver(sc))
		if err != nil {
			return err
		}
		conns := []*client.Client{c}
		defer func() {
			for _, c := range conns[1:] {
				_ = c.Close()
			}
		}()
		for len(conns) < lo.connections {
			c, err := cf.dial(fs.Arg(0))
			if err != nil {
				return tether.Errorf(tether.CodeInvalidArgument, "%v", err)
			}
			conns = append(conns, c)
		}
		// Connect every connection before the clock starts, as ghz does.
		for _, c := range conns {
			if err := waitReady(ctx, c); err != nil {
				return err
			}
		}
		rep := lo.run(conns, &clientconn.Method{Spec: spec}, reqs)
		rep.Method = strings.TrimPrefix(spec.Procedure, "/")
		rep.Kind = methodKind(desc)
		if *format == "json" {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(rep)
		}
		rep.print(stdout)
		return nil
	})
}

// waitReady waits until c is connected; a connection that fails, or
// takes longer than ctx, ends the command as unavailable.
func waitReady(ctx context.Context, c *client.Client) error {
	for st := c.State(); st != client.StateReady; st = c.WaitForStateChange(ctx, st) {
		if st == client.StateTransientFailure || st == client.StateClosed || ctx.Err() != nil {
			return tether.Errorf(tether.CodeUnavailable, "connect %s: %v", c.URL(), st)
		}
	}
	return nil
}

// loadOptions is how tether load runs.
type loadOptions struct {
	concurrency, connections int
	total                    int
	rps                      float64
	duration, timeout        time.Duration
	header                   tether.Metadata
}

// loadRequests reads JSON values from r, each an object or an array of
// objects, and returns them encoded as messages of type in.
func loadRequests(r io.Reader, in protoreflect.MessageDescriptor, res resolver) ([][]byte, error) {
	dec := json.NewDecoder(r)
	var out [][]byte
	add := func(raw json.RawMessage) error {
		msg := dynamicpb.NewMessage(in)
		if err := (protojson.UnmarshalOptions{Resolver: res}).Unmarshal(raw, msg); err != nil {
			return tether.Errorf(tether.CodeInvalidArgument, "request as %s: %s", in.FullName(), strings.ReplaceAll(err.Error(), "\u00a0", " "))
		}
		b, err := proto.Marshal(msg)
		if err != nil {
			return tether.Errorf(tether.CodeInvalidArgument, "request: %v", err)
		}
		out = append(out, b)
		return nil
	}
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, tether.Errorf(tether.CodeInvalidArgument, "request: %v", err)
		}
		if t := strings.TrimSpace(string(raw)); strings.HasPrefix(t, "[") {
			var elems []json.RawMessage
			if err := json.Unmarshal(raw, &elems); err != nil {
				return nil, tether.Errorf(tether.CodeInvalidArgument, "request: %v", err)
			}
			for _, e := range elems {
				if err := add(e); err != nil {
					return nil, err
				}
			}
			continue
		}
		if err := add(raw); err != nil {
			return nil, err
		}
	}
	if len(out) == 0 {
		return nil, tether.Errorf(tether.CodeInvalidArgument, "request: no JSON object")
	}
	return out, nil
}

// encoded is a message whose encoding is b: an Empty carrying b as unknown
// fields marshals to b as it is, so requests are encoded once.
func encoded(b []byte) *emptypb.Empty {
	m := &emptypb.Empty{}
	m.ProtoReflect().SetUnknown(b)
	return m
}

// sample is one finished call.
type sample struct {
	d    time.Duration
	code tether.Code
	msg  string // the error message of a failed call
}

// run makes the calls and reports on them.
func (lo *loadOptions) run(conns []*client.Client, m *clientconn.Method, reqs [][]byte) *loadReport {
	opts := []client.CallOption{client.FailFast(), client.WithoutRetries()}
	if len(lo.header) > 0 {
		opts = append(opts, client.WithHeader(lo.header))
	}
	msgs := make([]*emptypb.Empty, len(reqs))
	for i, b := range reqs {
		msgs[i] = encoded(b)
	}
	var issued atomic.Int64
	start := time.Now()
	var end time.Time
	if lo.duration > 0 {
		end = start.Add(lo.duration)
	}
	// next returns the number of the next call, waiting for its slot with
	// --rps, or false when the run is over.
	next := func() (int64, bool) {
		i := issued.Add(1) - 1
		if lo.total > 0 && i >= int64(lo.total) {
			return 0, false
		}
		if lo.rps > 0 {
			at := start.Add(time.Duration(float64(i) / lo.rps * float64(time.Second)))
			if !end.IsZero() && !at.Before(end) {
				return 0, false
			}
			if d := time.Until(at); d > 0 {
				time.Sleep(d)
			}
		}
		if !end.IsZero() && !time.Now().Before(end) {
			return 0, false
		}
		return i, true
	}
	perWorker := make([][]sample, lo.concurrency)
	var wg sync.WaitGroup
	for w := range lo.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := conns[w%len(conns)]
			var out []sample
			for {
				i, ok := next()
				if !ok {
					break
				}
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if lo.timeout > 0 {
					ctx, cancel = context.WithTimeout(ctx, lo.timeout)
				}
				t0 := time.Now()
				err := loadCall(ctx, conn, m, msgs, int(i), opts)
				s := sample{d: time.Since(t0), code: tether.CodeOf(err)}
				cancel()
				if err != nil {
					s.msg = tether.AsError(err).Message()
				}
				out = append(out, s)
			}
			perWorker[w] = out
		}()
	}
	wg.Wait()
	total := time.Since(start)
	var all []sample
	for _, s := range perWorker {
		all = append(all, s...)
	}
	rep := newLoadReport(all, total)
	rep.Options = loadReportOptions{Concurrency: lo.concurrency, Connections: lo.connections, Total: lo.total, RPS: lo.rps, DurationSeconds: lo.duration.Seconds(), TimeoutSeconds: lo.timeout.Seconds()}
	return rep
}

// loadCall makes call number i: unary and server-streaming calls send
// request i (round robin), client and bidi streams send them all.
func loadCall(ctx context.Context, c *client.Client, m *clientconn.Method, reqs []*emptypb.Empty, i int, opts []client.CallOption) error {
	if m.Spec.StreamType == tether.StreamTypeUnary {
		return c.Invoke(ctx, m, reqs[i%len(reqs)], &emptypb.Empty{}, opts...)
	}
	st, err := c.NewStream(ctx, m, opts...)
	if err != nil {
		return err
	}
	defer st.Close()
	send := reqs
	if m.Spec.StreamType == tether.StreamTypeServer {
		send = reqs[i%len(reqs) : i%len(reqs)+1]
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // send while receiving, so that a bidi echo cannot block on its window
		defer wg.Done()
		for _, r := range send {
			if st.Send(r) != nil {
				return // the call ended: Receive reports how
			}
		}
		_ = st.CloseSend()
	}()
	defer wg.Wait()
	for {
		if err := st.Receive(&emptypb.Empty{}); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			_ = st.Close()
			return err
		}
	}
}

// loadReport is the result of tether load; --format json prints it as it is.
type loadReport struct {
	Method         string            `json:"method"`
	Kind           string            `json:"kind"`
	Options        loadReportOptions `json:"options"`
	Count          int               `json:"count"`
	TotalMs        float64           `json:"total_ms"`
	CallsPerSecond float64           `json:"calls_per_second"`
	AverageMs      float64           `json:"average_ms"`
	FastestMs      float64           `json:"fastest_ms"`
	SlowestMs      float64           `json:"slowest_ms"`
	// Percentiles maps p10, p25, p50, p75, p90, p95, p99 to a latency in ms.
	Percentiles map[string]float64 `json:"latency_ms"`
	Histogram   []histogramBucket  `json:"histogram"`
	// StatusCodes counts the calls by status code (ok, unavailable, ...).
	StatusCodes map[string]int `json:"status_codes"`
	// Errors counts the failed calls by code and message.
	Errors map[string]int `json:"errors,omitempty"`
}

// loadReportOptions echoes the options of the run.
type loadReportOptions struct {
	Concurrency     int     `json:"concurrency"`
	Connections     int     `json:"connections"`
	Total           int     `json:"total,omitempty"`
	RPS             float64 `json:"rps,omitempty"`
	DurationSeconds float64 `json:"duration_seconds,omitempty"`
	TimeoutSeconds  float64 `json:"timeout_seconds,omitempty"`
}

// histogramBucket counts the calls that took at most UpToMs and more than
// the previous bucket's bound.
type histogramBucket struct {
	UpToMs float64 `json:"up_to_ms"`
	Count  int     `json:"count"`
}

var percentiles = []float64{10, 25, 50, 75, 90, 95, 99}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func newLoadReport(all []sample, total time.Duration) *loadReport {
	rep := &loadReport{Count: len(all), TotalMs: ms(total), Percentiles: map[string]float64{}, StatusCodes: map[string]int{}}
	if total > 0 {
		rep.CallsPerSecond = float64(len(all)) / total.Seconds()
	}
	for _, s := range all {
		rep.StatusCodes[s.code.String()]++
		if s.code != tether.CodeOK {
			if rep.Errors == nil {
				rep.Errors = map[string]int{}
			}
			rep.Errors[s.code.String()+": "+s.msg]++
		}
	}
	if len(all) == 0 {
		return rep
	}
	ds := make([]time.Duration, len(all))
	var sum time.Duration
	for i, s := range all {
		ds[i] = s.d
		sum += s.d
	}
	slices.Sort(ds)
	rep.FastestMs, rep.SlowestMs = ms(ds[0]), ms(ds[len(ds)-1])
	rep.AverageMs = ms(sum) / float64(len(ds))
	for _, p := range percentiles {
		// nearest rank
		k := int(math.Ceil(p/100*float64(len(ds)))) - 1
		rep.Percentiles[fmt.Sprintf("p%g", p)] = ms(ds[max(k, 0)])
	}
	lo, hi := ds[0], ds[len(ds)-1]
	step := (hi - lo) / histogramBuckets
	j := 0
	for b := range histogramBuckets {
		bound := lo + step*time.Duration(b+1)
		if b == histogramBuckets-1 {
			bound = hi
		}
		n := 0
		for j < len(ds) && ds[j] <= bound {
			n++
			j++
		}
		rep.Histogram = append(rep.Histogram, histogramBucket{UpToMs: ms(bound), Count: n})
	}
	return rep
}

// print writes the summary in ghz's layout.
func (r *loadReport) print(w io.Writer) {
	fmt.Fprintf(w, "Summary:\n")
	fmt.Fprintf(w, "  Method:\t%s (%s)\n", r.Method, r.Kind)
	fmt.Fprintf(w, "  Count:\t%d\n", r.Count)
	fmt.Fprintf(w, "  Total:\t%.2f ms\n", r.TotalMs)
	fmt.Fprintf(w, "  Slowest:\t%.2f ms\n", r.SlowestMs)
	fmt.Fprintf(w, "  Fastest:\t%.2f ms\n", r.FastestMs)
	fmt.Fprintf(w, "  Average:\t%.2f ms\n", r.AverageMs)
	fmt.Fprintf(w, "  Calls/sec:\t%.2f\n", r.CallsPerSecond)
	if len(r.Histogram) > 0 {
		fmt.Fprintf(w, "\nResponse time histogram (ms):\n")
		top := 0
		for _, b := range r.Histogram {
			top = max(top, b.Count)
		}
		for _, b := range r.Histogram {
			bar := 0
			if top > 0 {
				bar = (b.Count*40 + top - 1) / top
			}
			fmt.Fprintf(w, "  %.3f [%d]\t|%s\n", b.UpToMs, b.Count, strings.Repeat("∎", bar))
		}
		fmt.Fprintf(w, "\nLatency distribution:\n")
		for _, p := range percentiles {
			fmt.Fprintf(w, "  %g %% in %.2f ms\n", p, r.Percentiles[fmt.Sprintf("p%g", p)])
		}
	}
	fmt.Fprintf(w, "\nStatus code distribution:\n")
	for _, k := range sortedByCount(r.StatusCodes) {
		fmt.Fprintf(w, "  [%s]\t%d calls\n", k, r.StatusCodes[k])
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "\nError distribution:\n")
		for _, k := range sortedByCount(r.Errors) {
			fmt.Fprintf(w, "  [%d]\t%s\n", r.Errors[k], k)
		}
	}
}

// sortedByCount returns m's keys, most frequent first, then by name.
func sortedByCount(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	return keys
}
