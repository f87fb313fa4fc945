package e2e

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/clientconn"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
	"github.com/tetherrpc/tether/internal/wire"
	"github.com/tetherrpc/tether/server"
)

// Client-streaming and bidi streams that restart from the handler's cursor
// (methods marked (tether.v1.resume_from_cursor)): the echo service's Chat
// and Collect, with Specs marked by hand.

var (
	markedChat = &clientconn.Method{Spec: tether.Spec{
		Procedure: echov1.EchoServiceChatProcedure, StreamType: tether.StreamTypeBidi, ResumeFromCursor: true,
	}, Resumable: true}
	markedCollect = &clientconn.Method{Spec: tether.Spec{
		Procedure: echov1.EchoServiceCollectProcedure, StreamType: tether.StreamTypeClient, ResumeFromCursor: true,
	}, Resumable: true}
)

// turnLog is an append-only log that every server instance shares
// (standing in for a NATS JetStream stream): entry i is the text of request
// i of the one session the test runs. Appending is conditional on the
// log's length, as JetStream's expected-last-sequence is, so a run that
// repeats a request the log already holds (the old run applied it after
// its last cursor) finds it there instead of appending it twice.
type turnLog struct {
	mu       sync.Mutex
	entries  []string
	runs     int
	resumed  []uint64 // per run: the requests its cursor covered
	mismatch []string // requests that were not the ones the run expected
	plain    bool     // Chat answers with Send: no cursors
	extra    bool     // Chat also checkpoints after every tenth response
	every    int      // Collect: checkpoint every this many requests
}

// apply applies request i (1-based) with text, once.
func (l *turnLog) apply(i uint64, text string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case i == uint64(len(l.entries))+1:
		l.entries = append(l.entries, text)
	case i <= uint64(len(l.entries)):
		if l.entries[i-1] != text {
			l.mismatch = append(l.mismatch, fmt.Sprintf("request %d is %q, the log has %q", i, text, l.entries[i-1]))
		}
	default:
		l.mismatch = append(l.mismatch, fmt.Sprintf("request %d after %d entries", i, len(l.entries)))
		return tether.Errorf(tether.CodeOutOfRange, "gap in the log")
	}
	return nil
}

// start returns the number of requests the run's cursor covers (0 for a
// first run), validating the cursor like a request field.
func (l *turnLog) start(ctx context.Context) (uint64, error) {
	var n uint64
	cursor, ok := server.ResumeCursor(ctx)
	if ok {
		if len(cursor) != 8 {
			return 0, tether.Errorf(tether.CodeInvalidArgument, "bad cursor")
		}
		n = binary.BigEndian.Uint64(cursor)
		if r, ok := server.ResumeRequests(ctx); !ok || r != n {
			return 0, tether.Errorf(tether.CodeInvalidArgument, "the cursor covers %d requests, not %d", n, r)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if n > uint64(len(l.entries)) {
		return 0, tether.Errorf(tether.CodeOutOfRange, "cursor beyond the log")
	}
	l.runs++
	l.resumed = append(l.resumed, n)
	return n, nil
}

// check verifies that request i carries the text the client sends as
// request i.
func (l *turnLog) check(i uint64, text string) {
	if text != strconv.FormatUint(i, 10) {
		l.mu.Lock()
		l.mismatch = append(l.mismatch, fmt.Sprintf("run got %q as request %d", text, i))
		l.mu.Unlock()
	}
}

func (l *turnLog) chat(ctx context.Context, stream *server.BidiStream[echov1.ChatRequest, echov1.ChatResponse]) error {
	n, err := l.start(ctx)
	if err != nil {
		return err
	}
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		n++
		l.check(n, req.GetText())
		if err := l.apply(n, req.GetText()); err != nil {
			return err
		}
		res := &echov1.ChatResponse{Text: req.GetText(), Payload: req.GetPayload()}
		if l.plain {
			err = stream.Send(res)
		} else {
			// The request is in the log: the cursor covers it.
			err = stream.SendWithCursor(res, binary.BigEndian.AppendUint64(nil, n))
		}
		if err == nil && l.extra && n%10 == 0 {
			err = stream.Checkpoint(binary.BigEndian.AppendUint64(nil, n))
		}
		if err != nil {
			return err
		}
	}
}

func (l *turnLog) collect(ctx context.Context, stream *server.ClientStream[echov1.CollectRequest]) (*echov1.CollectResponse, error) {
	n, err := l.start(ctx)
	if err != nil {
		return nil, err
	}
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		n++
		l.check(n, req.GetText())
		if err := l.apply(n, req.GetText()); err != nil {
			return nil, err
		}
		if n%uint64(l.every) == 0 {
			if err := stream.Checkpoint(binary.BigEndian.AppendUint64(nil, n)); err != nil {
				return nil, err
			}
		}
	}
	// The response comes from the log, not from this run's memory.
	l.mu.Lock()
	defer l.mu.Unlock()
	return &echov1.CollectResponse{Joined: strings.Join(l.entries[:n], ","), Count: uint32(n)}, nil
}

func (l *turnLog) register(srv *server.Server) {
	srv.Register(
		server.NewBidiStreamHandler(markedChat.Spec, l.chat),
		server.NewClientStreamHandler(markedCollect.Spec, l.collect),
	)
}

// verify checks that the log holds requests 1 to n, each once, and that
// every run read the requests it expected.
func (l *turnLog) verify(t *testing.T, n int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.mismatch) > 0 {
		t.Fatalf("%d unexpected requests, first: %s", len(l.mismatch), l.mismatch[0])
	}
	if len(l.entries) != n {
		t.Fatalf("the log has %d entries, want %d", len(l.entries), n)
	}
	for i, e := range l.entries {
		if e != strconv.Itoa(i+1) {
			t.Fatalf("entry %d is %q", i+1, e)
		}
	}
}

// newCursorReplicas is newReplicas for the turnLog's marked methods, with a
// raw client.
func newCursorReplicas(t *testing.T, l *turnLog, cliOpts []client.Option, opts ...server.Option) (*replicas, *client.Client) {
	r := &replicas{t: t, opts: opts, register: l.register}
	r.start()
	cli, err := client.New("ws://"+r.proxy.Addr(), append([]client.Option{
		client.WithLogger(discardLogger()),
		client.WithBackoff(client.BackoffConfig{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond}),
	}, cliOpts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cli.Close()
		r.stop()
		_ = r.proxy.Close()
	})
	return r, cli
}

// TestResumeBidiFromCursorAcrossRestarts: a bidi session of 10,000 turns
// (request k: the handler appends it to a shared log, then answers with
// SendWithCursor(offset)) through four server restarts (each server closed
// before the next starts), five planned cuts in between and random cuts
// every 200 ms to 2 s: every turn is applied exactly once to the log, each
// restarted run reads the requests after its cursor, and the client sees
// every response once, in order. The receiver spreads its reads over
// resumeSpan (5 s; 60 s with -resume.full). Requests are sent ahead of the
// responses by a sender goroutine, through a small replay buffer, so that
// restarts find requests in flight and Send waits for cursors.
func TestResumeBidiFromCursorAcrossRestarts(t *testing.T) {
	const n = 10_000
	l := &turnLog{}
	r, cli := newCursorReplicas(t, l, []client.Option{client.WithResumeBuffer(64 << 10)})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	stream, err := clientconn.CallBidiStream[echov1.ChatRequest, echov1.ChatResponse](ctx, cli, markedChat)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()

	stopCuts := make(chan struct{})
	defer close(stopCuts)
	cuts := cutter(t, r.proxy, stopCuts)

	sendErr := make(chan error, 1)
	payload := make([]byte, 1000)
	go func() {
		for k := 1; k <= n; k++ {
			if err := stream.Send(&echov1.ChatRequest{Text: strconv.Itoa(k), Payload: payload}); err != nil {
				sendErr <- fmt.Errorf("send %d: %w", k, err)
				return
			}
		}
		sendErr <- stream.CloseSend()
	}()
	restarts := 0
	start := time.Now()
	for k := 1; k <= n; k++ {
		pace(start, k, n, resumeSpan()) // so that the random cuts land all along
		switch {
		case k%2000 == 0 && k < n:
			// The sender is at most a replay buffer ahead: the
			// stream is not over.
			r.restart()
			restarts++
		case k%2000 == 1000:
			r.proxy.CutAll() // resumed by the server that holds it
		}
		res, err := stream.Receive()
		if err != nil {
			t.Fatalf("turn %d: %v", k, err)
		}
		if res.GetText() != strconv.Itoa(k) || len(res.GetPayload()) != len(payload) {
			t.Fatalf("turn %d: response %q", k, res.GetText())
		}
	}
	if _, err := stream.Receive(); !errors.Is(err, io.EOF) {
		t.Fatalf("end: %v", err)
	}
	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
	l.verify(t, n)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.runs < 1+restarts || l.resumed[0] != 0 {
		t.Fatalf("%d runs (resumed after %v) for %d restarts", l.runs, l.resumed, restarts)
	}
	t.Logf("%d runs, resumed after %v, %d cuts", l.runs, l.resumed, cuts.Load())
}

// TestResumeClientStreamFromCheckpoint: a client-streaming call whose
// handler appends each request to a shared log and checkpoints every 10
// requests continues across two server restarts: every request is applied
// once, the restarted runs read the requests after their checkpoint, and
// the response (computed from the log) is right. The caller never
// receives before CloseAndReceive: its Send consumes the checkpoints, and
// waits for them while the small replay buffer is full.
func TestResumeClientStreamFromCheckpoint(t *testing.T) {
	const n = 1000
	l := &turnLog{every: 10}
	r, cli := newCursorReplicas(t, l, []client.Option{client.WithResumeBuffer(512)})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := clientconn.CallClientStream[echov1.CollectRequest, echov1.CollectResponse](ctx, cli, markedCollect)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	for k := 1; k <= n; k++ {
		if k == n/2 || k == 3*n/4 {
			r.restart()
		}
		if err := stream.Send(&echov1.CollectRequest{Text: strconv.Itoa(k)}); err != nil {
			t.Fatalf("send %d: %v", k, err)
		}
	}
	res, err := stream.CloseAndReceive()
	if err != nil {
		t.Fatal(err)
	}
	want := make([]string, n)
	for i := range want {
		want[i] = strconv.Itoa(i + 1)
	}
	if res.GetCount() != n || res.GetJoined() != strings.Join(want, ",") {
		t.Fatalf("response: count %d, joined %.40q...", res.GetCount(), res.GetJoined())
	}
	l.verify(t, n)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.runs != 3 || l.resumed[0] != 0 || l.resumed[1] == 0 || l.resumed[1]%10 != 0 || l.resumed[2] < l.resumed[1] {
		t.Fatalf("%d runs, resumed after %v; want 3, from checkpoints", l.runs, l.resumed)
	}
}

// TestResumeBidiWithoutCursorAfterRestart: a marked bidi stream whose
// handler attaches no cursor cannot be restarted (the first run's effects
// are unknown): after a restart the call fails with aborted and
// ErrNotResumed, and the handler is not run again.
func TestResumeBidiWithoutCursorAfterRestart(t *testing.T) {
	l := &turnLog{plain: true}
	r, cli := newCursorReplicas(t, l, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := clientconn.CallBidiStream[echov1.ChatRequest, echov1.ChatResponse](ctx, cli, markedChat)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var failed error
	for k := 1; k <= 100 && failed == nil; k++ {
		if k == 50 {
			r.restart()
		}
		if err := stream.Send(&echov1.ChatRequest{Text: strconv.Itoa(k)}); err != nil {
			failed = err
			break
		}
		res, err := stream.Receive()
		switch {
		case err != nil:
			failed = err
		case res.GetText() != strconv.Itoa(k):
			t.Fatalf("turn %d: response %q", k, res.GetText())
		}
	}
	if tether.CodeOf(failed) != tether.CodeAborted || !errors.Is(failed, client.ErrNotResumed) {
		t.Fatalf("after a restart: %v, want aborted with ErrNotResumed", failed)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.runs != 1 || len(l.entries) != 49 {
		t.Fatalf("%d runs, %d entries; want 1 run, 49 entries", l.runs, len(l.entries))
	}
}

// TestResumeCursorsRefusedUnmarked: a client that asks for cursors on a
// client-streaming or bidi procedure the server has not marked is answered
// failed_precondition, on the first OPEN and on a re-attaching one, never
// misread; so is a call through the library whose Spec is marked when the
// server's is not.
func TestResumeCursorsRefusedUnmarked(t *testing.T) {
	_, url := secServer(t, nil) // the echo service: Chat and Collect unmarked
	for _, p := range []string{echov1.EchoServiceChatProcedure, echov1.EchoServiceCollectProcedure} {
		for _, rs := range []*tetherv1.Resume{
			{Token: resumeToken, Cursors: true},
			{Token: resumeToken, Cursors: true, Attach: true, Consumed: 1, Cursor: []byte{0, 0, 0, 0, 0, 0, 0, 1}, CursorRequests: 1},
		} {
			ws := secDial(t, url, nil)
			secWrite(t, ws, resumeOpen(1, p, rs))
			_, err := secAwaitEnd(t, ws, 1)
			ws.Close()
			if tether.CodeOf(err) != tether.CodeFailedPrecondition || !strings.Contains(err.Error(), "does not resume from a cursor") {
				t.Fatalf("%s, attach %v: %v, want failed_precondition", p, rs.GetAttach(), err)
			}
		}
	}
	cli, _ := secClient(t, url)
	stream, err := clientconn.CallBidiStream[echov1.ChatRequest, echov1.ChatResponse](context.Background(), cli, markedChat)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	_ = stream.Send(&echov1.ChatRequest{Text: "1"})
	if _, err := stream.Receive(); tether.CodeOf(err) != tether.CodeFailedPrecondition {
		t.Fatalf("marked client, unmarked server: %v, want failed_precondition", err)
	}
}

// awaitResponse reads frames of stream id until its first MESSAGE and
// returns its payload.
func awaitResponse(t *testing.T, ws *websocket.Conn, id uint32) []byte {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("waiting for a response on stream %d: %v", id, err)
		}
		for len(msg) > 0 {
			f, rest, err := frame.Parse(msg)
			if err != nil {
				t.Fatalf("server sent a bad frame: %v", err)
			}
			msg = rest
			if f.StreamID == id && f.Type == frame.TypeMessage {
				return f.Payload
			}
			if f.StreamID == id && (f.Type == frame.TypeEnd || f.Type == frame.TypeReset) {
				t.Fatalf("stream %d ended before a response", id)
			}
		}
	}
}

// awaitHeaders reads frames of stream id until HEADERS or its end: the
// re-attachment's answer, or the error it ended with.
func awaitHeaders(t *testing.T, ws *websocket.Conn, id uint32) (*tetherv1.ResumeAck, error) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("waiting for an answer on stream %d: %v", id, err)
		}
		for len(msg) > 0 {
			f, rest, err := frame.Parse(msg)
			if err != nil {
				t.Fatalf("server sent a bad frame: %v", err)
			}
			msg = rest
			if f.StreamID != id {
				continue
			}
			switch f.Type {
			case frame.TypeHeaders:
				var h tetherv1.Headers
				if err := proto.Unmarshal(f.Payload, &h); err != nil {
					t.Fatal(err)
				}
				return h.GetResumed(), nil
			case frame.TypeEnd:
				var end tetherv1.End
				if err := proto.Unmarshal(f.Payload, &end); err != nil {
					t.Fatal(err)
				}
				return nil, wire.ErrorFromStatus(end.GetStatus(), nil)
			case frame.TypeReset:
				return nil, errors.New("reset")
			}
		}
	}
}

// TestResumeCursorSealCoversRequests: with WithResumeCursorKeys, the seal of
// a client-streaming or bidi cursor covers its request count: a replica
// with the same keys restarts the stream from the cursor with the request
// count it was sealed with, and refuses the same cursor with another count
// (aborted, as an unknown token), without running the handler.
func TestResumeCursorSealCoversRequests(t *testing.T) {
	key := []byte(strings.Repeat("k", 32))
	l := &turnLog{}
	newServer := func() string {
		srv := server.New(server.WithLogger(discardLogger()), server.WithResumeCursorKeys(key))
		l.register(srv)
		return newHTTPServer(t, srv)
	}
	a, b := newServer(), newServer()
	chat := echov1.EchoServiceChatProcedure
	wsA := secDial(t, a, nil)
	defer wsA.Close()
	secWrite(t, wsA, secConcat(resumeOpen(1, chat, &tetherv1.Resume{Token: resumeToken, Cursors: true}),
		secMessage(1, &echov1.ChatRequest{Text: "1"})))
	cursor, requests, checkpoint, msg, err := wire.SplitCursorPrefix(awaitResponse(t, wsA, 1))
	if err != nil || requests != 1 || checkpoint || len(cursor) != 8+16 {
		t.Fatalf("response prefix: cursor of %d bytes, requests %d, checkpoint %v, %v", len(cursor), requests, checkpoint, err)
	}
	var res echov1.ChatResponse
	if err := proto.Unmarshal(msg, &res); err != nil || res.GetText() != "1" {
		t.Fatalf("response %v, %v", &res, err)
	}
	for _, forged := range []uint64{0, 2, 1 << 40} {
		ws := secDial(t, b, nil)
		secWrite(t, ws, resumeOpen(1, chat, &tetherv1.Resume{Token: resumeToken, Cursors: true, Attach: true, Consumed: 1, Cursor: cursor, CursorRequests: forged}))
		_, err := awaitHeaders(t, ws, 1)
		ws.Close()
		if tether.CodeOf(err) != tether.CodeAborted || !strings.Contains(err.Error(), "unknown or expired resume token") {
			t.Fatalf("cursor with request count %d instead of 1: %v, want aborted", forged, err)
		}
	}
	l.mu.Lock()
	runs := l.runs
	l.mu.Unlock()
	if runs != 1 {
		t.Fatalf("%d runs after forged request counts, want 1", runs)
	}
	ws := secDial(t, b, nil)
	defer ws.Close()
	secWrite(t, ws, resumeOpen(1, chat, &tetherv1.Resume{Token: resumeToken, Cursors: true, Attach: true, Consumed: 1, Cursor: cursor, CursorRequests: 1}))
	ack, err := awaitHeaders(t, ws, 1)
	if err != nil || !ack.GetRestarted() || ack.GetConsumed() != 1 {
		t.Fatalf("restart with the sealed count: %v, %v; want restarted after request 1", ack, err)
	}
	secWrite(t, ws, secMessage(1, &echov1.ChatRequest{Text: "2"}))
	_, requests, _, msg, err = wire.SplitCursorPrefix(awaitResponse(t, ws, 1))
	if err != nil || requests != 2 || proto.Unmarshal(msg, &res) != nil || res.GetText() != "2" {
		t.Fatalf("restarted run's response: %v, requests %d, %v", &res, requests, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.runs != 2 || l.resumed[1] != 1 || len(l.mismatch) > 0 {
		t.Fatalf("%d runs, resumed after %v, %v", l.runs, l.resumed, l.mismatch)
	}
}

// TestResumeCursorsNotAsked: on a stream that did not ask for cursors (a
// plain call of a marked method), SendWithCursor is Send and Checkpoint
// does nothing: the responses arrive without prefixes.
func TestResumeCursorsNotAsked(t *testing.T) {
	l := &turnLog{every: 3}
	_, cli := newCursorReplicas(t, l, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	chat, err := clientconn.CallBidiStream[echov1.ChatRequest, echov1.ChatResponse](ctx, cli, markedChat, client.WithResumable(false))
	if err != nil {
		t.Fatal(err)
	}
	defer chat.Close()
	for k := 1; k <= 5; k++ {
		if err := chat.Send(&echov1.ChatRequest{Text: strconv.Itoa(k)}); err != nil {
			t.Fatal(err)
		}
		if res, err := chat.Receive(); err != nil || res.GetText() != strconv.Itoa(k) {
			t.Fatalf("turn %d: %v, %v", k, res, err)
		}
	}
	_ = chat.CloseSend()
	if _, err := chat.Receive(); !errors.Is(err, io.EOF) {
		t.Fatalf("end: %v", err)
	}
	l2 := &turnLog{every: 3}
	_, cli2 := newCursorReplicas(t, l2, nil)
	collect, err := clientconn.CallClientStream[echov1.CollectRequest, echov1.CollectResponse](ctx, cli2, markedCollect, client.WithResumable(false))
	if err != nil {
		t.Fatal(err)
	}
	defer collect.Close()
	for k := 1; k <= 10; k++ {
		if err := collect.Send(&echov1.CollectRequest{Text: strconv.Itoa(k)}); err != nil {
			t.Fatal(err)
		}
	}
	if res, err := collect.CloseAndReceive(); err != nil || res.GetCount() != 10 {
		t.Fatalf("collect: %v, %v", res, err)
	}
}

// TestResumeBidiCheckpointsUnseen: checkpoints between a bidi stream's
// responses are consumed by the client library, never returned by Receive,
// also across a restart from one of them.
func TestResumeBidiCheckpointsUnseen(t *testing.T) {
	const n = 200
	l := &turnLog{extra: true}
	r, cli := newCursorReplicas(t, l, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := clientconn.CallBidiStream[echov1.ChatRequest, echov1.ChatResponse](ctx, cli, markedChat)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	for k := 1; k <= n; k++ {
		if k == n/2+1 {
			r.restart()
		}
		if err := stream.Send(&echov1.ChatRequest{Text: strconv.Itoa(k)}); err != nil {
			t.Fatalf("send %d: %v", k, err)
		}
		res, err := stream.Receive()
		if err != nil || res.GetText() != strconv.Itoa(k) {
			t.Fatalf("turn %d: %v, %v", k, res, err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if res, err := stream.Receive(); !errors.Is(err, io.EOF) {
		t.Fatalf("end: %v, %v", res, err)
	}
	l.verify(t, n)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.runs != 2 || l.resumed[1] != n/2 {
		t.Fatalf("%d runs, resumed after %v; want 2, the second after %d", l.runs, l.resumed, n/2)
	}
}
