package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
	"github.com/tetherrpc/tether/internal/wire"
)

// blockingSay is a Say handler that waits for its call to end and reports
// why it ended.
type blockingSay struct {
	echo.Handler
	started chan struct{}
	ended   chan error
}

func (h *blockingSay) Say(ctx context.Context, _ *echov1.SayRequest) (*echov1.SayResponse, error) {
	close(h.started)
	<-ctx.Done()
	h.ended <- context.Cause(ctx)
	return nil, ctx.Err()
}

// secAwaitEnd reads frames until stream id ends with END or RESET and
// returns its status as an error (nil for OK) and the frame type.
func secAwaitEnd(t *testing.T, ws *websocket.Conn, id uint32) (frame.Type, error) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("waiting for the end of stream %d: %v", id, err)
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
			case frame.TypeEnd:
				var end tetherv1.End
				if err := proto.Unmarshal(f.Payload, &end); err != nil {
					t.Fatalf("bad END: %v", err)
				}
				return f.Type, wire.ErrorFromStatus(end.GetStatus(), nil)
			case frame.TypeReset:
				var r tetherv1.Reset
				if err := proto.Unmarshal(f.Payload, &r); err != nil {
					t.Fatalf("bad RESET: %v", err)
				}
				return f.Type, wire.ErrorFromStatus(r.GetStatus(), nil)
			}
		}
	}
}

// TestCardinality: a unary or server-streaming call takes exactly one request
// message. A second one resets the stream with unimplemented (the code the
// gRPC status-code table gives cardinality violations) and cancels the
// handler; none at all ends the call with unimplemented. The connection and
// its other calls carry on.
func TestCardinality(t *testing.T) {
	h := &blockingSay{started: make(chan struct{}), ended: make(chan error, 1)}
	_, u := secServer(t, h)
	ws := secDial(t, u, nil)
	defer ws.Close()
	req := &echov1.SayRequest{Text: "one"}

	t.Run("second request of a unary call", func(t *testing.T) {
		secWrite(t, ws, secConcat(secOpen(1, echov1.EchoServiceSayProcedure, nil, 0), secMessage(1, req)))
		select {
		case <-h.started:
		case <-time.After(5 * time.Second):
			t.Fatal("handler did not start")
		}
		secWrite(t, ws, secConcat(secMessage(1, req), secHalfClose(1)))
		typ, err := secAwaitEnd(t, ws, 1)
		if typ != frame.TypeReset || tether.CodeOf(err) != tether.CodeUnimplemented {
			t.Fatalf("second request: %v %v; want RESET unimplemented", typ, err)
		}
		select {
		case cause := <-h.ended:
			if tether.CodeOf(cause) != tether.CodeUnimplemented {
				t.Fatalf("handler's context ended with %v; want unimplemented", cause)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("handler's context was not canceled")
		}
	})

	t.Run("second request of a server stream", func(t *testing.T) {
		secWrite(t, ws, secConcat(
			secOpen(3, echov1.EchoServiceCountdownProcedure, nil, 0),
			secMessage(3, &echov1.CountdownRequest{Count: 1 << 30}),
			secMessage(3, &echov1.CountdownRequest{Count: 1}),
		))
		typ, err := secAwaitEnd(t, ws, 3)
		if typ != frame.TypeReset || tether.CodeOf(err) != tether.CodeUnimplemented {
			t.Fatalf("second request: %v %v; want RESET unimplemented", typ, err)
		}
	})

	t.Run("no request", func(t *testing.T) {
		secWrite(t, ws, secConcat(secOpen(5, echov1.EchoServiceCountdownProcedure, nil, 0), secHalfClose(5)))
		typ, err := secAwaitEnd(t, ws, 5)
		if typ != frame.TypeEnd || tether.CodeOf(err) != tether.CodeUnimplemented {
			t.Fatalf("no request: %v %v; want END unimplemented", typ, err)
		}
	})

	t.Run("bidi takes many", func(t *testing.T) {
		secWrite(t, ws, secConcat(secOpen(7, echov1.EchoServiceChatProcedure, nil, 0),
			secMessage(7, &echov1.ChatRequest{Text: "a"}), secMessage(7, &echov1.ChatRequest{Text: "b"}), secHalfClose(7)))
		typ, err := secAwaitEnd(t, ws, 7)
		if typ != frame.TypeEnd || err != nil {
			t.Fatalf("bidi with two requests: %v %v; want END ok", typ, err)
		}
	})
}
