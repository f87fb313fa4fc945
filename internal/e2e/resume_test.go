package e2e

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/faultproxy"
	"github.com/tetherrpc/tether/internal/frame"
	"github.com/tetherrpc/tether/server"
)

// resumeFull runs the acceptance sizes of issue 12: a server stream of
// 100,000 messages and a bidi session of 10,000 turns through cuts. The
// default sizes take about 10 s.
var resumeFull = flag.Bool("resume.full", false, "resumable-stream tests at full size (100,000 messages, 10,000 turns)")

// resumeSpan is how long the receiver of a cut test spreads its reads over,
// so that the random cuts land all along the stream.
func resumeSpan() time.Duration {
	if *resumeFull {
		return 60 * time.Second
	}
	return 5 * time.Second
}

// pace sleeps, every 100 items, until item i of n is due within span.
func pace(start time.Time, i, n int, span time.Duration) {
	if i%100 == 0 {
		time.Sleep(time.Until(start.Add(span * time.Duration(i) / time.Duration(n))))
	}
}

// watchingHandler is the echo service with handlers that record whether
// they ever saw an error or their context end: a resumable stream's handler
// must not.
type watchingHandler struct {
	echo.Handler
	observed atomic.Int32
	finished atomic.Int32
}

func (h *watchingHandler) Countdown(ctx context.Context, req *echov1.CountdownRequest, stream *server.ServerStream[echov1.CountdownResponse]) error {
	defer h.finished.Add(1)
	for i := req.GetCount(); i > 0; i-- {
		if err := stream.Send(&echov1.CountdownResponse{Value: i, Payload: req.GetPayload()}); err != nil {
			h.observed.Add(1)
			return err
		}
		if ctx.Err() != nil {
			h.observed.Add(1)
			return ctx.Err()
		}
	}
	return nil
}

func (h *watchingHandler) Chat(ctx context.Context, stream *server.BidiStream[echov1.ChatRequest, echov1.ChatResponse]) error {
	defer h.finished.Add(1)
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err == nil && ctx.Err() != nil {
			err = ctx.Err()
		}
		if err != nil {
			h.observed.Add(1)
			return err
		}
		if err := stream.Send(&echov1.ChatResponse{Text: "echo: " + req.GetText(), Payload: req.GetPayload()}); err != nil {
			h.observed.Add(1)
			return err
		}
	}
}

// cutter cuts every connection through p at random intervals of 200 ms to
// 2 s until stop is closed, and counts the cuts.
func cutter(t *testing.T, p *faultproxy.Proxy, stop <-chan struct{}) *atomic.Int32 {
	seed := time.Now().UnixNano()
	t.Logf("cut schedule seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 12))
	var cuts atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			d := 200*time.Millisecond + time.Duration(rng.Int64N(int64(1800*time.Millisecond)))
			select {
			case <-stop:
				return
			case <-time.After(d):
				p.CutAll()
				cuts.Add(1)
			}
		}
	}()
	t.Cleanup(func() { <-done })
	return &cuts
}

func newResumeEnv(t *testing.T, h echov1.EchoServiceHandler, srvOpts ...server.Option) (*env, *faultproxy.Proxy) {
	t.Helper()
	var proxy *faultproxy.Proxy
	e := newEnv(t, envConfig{
		handler: h,
		srvOpts: append([]server.Option{server.WithLogger(discardLogger())}, srvOpts...),
		cliOpts: []client.Option{
			client.WithLogger(discardLogger()),
			client.WithBackoff(client.BackoffConfig{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond}),
		},
		dialURL: throughProxy(t, &proxy),
	})
	return e, proxy
}

// TestResumeServerStreamThroughCuts: a resumable server stream delivers
// every message exactly once and in order while the connection is cut at
// random, and its handler never sees an error or its context end.
func TestResumeServerStreamThroughCuts(t *testing.T) {
	n := 20_000
	if *resumeFull {
		n = 100_000
	}
	h := &watchingHandler{}
	e, proxy := newResumeEnv(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stream, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: uint32(n), Payload: make([]byte, 200)}, client.WithResumable(true))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	stop := make(chan struct{})
	cuts := cutter(t, proxy, stop)
	want := uint32(n)
	start := time.Now()
	for {
		pace(start, n-int(want), n, resumeSpan())
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			close(stop)
			t.Fatalf("after %d messages and %d cuts: %v", uint32(n)-want, cuts.Load(), err)
		}
		if msg.GetValue() != want {
			close(stop)
			t.Fatalf("got message %d, want %d (after %d cuts)", msg.GetValue(), want, cuts.Load())
		}
		want--
		if n-int(want) == n/2 && cuts.Load() == 0 {
			proxy.CutAll() // at least one cut, however fast the stream runs
			cuts.Add(1)
		}
	}
	close(stop)
	if want != 0 {
		t.Fatalf("stream ended at %d", want)
	}
	if h.observed.Load() != 0 || h.finished.Load() != 1 {
		t.Fatalf("handler observed %d errors, finished %d times", h.observed.Load(), h.finished.Load())
	}
	t.Logf("%d messages through %d cuts", n, cuts.Load())
}

// TestResumeBidiThroughCuts: a resumable bidi session of request-response
// turns, both directions sequenced, through random cuts.
func TestResumeBidiThroughCuts(t *testing.T) {
	turns := 2_000
	if *resumeFull {
		turns = 10_000
	}
	h := &watchingHandler{}
	e, proxy := newResumeEnv(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stream, err := e.echo.Chat(ctx, client.WithResumable(true))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	stop := make(chan struct{})
	cuts := cutter(t, proxy, stop)
	start := time.Now()
	for i := range turns {
		pace(start, i, turns, resumeSpan())
		if err := stream.Send(&echov1.ChatRequest{Text: strconv.Itoa(i)}); err != nil {
			close(stop)
			t.Fatalf("send %d: %v", i, err)
		}
		msg, err := stream.Receive()
		if err != nil {
			close(stop)
			t.Fatalf("turn %d after %d cuts: %v", i, cuts.Load(), err)
		}
		if got, want := msg.GetText(), "echo: "+strconv.Itoa(i); got != want {
			close(stop)
			t.Fatalf("turn %d: got %q, want %q", i, got, want)
		}
		if i == turns/2 && cuts.Load() == 0 {
			proxy.CutAll()
			cuts.Add(1)
		}
	}
	close(stop)
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Receive(); !errors.Is(err, io.EOF) {
		t.Fatalf("end: %v", err)
	}
	if h.observed.Load() != 0 || h.finished.Load() != 1 {
		t.Fatalf("handler observed %d errors, finished %d times", h.observed.Load(), h.finished.Load())
	}
	t.Logf("bidi through %d cuts", cuts.Load())
}

// abandonedHandler's Countdown sends as fast as it may and counts the sends
// that returned; when a Send fails it reports how its context ended.
type abandonedHandler struct {
	echo.Handler
	sent  atomic.Int64
	ended chan error
}

func (h *abandonedHandler) Countdown(ctx context.Context, req *echov1.CountdownRequest, stream *server.ServerStream[echov1.CountdownResponse]) error {
	for i := req.GetCount(); i > 0; i-- {
		if err := stream.Send(&echov1.CountdownResponse{Value: i, Payload: req.GetPayload()}); err != nil {
			cause := context.Cause(ctx)
			if cause == nil {
				cause = fmt.Errorf("Send failed with %w and the context did not end", err)
			}
			h.ended <- cause
			return err
		}
		h.sent.Add(1)
	}
	return nil
}

// TestResumeClientNeverReturns: a client that loses its connection and
// never comes back costs the server at most the replay buffer (the
// handler's Send blocks once it is full), and when the grace period ends
// the handler's context ends with aborted and the stream is released
// (goroutines: goleak in TestMain). The client fails with ErrNotResumed.
func TestResumeClientNeverReturns(t *testing.T) {
	const bufBytes = 64 << 10
	const payload = 1000
	h := &abandonedHandler{ended: make(chan error, 1)}
	e, proxy := newResumeEnv(t, h, server.WithResumeLimits(server.ResumeLimits{Grace: time.Second, StreamBytes: bufBytes}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: 1 << 30, Payload: make([]byte, payload)}, client.WithResumable(true))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	consumed := 0
	for range 10 {
		if _, err := stream.Receive(); err != nil {
			t.Fatal(err)
		}
		consumed++
	}
	proxy.Refuse(true)
	proxy.CutAll()
	// The client keeps trying for the announced grace period, then fails.
	_, err = stream.Receive()
	for err == nil {
		consumed++
		_, err = stream.Receive()
	}
	if !errors.Is(err, client.ErrNotResumed) || tether.CodeOf(err) != tether.CodeAborted {
		t.Fatalf("Receive after the server forgot the stream: %v, want aborted and ErrNotResumed", err)
	}
	select {
	case cause := <-h.ended:
		if tether.CodeOf(cause) != tether.CodeAborted || !errors.Is(cause, server.ErrNotResumed) {
			t.Fatalf("handler's context ended with %v, want aborted and ErrNotResumed", cause)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("handler still running 30 s after the grace period")
	}
	// A message whose Send returned is acknowledged (so consumed by the
	// client) or in the replay buffer: messages of more than payload bytes
	// each, bufBytes in all.
	if limit := int64(consumed + bufBytes/payload); h.sent.Load() > limit {
		t.Fatalf("handler's Send returned %d times with %d messages consumed: more than the replay buffer holds (%d)", h.sent.Load(), consumed, limit)
	}
	t.Logf("handler sent %d, client consumed %d", h.sent.Load(), consumed)
}

// TestResumeParkedPerPrincipal: past ParkedPerPrincipal, a stream whose
// connection is lost ends at once (its handler's context with
// resource_exhausted); its client's re-attach fails with aborted and
// ErrNotResumed, while the stream within the limit resumes and completes.
func TestResumeParkedPerPrincipal(t *testing.T) {
	h := &abandonedHandler{ended: make(chan error, 2)}
	e, proxy := newResumeEnv(t, h, server.WithResumeLimits(server.ResumeLimits{ParkedPerPrincipal: 1, StreamBytes: 16 << 10}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 3000
	var streams [2]interface {
		Receive() (*echov1.CountdownResponse, error)
		Close() error
	}
	for i := range streams {
		s, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: n, Payload: make([]byte, 100)}, client.WithResumable(true))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Receive(); err != nil {
			t.Fatal(err)
		}
		streams[i] = s
	}
	proxy.Refuse(true)
	proxy.CutAll()
	select {
	case cause := <-h.ended:
		if tether.CodeOf(cause) != tether.CodeResourceExhausted || !errors.Is(cause, server.ErrNotResumed) {
			t.Fatalf("handler of the stream over the limit ended with %v", cause)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no stream ended after the cut, with 2 parked and a limit of 1")
	}
	proxy.Refuse(false)
	failed, completed := 0, 0
	for _, s := range streams {
		want := uint32(n - 1)
		for {
			msg, err := s.Receive()
			if errors.Is(err, io.EOF) {
				if want != 0 {
					t.Fatalf("stream ended at %d", want)
				}
				completed++
				break
			}
			if err != nil {
				if !errors.Is(err, client.ErrNotResumed) || tether.CodeOf(err) != tether.CodeAborted {
					t.Fatalf("stream failed with %v, want aborted and ErrNotResumed", err)
				}
				failed++
				break
			}
			if msg.GetValue() != want {
				t.Fatalf("got %d, want %d", msg.GetValue(), want)
			}
			want--
		}
	}
	if failed != 1 || completed != 1 {
		t.Fatalf("%d streams failed and %d completed, want 1 and 1", failed, completed)
	}
}

// TestResumeTurnedOff: a server WithoutResumption does not announce
// resumable streams; a call asking for one gets a plain stream, which a cut
// ends with unavailable as before.
func TestResumeTurnedOff(t *testing.T) {
	e, proxy := newResumeEnv(t, &echo.Handler{}, server.WithoutResumption())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: 1 << 20, Payload: make([]byte, 100)}, client.WithResumable(true))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Receive(); err != nil {
		t.Fatal(err)
	}
	proxy.CutAll()
	for err == nil {
		_, err = s.Receive()
	}
	if tether.CodeOf(err) != tether.CodeUnavailable {
		t.Fatalf("plain stream after a cut: %v, want unavailable", err)
	}
}

// TestResumeAckOnPlainStream: a 12-byte WINDOW (an acknowledgement) on a
// stream that is not resumable is a protocol error.
func TestResumeAckOnPlainStream(t *testing.T) {
	_, url := secServer(t, &echo.Handler{})
	ws := secDial(t, url, nil)
	defer ws.Close()
	secWrite(t, ws, secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), frame.AppendWindowAck(nil, 1, 4096, 1)))
	if text := secExpectClose(t, ws, websocket.CloseProtocolError, 10*time.Second); !strings.Contains(text, "not resumable") {
		t.Fatalf("close reason %q", text)
	}
}

// TestResumeConnBudget: the replay buffers of the resumable streams opened
// on one connection share ConnBytes: with the client gone, the handlers'
// Sends together stop at that many bytes beyond what was consumed (plus one
// message per stream), although each stream's own buffer could take more.
func TestResumeConnBudget(t *testing.T) {
	const connBytes = 48 << 10
	const payload = 1000
	h := &abandonedHandler{ended: make(chan error, 2)}
	e, proxy := newResumeEnv(t, h, server.WithResumeLimits(server.ResumeLimits{Grace: 3 * time.Second, StreamBytes: 1 << 20, ConnBytes: connBytes}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var streams []interface {
		Receive() (*echov1.CountdownResponse, error)
		Close() error
	}
	for range 2 {
		s, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: 1 << 30, Payload: make([]byte, payload)}, client.WithResumable(true))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		streams = append(streams, s)
	}
	consumed := 0
	for _, s := range streams {
		for range 5 {
			if _, err := s.Receive(); err != nil {
				t.Fatal(err)
			}
			consumed++
		}
	}
	proxy.Refuse(true)
	proxy.CutAll()
	// The handlers go on until the budget is full, then wait: check while
	// both streams are parked (once one ends, its bytes are the other's).
	last, stable := h.sent.Load(), time.Now()
	for time.Since(stable) < 300*time.Millisecond {
		time.Sleep(20 * time.Millisecond)
		if n := h.sent.Load(); n != last {
			last, stable = n, time.Now()
		}
	}
	if limit := int64(consumed + connBytes/payload + 2); last > limit {
		t.Fatalf("handlers' Sends returned %d times with %d messages consumed: more than the connection's budget holds (%d)", last, consumed, limit)
	}
	for _, s := range streams {
		var err error
		for err == nil {
			_, err = s.Receive()
		}
		if !errors.Is(err, client.ErrNotResumed) {
			t.Fatalf("Receive: %v, want ErrNotResumed", err)
		}
	}
	for range 2 {
		select {
		case <-h.ended:
		case <-time.After(30 * time.Second):
			t.Fatal("a handler still runs 30 s after the grace period")
		}
	}
	t.Logf("handlers sent %d with both parked, client consumed %d", last, consumed)
}

// resumeOrg and resumeUser are principals as Authenticators commonly
// return them: a new *resumeUser for each connection, holding a pointer.
type resumeOrg struct{ ID int }

type resumeUser struct {
	Name string
	Org  *resumeOrg
}

func (u *resumeUser) PrincipalKey() string { return u.Name }

// plainUser is a pointer principal without pointers inside.
type plainUser struct{ Name string }

// principalMakers make a principal from a user name, one kind each.
var principalMakers = map[string]func(string) any{
	"string":  func(name string) any { return name },
	"pointer": func(name string) any { return &resumeUser{Name: name, Org: &resumeOrg{ID: 1}} },
	"plain":   func(name string) any { return &plainUser{Name: name} },
}

// TestResumeTokenBoundToPrincipal: a re-attaching OPEN with another
// principal's token is refused like an unknown token (END aborted, the
// stream is not taken over); the same token from its own principal
// re-attaches, also when the Authenticator returns a new pointer for each
// connection (principals scope by value); a token already in use cannot
// open a second stream.
func TestResumeTokenBoundToPrincipal(t *testing.T) {
	for kind, mk := range principalMakers {
		t.Run(kind, func(t *testing.T) { testResumeTokenBoundToPrincipal(t, mk) })
	}
}

func testResumeTokenBoundToPrincipal(t *testing.T, mk func(string) any) {
	auth := func(r *http.Request) (server.Identity, error) {
		return server.Identity{Principal: mk(r.Header.Get("X-User"))}, nil
	}
	_, url := secServer(t, &echo.Handler{}, server.WithAuthenticator(auth))
	as := func(user string) *websocket.Conn {
		ws := secDial(t, url, http.Header{"X-User": {user}})
		t.Cleanup(func() { ws.Close() })
		return ws
	}
	chat := echov1.EchoServiceChatProcedure
	alice := as("alice")
	secWrite(t, alice, secConcat(resumeOpen(1, chat, &tetherv1.Resume{Token: resumeToken}), secMessage(1, &echov1.ChatRequest{Text: "hi"})))
	// Alice's stream holds the token once its first answer arrives (on a
	// loaded machine the next connection's OPEN could otherwise win).
	_ = alice.SetReadDeadline(time.Now().Add(10 * time.Second))
	for answered := false; !answered; {
		_, msg, err := alice.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		for len(msg) > 0 {
			f, rest, err := frame.Parse(msg)
			if err != nil {
				t.Fatal(err)
			}
			msg, answered = rest, answered || f.StreamID == 1 && f.Type == frame.TypeMessage
		}
	}

	again := as("alice")
	secWrite(t, again, resumeOpen(1, chat, &tetherv1.Resume{Token: resumeToken}))
	if _, err := secAwaitEnd(t, again, 1); tether.CodeOf(err) != tether.CodeAlreadyExists {
		t.Fatalf("second stream with a token in use: %v, want already_exists", err)
	}

	bob := as("bob")
	secWrite(t, bob, resumeOpen(1, chat, &tetherv1.Resume{Token: resumeToken, Attach: true}))
	_, err := secAwaitEnd(t, bob, 1)
	if tether.CodeOf(err) != tether.CodeAborted || !strings.Contains(err.Error(), "unknown or expired resume token") {
		t.Fatalf("another principal's re-attach: %v, want aborted, unknown or expired resume token", err)
	}

	// Alice re-attaches on a third connection: the server answers with
	// HEADERS carrying resumed, and the old attachment is reset.
	third := as("alice")
	secWrite(t, third, resumeOpen(1, chat, &tetherv1.Resume{Token: resumeToken, Attach: true}))
	_ = third.SetReadDeadline(time.Now().Add(10 * time.Second))
	var seen []string
	for headers := false; !headers; {
		_, msg, err := third.ReadMessage()
		if err != nil {
			t.Fatalf("%v (frames seen: %v)", err, seen)
		}
		for len(msg) > 0 && !headers {
			f, rest, err := frame.Parse(msg)
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, fmt.Sprintf("%v/%d", f.Type, f.StreamID))
			msg = rest
			if f.Type == frame.TypeHeaders && f.StreamID == 1 {
				var h tetherv1.Headers
				if err := proto.Unmarshal(f.Payload, &h); err != nil || h.GetResumed() == nil {
					t.Fatalf("HEADERS %v (%v), want resumed", &h, err)
				}
				headers = true
			}
		}
	}
	if _, err := secAwaitEnd(t, alice, 1); tether.CodeOf(err) != tether.CodeAborted {
		t.Fatalf("old attachment: %v, want a RESET aborted", err)
	}
}

// TestResumeLatency measures (with -resume.full) the time from the client's
// new connection being ready to the first message of a resumed stream,
// over 50 cuts, and logs its p50 and p99. It asserts only that every
// message arrives once and in order.
func TestResumeLatency(t *testing.T) {
	if !*resumeFull {
		t.Skip("a measurement: run with -resume.full")
	}
	var ready atomic.Int64 // UnixNano of the last change to Ready
	var proxy *faultproxy.Proxy
	h := &watchingHandler{}
	e := newEnv(t, envConfig{
		handler: h,
		srvOpts: []server.Option{server.WithLogger(discardLogger())},
		cliOpts: []client.Option{
			client.WithLogger(discardLogger()),
			client.WithBackoff(client.BackoffConfig{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond}),
			client.WithStateListener(func(s client.State, _ error) {
				if s == client.StateReady {
					ready.Store(time.Now().UnixNano())
				}
			}),
		},
		dialURL: throughProxy(t, &proxy),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const n = 1 << 30
	stream, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: n, Payload: make([]byte, 64)}, client.WithResumable(true))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	want := uint32(n)
	var lat []time.Duration
	ready.Store(0)
	for len(lat) < 50 {
		if want%2000 == 0 {
			ready.Store(0)
			proxy.CutAll()
		}
		msg, err := stream.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if msg.GetValue() != want {
			t.Fatalf("got %d, want %d", msg.GetValue(), want)
		}
		want--
		if r := ready.Swap(0); r != 0 {
			lat = append(lat, time.Since(time.Unix(0, r)))
		}
	}
	slices.Sort(lat)
	t.Logf("resume latency, ready to first message, %d cuts: p50 %v, p99 %v, max %v", len(lat), lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])

	// Throughput: the same stream for 8 s without cuts, then for 8 s with
	// a cut every 200 ms to 2 s.
	rate := func() float64 {
		start := time.Now()
		count := 0
		for time.Since(start) < 8*time.Second {
			for range 1000 {
				msg, err := stream.Receive()
				if err != nil {
					t.Fatal(err)
				}
				if msg.GetValue() != want {
					t.Fatalf("got %d, want %d", msg.GetValue(), want)
				}
				want--
			}
			count += 1000
		}
		return float64(count) / time.Since(start).Seconds()
	}
	calm := rate()
	stop := make(chan struct{})
	cuts := cutter(t, proxy, stop)
	cut := rate()
	close(stop)
	t.Logf("64-byte messages per second: %.0f without cuts, %.0f through %d cuts", calm, cut, cuts.Load())
}

// lateHeaderHandler's Countdown waits for release, then sets a response
// header and sends the countdown.
type lateHeaderHandler struct {
	echo.Handler
	started chan struct{}
	release chan struct{}
}

func (h *lateHeaderHandler) Countdown(ctx context.Context, req *echov1.CountdownRequest, stream *server.ServerStream[echov1.CountdownResponse]) error {
	close(h.started)
	<-h.release
	stream.ResponseHeader().Set("x-late", "yes")
	for i := req.GetCount(); i > 0; i-- {
		if err := stream.Send(&echov1.CountdownResponse{Value: i}); err != nil {
			return err
		}
	}
	return nil
}

// TestResumeHeadersAfterCut: response headers the handler sets after the
// stream's first connection was lost reach the client, on the
// re-attachment: parked (resent with the answer to the re-attach) or
// attached again (a HEADERS frame after the answer).
func TestResumeHeadersAfterCut(t *testing.T) {
	for _, parked := range []bool{true, false} {
		t.Run(fmt.Sprintf("parked=%v", parked), func(t *testing.T) {
			h := &lateHeaderHandler{started: make(chan struct{}), release: make(chan struct{})}
			e, proxy := newResumeEnv(t, h)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			stream, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: 3}, client.WithResumable(true))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			<-h.started // the server has the stream
			if parked {
				proxy.Refuse(true)
			}
			proxy.CutAll()
			if parked {
				time.Sleep(200 * time.Millisecond) // the server notices; the handler sends while parked
				close(h.release)
				time.Sleep(100 * time.Millisecond)
				proxy.Refuse(false)
			}
			got := make(chan error, 1)
			go func() {
				for want := uint32(3); want > 0; want-- {
					msg, err := stream.Receive()
					if err == nil && msg.GetValue() != want {
						err = fmt.Errorf("got %d, want %d", msg.GetValue(), want)
					}
					if err != nil {
						got <- err
						return
					}
				}
				got <- nil
			}()
			if !parked {
				time.Sleep(300 * time.Millisecond) // re-attached meanwhile
				close(h.release)
			}
			if err := <-got; err != nil {
				t.Fatal(err)
			}
			hdr, err := stream.Header()
			if err != nil || hdr.Get("x-late") != "yes" {
				t.Fatalf("Header() = %v, %v; want x-late: yes", hdr, err)
			}
		})
	}
}
