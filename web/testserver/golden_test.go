package main

import (
	"context"
	"encoding/hex"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

var update = flag.Bool("update", false, "rewrite web/testdata/golden-frames.txt")

const goldenFile = "../testdata/golden-frames.txt"

// capture runs call against a raw server and returns, in hex, every frame
// the Go client sent for stream 1 up to its HALF_CLOSE, one per line.
func capture(t *testing.T, call func(ctx context.Context, ec echov1.EchoServiceClient)) []string {
	t.Helper()
	frames := make(chan []string, 1)
	up := websocket.Upgrader{Subprotocols: []string{tether.Subprotocol}}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		var got []string
		for {
			_, msg, err := ws.ReadMessage()
			if err != nil {
				frames <- got
				return
			}
			for len(msg) > 0 {
				f, rest, err := frame.Parse(msg)
				if err != nil {
					t.Error(err)
					frames <- got
					return
				}
				raw := msg[:len(msg)-len(rest)]
				msg = rest
				if f.StreamID != 1 {
					continue
				}
				got = append(got, hex.EncodeToString(raw))
				if f.Type == frame.TypeMessage && f.Flags&frame.FlagMore != 0 {
					// Credit for the rest of a fragmented message, granted
					// only once its first fragment used the initial window,
					// so that fragment sizes do not depend on timing.
					_ = ws.WriteMessage(websocket.BinaryMessage, frame.AppendWindow(nil, 1, 1<<20))
				}
				if f.Type == frame.TypeHalfClose {
					frames <- got
					return
				}
			}
		}
	}))
	defer hs.Close()
	c, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		call(ctx, echov1.NewEchoServiceClient(c))
	}()
	var got []string
	select {
	case got = <-frames:
	case <-time.After(30 * time.Second):
		t.Fatal("no frames captured")
	}
	cancel()
	<-done
	return got
}

// TestGoldenFrames: the Go client's frames for the calls of the golden
// cross-check (web/test/golden.test.ts checks the TypeScript client's
// against the same file): byte-identical frames for the same calls.
func TestGoldenFrames(t *testing.T) {
	md := tether.Metadata{}
	md.Set("x-trace", "42")
	cases := []struct {
		name string
		call func(ctx context.Context, ec echov1.EchoServiceClient)
	}{
		{"unary", func(ctx context.Context, ec echov1.EchoServiceClient) {
			_, _ = ec.Say(ctx, &echov1.SayRequest{Text: "hi"}, client.WithHeader(md))
		}},
		{"server-stream", func(ctx context.Context, ec echov1.EchoServiceClient) {
			s, err := ec.Countdown(ctx, &echov1.CountdownRequest{Count: 3}, client.WithIdempotencyKey("k1"))
			if err == nil {
				_, _ = s.Receive()
			}
		}},
		{"client-stream", func(ctx context.Context, ec echov1.EchoServiceClient) {
			s, err := ec.Collect(ctx, client.WithIdempotencyKey("k2"))
			if err != nil {
				return
			}
			_ = s.Send(&echov1.CollectRequest{Text: "a"})
			_ = s.Send(&echov1.CollectRequest{Text: "b"})
			_, _ = s.CloseAndReceive()
		}},
		{"bidi", func(ctx context.Context, ec echov1.EchoServiceClient) {
			s, err := ec.Chat(ctx, client.WithIdempotencyKey("k3"), client.WithHeader(md))
			if err != nil {
				return
			}
			_ = s.Send(&echov1.ChatRequest{Text: "yo", Payload: make([]byte, 70000)})
			_ = s.CloseSend()
			_, _ = s.Receive()
		}},
	}
	var b strings.Builder
	for _, tc := range cases {
		b.WriteString("# " + tc.name + "\n")
		for _, f := range capture(t, tc.call) {
			b.WriteString(f + "\n")
		}
	}
	if *update {
		if err := os.WriteFile(goldenFile, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(goldenFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != b.String() {
		t.Fatalf("the Go client's frames differ from %s (go test ./web/testserver -update to rewrite):\n%s", goldenFile, b.String())
	}
}
