package e2e

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/clientconn"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/faultproxy"
	"github.com/tetherrpc/tether/server"
)

// logFeed is the echo service whose Countdown reads an append-only log that
// every server instance shares (standing in for a NATS JetStream stream or
// a Kafka topic): entry i of a countdown of n is the value n-i, and the
// cursor of a message is its offset i. A run that continues a stream
// (server.ResumeCursor) starts after the cursor.
type logFeed struct {
	echov1.UnimplementedEchoServiceHandler
	plain    bool // send without cursors
	stall    bool // the first run sends nothing and waits for its end
	mu       sync.Mutex
	runs     int
	resumed  []int64 // per run: the offset it started after (-1: none)
	badClaim atomic.Int32
}

func (f *logFeed) Countdown(ctx context.Context, req *echov1.CountdownRequest, stream *server.ServerStream[echov1.CountdownResponse]) error {
	start := uint64(0)
	from := int64(-1)
	if cursor, ok := server.ResumeCursor(ctx); ok && cursor != nil {
		// The cursor is the client's claim: validate it like a request
		// field.
		if len(cursor) != 8 {
			f.badClaim.Add(1)
			return tether.Errorf(tether.CodeInvalidArgument, "bad cursor")
		}
		off := binary.BigEndian.Uint64(cursor)
		if off >= uint64(req.GetCount()) {
			f.badClaim.Add(1)
			return tether.Errorf(tether.CodeOutOfRange, "cursor beyond the log")
		}
		start, from = off+1, int64(off)
	}
	_, restarted := server.ResumeCursor(ctx)
	f.mu.Lock()
	f.runs++
	f.resumed = append(f.resumed, from)
	stall := f.stall && !restarted
	f.mu.Unlock()
	if stall {
		<-ctx.Done()
		return ctx.Err()
	}
	n := uint64(req.GetCount())
	for i := start; i < n; i++ {
		msg := &echov1.CountdownResponse{Value: uint32(n - i), Payload: req.GetPayload()}
		var err error
		if f.plain {
			err = stream.Send(msg)
		} else {
			err = stream.SendWithCursor(msg, binary.BigEndian.AppendUint64(nil, i))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// replicas runs one server instance at a time behind a proxy on 127.0.0.1;
// restart closes the current one and starts a new one (new process state,
// same shared log) that the proxy sends new connections to.
type replicas struct {
	t     *testing.T
	h     echov1.EchoServiceHandler
	proxy *faultproxy.Proxy
	srv   *server.Server
	hs    *httptest.Server
	opts  []server.Option // of the next server started
	// register, when not nil, registers the handlers instead of h.
	register func(*server.Server)
}

func (r *replicas) start() {
	r.srv = server.New(append([]server.Option{server.WithLogger(discardLogger())}, r.opts...)...)
	if r.register != nil {
		r.register(r.srv)
	} else {
		echov1.RegisterEchoServiceHandler(r.srv, r.h)
	}
	r.hs = httptest.NewServer(r.srv)
	addr := strings.TrimPrefix(r.hs.URL, "http://")
	if r.proxy == nil {
		p, err := faultproxy.New(addr)
		if err != nil {
			r.t.Fatal(err)
		}
		r.proxy = p
	} else {
		r.proxy.SetTarget(addr)
	}
}

func (r *replicas) stop() {
	_ = r.srv.Close()
	r.hs.Close()
}

func (r *replicas) restart() {
	r.stop()
	r.start()
}

func newReplicas(t *testing.T, h echov1.EchoServiceHandler, opts ...server.Option) (*replicas, echov1.EchoServiceClient) {
	r := &replicas{t: t, h: h, opts: opts}
	r.start()
	cli, err := client.New("ws://"+r.proxy.Addr(),
		client.WithLogger(discardLogger()),
		client.WithBackoff(client.BackoffConfig{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cli.Close()
		r.stop()
		_ = r.proxy.Close()
	})
	return r, echov1.NewEchoServiceClient(cli)
}

// TestResumeCursorAcrossRestarts: a resumable server stream backed by a
// shared log survives three server restarts (each server closed before the
// next starts; the client re-attaches to a server that does not hold the
// stream), two planned cuts and random cuts every 200 ms to 2 s: the
// client sees every message exactly once and in order, and each restarted
// run starts after the cursor of the last message the client consumed.
// With -resume.full it is the size: 100,000 messages over 60 s.
func TestResumeCursorAcrossRestarts(t *testing.T) {
	n := 20_000 // 4 MB of responses: more than a replay buffer ahead
	if *resumeFull {
		n = 100_000
	}
	f := &logFeed{}
	r, echo := newReplicas(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	stopCuts := make(chan struct{})
	defer close(stopCuts)
	cuts := cutter(t, r.proxy, stopCuts)
	start := time.Now()
	stream, err := echo.Countdown(ctx, &echov1.CountdownRequest{Count: uint32(n), Payload: make([]byte, 200)}, client.WithResumable(true))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	want := uint32(n)
	var restartsAt []uint32
	for {
		got := uint32(n) - want
		pace(start, int(got), n, resumeSpan()) // so that the random cuts land all along
		switch got {
		case uint32(n / 4), uint32(n / 2), uint32(3 * n / 4):
			r.restart()
			restartsAt = append(restartsAt, got)
		case uint32(n/4 + 1000), uint32(3*n/4 + 1000):
			r.proxy.CutAll() // a plain cut: resumed by the server that holds it
		}
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("after %d messages: %v", got, err)
		}
		if msg.GetValue() != want {
			t.Fatalf("got message %d, want %d", msg.GetValue(), want)
		}
		want--
	}
	if want != 0 {
		t.Fatalf("stream ended at %d", want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.runs != 4 || f.resumed[0] != -1 {
		t.Fatalf("%d handler runs, resumed after %v; want 4, the first fresh", f.runs, f.resumed)
	}
	for i, at := range restartsAt {
		// The client had consumed at messages (offsets 0 to at-1) when
		// the server closed, and then what had reached it before the
		// close: the run continues after the last of those.
		if f.resumed[i+1] < int64(at)-1 || f.resumed[i+1] >= int64(at)-1+int64(n/4) {
			t.Fatalf("run %d resumed after offset %d, want from %d (runs %v)", i+1, f.resumed[i+1], at-1, f.resumed)
		}
	}
	if f.badClaim.Load() != 0 {
		t.Fatalf("%d bad cursors", f.badClaim.Load())
	}
	t.Logf("%d messages, %d runs resumed after %v, %d random cuts", n, f.runs, f.resumed, cuts.Load())
}

// TestResumeWithoutCursorAfterRestart: a handler that sends without
// cursors cannot be restarted: after a restart the call fails with aborted
// and ErrNotResumed, never with a gap or a repeat.
func TestResumeWithoutCursorAfterRestart(t *testing.T) {
	const n = 20_000
	f := &logFeed{plain: true}
	r, echo := newReplicas(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := echo.Countdown(ctx, &echov1.CountdownRequest{Count: n, Payload: make([]byte, 200)}, client.WithResumable(true))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	want := uint32(n)
	for {
		if want == n/2 {
			r.restart()
		}
		msg, err := stream.Receive()
		if err != nil {
			if tether.CodeOf(err) != tether.CodeAborted || !errors.Is(err, client.ErrNotResumed) {
				t.Fatalf("after %d messages: %v, want aborted with ErrNotResumed", n-want, err)
			}
			break
		}
		if msg.GetValue() != want {
			t.Fatalf("got message %d, want %d", msg.GetValue(), want)
		}
		want--
	}
	// Messages that reached the client before the server closed are still
	// delivered; then the call fails, with nothing skipped.
	if want > n/2 || want == 0 {
		t.Fatalf("failed at %d, want after %d and before the end", want, n/2)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.runs != 1 {
		t.Fatalf("%d handler runs, want 1", f.runs)
	}
}

// longCursor sends one message with a cursor over MaxResumeCursor.
type longCursor struct {
	echov1.UnimplementedEchoServiceHandler
}

func (longCursor) Countdown(ctx context.Context, req *echov1.CountdownRequest, stream *server.ServerStream[echov1.CountdownResponse]) error {
	return stream.SendWithCursor(&echov1.CountdownResponse{Value: 1}, make([]byte, server.MaxResumeCursor+1))
}

// TestResumeCursorBounds: cursors are bounded on both sides (a handler's
// SendWithCursor, a client's re-attachment), and a token this server holds
// for another principal is never restarted from a cursor: the answer is the
// same aborted as for an unknown token.
func TestResumeCursorBounds(t *testing.T) {
	t.Run("send", func(t *testing.T) {
		e := newEnv(t, envConfig{handler: longCursor{}, srvOpts: []server.Option{server.WithLogger(discardLogger())}})
		stream, err := e.echo.Countdown(context.Background(), &echov1.CountdownRequest{}, client.WithResumable(true))
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		if _, err := stream.Receive(); tether.CodeOf(err) != tether.CodeInternal || !strings.Contains(err.Error(), "cursor of 1025 bytes") {
			t.Fatalf("Receive: %v, want internal: cursor of 1025 bytes", err)
		}
	})
	auth := func(r *http.Request) (server.Identity, error) {
		return server.Identity{Principal: r.Header.Get("X-User")}, nil
	}
	_, url := secServer(t, &logFeed{}, server.WithAuthenticator(auth))
	as := func(user string) *websocket.Conn {
		ws := secDial(t, url, http.Header{"X-User": {user}})
		t.Cleanup(func() { ws.Close() })
		return ws
	}
	countdown := echov1.EchoServiceCountdownProcedure
	t.Run("re-attach", func(t *testing.T) {
		ws := as("alice")
		secWrite(t, ws, resumeOpen(1, countdown, &tetherv1.Resume{Token: resumeToken, Cursors: true, Attach: true, Consumed: 3, Cursor: make([]byte, server.MaxResumeCursor+1)}))
		if _, err := secAwaitEnd(t, ws, 1); tether.CodeOf(err) != tether.CodeInvalidArgument {
			t.Fatalf("re-attach with a cursor of 1025 bytes: %v, want invalid_argument", err)
		}
	})
	t.Run("other principal", func(t *testing.T) {
		tok := []byte("fedcba9876543210")
		alice := as("alice")
		secWrite(t, alice, secConcat(resumeOpen(1, countdown, &tetherv1.Resume{Token: tok, Cursors: true}),
			secMessage(1, &echov1.CountdownRequest{Count: 100_000}), secHalfClose(1)))
		// Alice's stream exists once its first message arrives.
		_ = alice.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, _, err := alice.ReadMessage(); err != nil {
			t.Fatal(err)
		}
		bob := as("bob")
		secWrite(t, bob, resumeOpen(1, countdown, &tetherv1.Resume{Token: tok, Cursors: true, Attach: true, Consumed: 1, Cursor: []byte{0, 0, 0, 0, 0, 0, 0, 0}}))
		if _, err := secAwaitEnd(t, bob, 1); tether.CodeOf(err) != tether.CodeAborted || !strings.Contains(err.Error(), "unknown or expired resume token") {
			t.Fatalf("another principal's token with a cursor: %v, want aborted, unknown or expired resume token", err)
		}
	})
}

// TestResumeCursorBeforeFirstMessage: a stream restarted before the client
// consumed anything runs the handler again with ResumeCursor's ok set and
// a nil cursor (from the beginning).
func TestResumeCursorBeforeFirstMessage(t *testing.T) {
	f := &logFeed{stall: true}
	r, echo := newReplicas(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := echo.Countdown(ctx, &echov1.CountdownRequest{Count: 10}, client.WithResumable(true))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	for {
		f.mu.Lock()
		runs := f.runs
		f.mu.Unlock()
		if runs == 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.restart()
	receiveCountdown(t, stream, 10, nil)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.runs != 2 || f.resumed[1] != -1 || f.badClaim.Load() != 0 {
		t.Fatalf("runs %d, resumed %v, bad cursors %d", f.runs, f.resumed, f.badClaim.Load())
	}
}

// TestResumeCursorSealed: with WithResumeCursorKeys the stream restarts
// across servers that share the keys, also while the key rotates (the next
// server signs with a new key and still accepts the old one); a cursor that
// does not carry a valid seal (unsealed, forged, too short) is answered
// aborted like an unknown token, and the handler never runs.
func TestResumeCursorSealed(t *testing.T) {
	oldKey, newKey := []byte(strings.Repeat("k", 32)), []byte(strings.Repeat("n", 32))
	t.Run("restart", func(t *testing.T) {
		const n = 10_000
		f := &logFeed{}
		r, echo := newReplicas(t, f, server.WithResumeCursorKeys(oldKey))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stream, err := echo.Countdown(ctx, &echov1.CountdownRequest{Count: n, Payload: make([]byte, 200)}, client.WithResumable(true))
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		receiveCountdown(t, stream, n, func(want uint32) {
			switch want {
			case n / 2:
				r.opts = []server.Option{server.WithResumeCursorKeys(newKey, oldKey)}
				r.restart()
			case n / 4:
				r.restart()
			}
		})
		f.checkRuns(t, 3)
	})
	// The restarted server accepts the cursor for the same user whatever
	// kind of principal the Authenticator returns for each connection.
	for kind, mk := range principalMakers {
		t.Run("principal "+kind, func(t *testing.T) {
			const n = 2000
			auth := server.WithAuthenticator(func(r *http.Request) (server.Identity, error) {
				return server.Identity{Principal: mk("ada")}, nil
			})
			f := &logFeed{}
			r, echo := newReplicas(t, f, server.WithResumeCursorKeys(oldKey), auth)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			stream, err := echo.Countdown(ctx, &echov1.CountdownRequest{Count: n}, client.WithResumable(true))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			receiveCountdown(t, stream, n, func(want uint32) {
				if want == n/2 {
					r.restart()
				}
			})
			f.checkRuns(t, 2)
		})
	}
	t.Run("forged", func(t *testing.T) {
		f := &logFeed{}
		_, url := secServer(t, f, server.WithResumeCursorKeys(oldKey))
		countdown := echov1.EchoServiceCountdownProcedure
		cursor := []byte{0, 0, 0, 0, 0, 0, 0, 5}
		for name, c := range map[string][]byte{
			"unsealed": cursor,
			"forged":   append(cursor[:8:8], make([]byte, 16)...),
			"short":    {1, 2, 3},
		} {
			ws := secDial(t, url, nil)
			secWrite(t, ws, secConcat(resumeOpen(1, countdown, &tetherv1.Resume{Token: resumeToken, Cursors: true, Attach: true, Consumed: 6, Cursor: c}),
				secMessage(1, &echov1.CountdownRequest{Count: 10}), secHalfClose(1)))
			_, err := secAwaitEnd(t, ws, 1)
			ws.Close()
			if tether.CodeOf(err) != tether.CodeAborted || !strings.Contains(err.Error(), "unknown or expired resume token") {
				t.Fatalf("%s cursor: %v, want aborted, unknown or expired resume token", name, err)
			}
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.runs != 0 {
			t.Fatalf("the handler ran %d times", f.runs)
		}
	})
}

// receiveCountdown receives a countdown of n messages and its end, every
// message once and in order, calling at (if not nil) before each.
func receiveCountdown(t *testing.T, stream *clientconn.ServerStream[echov1.CountdownResponse], n uint32, at func(want uint32)) {
	t.Helper()
	for want := n; want > 0; want-- {
		if at != nil {
			at(want)
		}
		msg, err := stream.Receive()
		if err != nil || msg.GetValue() != want {
			t.Fatalf("got %v, %v; want message %d", msg, err, want)
		}
	}
	if _, err := stream.Receive(); !errors.Is(err, io.EOF) {
		t.Fatalf("end: %v", err)
	}
}

// checkRuns fails t unless the feed's handler ran runs times and saw no
// cursor it did not issue.
func (f *logFeed) checkRuns(t *testing.T, runs int) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.runs != runs || f.badClaim.Load() != 0 {
		t.Fatalf("runs %d (resumed %v), bad cursors %d; want %d runs", f.runs, f.resumed, f.badClaim.Load(), runs)
	}
}
