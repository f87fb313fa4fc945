package interop

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	interopv1 "github.com/tetherrpc/tether/gen/tether/testing/interop/v1"
	"github.com/tetherrpc/tether/server"
)

// env is an interop server and one client connected to it over loopback.
type env struct {
	test   interopv1.TestServiceClient
	unimpl interopv1.UnimplementedServiceClient
	// calls records what the server's handlers did with tracked calls.
	calls *tracker
	// close closes the client and the server, and waits for the handlers.
	close func()
}

func newEnv(t *testing.T) *env {
	t.Helper()
	discard := slog.New(slog.DiscardHandler)
	tr := &tracker{calls: map[string]*handlerRecord{}}
	srv := server.New(server.WithLogger(discard), server.WithInterceptors(tr))
	(&Server{}).Register(srv)
	hs := httptest.NewServer(srv) // listens on 127.0.0.1
	cli, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), client.WithLogger(discard))
	if err != nil {
		hs.Close()
		t.Fatal(err)
	}
	e := &env{
		test:   interopv1.NewTestServiceClient(cli),
		unimpl: interopv1.NewUnimplementedServiceClient(cli),
		calls:  tr,
	}
	e.close = sync.OnceFunc(func() {
		_ = cli.Close()
		_ = srv.Close() // returns once every handler has returned
		hs.Close()
	})
	t.Cleanup(e.close)
	return e
}

// callIDKey is the request metadata key that names a tracked call.
const callIDKey = "x-interop-call-id"

// tracker is a server interceptor that records, for each tracked call, when
// its handler started and what it returned, so that a case can assert what
// the server side saw (gRPC's cancel cases expect canceled on both sides).
type tracker struct {
	mu    sync.Mutex
	next  uint64
	calls map[string]*handlerRecord
	atEnd []endCheck
}

// endCheck is a check of a handler's outcome made once the server has
// closed, when every handler that ever started has returned: for calls whose
// handler may or may not run.
type endCheck struct {
	label caseLabel
	rec   *handlerRecord
	want  tether.Code
}

// handlerRecord is what the handler of one tracked call did.
type handlerRecord struct {
	id      string
	runs    atomic.Int32
	started chan struct{} // closed when the handler starts
	done    chan struct{} // closed when the handler returns
	err     error         // the handler's result; read after done
	cause   error         // context.Cause of the handler's ctx when it returned
}

// track starts tracking a call: pass rec.header() with it, and call forget
// when the case is over.
func (t *tracker) track() *handlerRecord {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	rec := &handlerRecord{
		id:      strconv.FormatUint(t.next, 10),
		started: make(chan struct{}),
		done:    make(chan struct{}),
	}
	t.calls[rec.id] = rec
	return rec
}

// checkAtEnd asks for rec's handler, if it ran, to be checked for code want
// at the end of the test, after the server has closed (see checkEnd).
func (t *tracker) checkAtEnd(ctx context.Context, rec *handlerRecord, want tether.Code) {
	label, _ := ctx.Value(labelKey{}).(caseLabel)
	t.mu.Lock()
	t.atEnd = append(t.atEnd, endCheck{label: label, rec: rec, want: want})
	t.mu.Unlock()
}

// checkEnd makes the checks checkAtEnd asked for; call it after env.close.
// It returns the failures by label, and how many handlers ran.
func (t *tracker) checkEnd() (failed map[caseLabel][]error, ran int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	failed = map[caseLabel][]error{}
	for _, c := range t.atEnd {
		select {
		case <-c.rec.done:
		default:
			if c.rec.runs.Load() == 0 {
				continue // the OPEN never reached the server
			}
			failed[c.label] = append(failed[c.label], errors.New("the server handler is still running after the server closed"))
			continue
		}
		ran++
		if n := c.rec.runs.Load(); n != 1 {
			failed[c.label] = append(failed[c.label], fmt.Errorf("the server handler ran %d times, want at most once", n))
		}
		if got := tether.CodeOf(c.rec.err); got != c.want {
			failed[c.label] = append(failed[c.label], fmt.Errorf("the server handler returned %s (%v; its context: %v), want %s", got, c.rec.err, c.rec.cause, c.want))
		}
	}
	return failed, ran
}

// labelKey is the context key of the caseLabel of the case running under
// the context.
type labelKey struct{}

// caseLabel names one run of a case.
type caseLabel struct {
	iter int
	name string // "stress/<case>" in the stress case
}

func (t *tracker) forget(rec *handlerRecord) {
	t.mu.Lock()
	delete(t.calls, rec.id)
	t.mu.Unlock()
}

func (t *tracker) lookup(md tether.Metadata) *handlerRecord {
	id := md.Get(callIDKey)
	if id == "" {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.calls[id]
}

var errPanicked = errors.New("the handler panicked")

// run runs the handler of a call, recording it if the call is tracked.
func (t *tracker) run(ctx context.Context, md tether.Metadata, next func() error) (err error) {
	rec := t.lookup(md)
	if rec == nil {
		return next()
	}
	if rec.runs.Add(1) != 1 {
		// A second run of one call is itself a failure; the first run's
		// record stands, and the case reports the count.
		return next()
	}
	close(rec.started)
	finished := false
	defer func() {
		if !finished {
			err = errPanicked
		}
		rec.err, rec.cause = err, context.Cause(ctx)
		close(rec.done)
	}()
	err = next()
	finished = true
	return err
}

// WrapUnary implements server.Interceptor.
func (t *tracker) WrapUnary(next server.UnaryFunc) server.UnaryFunc {
	return func(ctx context.Context, req proto.Message) (res proto.Message, err error) {
		var md tether.Metadata
		if ci, ok := server.CallInfoFromContext(ctx); ok {
			md = ci.RequestHeader()
		}
		err = t.run(ctx, md, func() error {
			var err error
			res, err = next(ctx, req)
			return err
		})
		return res, err
	}
}

// WrapStream implements server.Interceptor.
func (t *tracker) WrapStream(next server.StreamFunc) server.StreamFunc {
	return func(ctx context.Context, stream server.Stream) error {
		return t.run(ctx, stream.RequestHeader(), func() error { return next(ctx, stream) })
	}
}

// header returns the call option that marks a call as this record's.
func (rec *handlerRecord) header() client.CallOption {
	return client.WithHeader(tether.NewMetadata(callIDKey, rec.id))
}

// handlerWait bounds how long a case waits for a handler to start or end
// once the client side has done its part.
const handlerWait = 30 * time.Second

// wait waits for ch (rec.started or rec.done), for at most handlerWait.
func (rec *handlerRecord) wait(ctx context.Context, ch <-chan struct{}, what string) error {
	t := time.NewTimer(handlerWait)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return fmt.Errorf("the server handler did not %s within %v", what, handlerWait)
	case <-ctx.Done():
		return fmt.Errorf("the server handler did not %s before the case ended (%v)", what, context.Cause(ctx))
	}
}

// expectEnd waits for the handler to return and checks that it returned
// an error with code want.
func (rec *handlerRecord) expectEnd(ctx context.Context, want tether.Code) error {
	if err := rec.wait(ctx, rec.done, "return"); err != nil {
		return err
	}
	if n := rec.runs.Load(); n != 1 {
		return fmt.Errorf("the server handler ran %d times, want once", n)
	}
	if got := tether.CodeOf(rec.err); got != want {
		return fmt.Errorf("the server handler returned %s (%v; its context: %v), want %s", got, rec.err, rec.cause, want)
	}
	return nil
}
