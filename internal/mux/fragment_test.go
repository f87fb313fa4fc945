package mux

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// TestHalfCloseMidMessage (issue 10 item 10): a HALF_CLOSE between the
// fragments of a message is a protocol error (close 1002); the handler must
// not see a clean end of stream with the partial message silently dropped.
func TestHalfCloseMidMessage(t *testing.T) {
	got := make(chan error, 1)
	ws, _ := rawPeer(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		var err error
		for err == nil {
			_, err = s.RecvMsg()
		}
		got <- err
		s.Reset(err)
	}})
	open, _ := proto.Marshal(&tetherv1.Open{Procedure: "/a/b"})
	writeFrames(t, ws,
		frame.Frame{Type: frame.TypeOpen, StreamID: 1, Payload: open},
		frame.Frame{Type: frame.TypeMessage, Flags: frame.FlagMore, StreamID: 1, Payload: []byte("first half")},
		frame.Frame{Type: frame.TypeHalfClose, StreamID: 1},
	)
	code, text := awaitClose(ws, 10*time.Second)
	if code != websocket.CloseProtocolError {
		t.Errorf("HALF_CLOSE in the middle of a message: close %d %q; want 1002", code, text)
	}
	select {
	case err := <-got:
		if err == io.EOF {
			t.Errorf("handler saw a clean end of stream; the partial message was dropped silently")
		}
	case <-time.After(10 * time.Second):
		t.Error("handler still receiving 10s after the protocol error")
	}
}

// TestEndMidMessage: the same for an END between the fragments of a
// response message, at the client: the call must not end OK without its
// message.
func TestEndMidMessage(t *testing.T) {
	cc := rawServer(t, Config{}, func(ws *websocket.Conn) {
		_, _, _ = ws.ReadMessage() // OPEN
		var b []byte
		b = frame.Append(b, frame.Frame{Type: frame.TypeMessage, Flags: frame.FlagMore, StreamID: 1, Payload: []byte("first half")})
		b = frame.Append(b, frame.Frame{Type: frame.TypeEnd, StreamID: 1, Payload: okEnd})
		_ = ws.WriteMessage(websocket.BinaryMessage, b)
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("x"), true)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.RecvMsg()
	if err == io.EOF || err == nil {
		t.Fatalf("END in the middle of a response message: RecvMsg %v; want an error", err)
	}
	select {
	case <-cc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection still open 10s after a protocol error")
	}
	if tether.CodeOf(cc.Err()) != tether.CodeInternal {
		t.Fatalf("connection error %v; want internal (protocol error)", cc.Err())
	}
}

// TestSendMsgFailingMidMessageResets: a sender whose SendMsg fails after some
// fragments have left (here its context ends while it waits for credit)
// must reset the stream, so that nothing it sends later (a HALF_CLOSE)
// lands in the middle of the message: the peer would close the whole
// connection for it.
func TestSendMsgFailingMidMessageResets(t *testing.T) {
	cause := make(chan error, 1)
	cc, _ := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		// Never reads: the client has only the initial 64 KiB of credit.
		<-s.Context().Done()
		cause <- context.Cause(s.Context())
	}}, Config{})
	ctx, s := openFor(t, cc, 10*time.Second)
	sendCtx, sendCancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer sendCancel()
	if err := s.SendMsg(sendCtx, make([]byte, 200<<10)); tether.CodeOf(err) != tether.CodeDeadlineExceeded {
		t.Fatalf("SendMsg beyond the credit: %v; want deadline_exceeded", err)
	}
	_ = s.CloseSend(ctx)
	select {
	case err := <-cause:
		if tether.CodeOf(err) != tether.CodeDeadlineExceeded {
			t.Errorf("server stream ended with %v; want the sender's RESET (deadline_exceeded)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server stream not ended 10s after the sender gave up mid-message")
	}
	if err := cc.Err(); err != nil {
		t.Fatalf("connection closed: %v", err)
	}
}
