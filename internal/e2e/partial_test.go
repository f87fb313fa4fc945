package e2e

import (
	"strings"
	"testing"

	"github.com/tetherrpc/tether"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/internal/frame"
	"github.com/tetherrpc/tether/server"
)

// TestMaxPartialBytesOption: server.WithMaxPartialBytes bounds the memory a
// connection holds for unfinished messages. A peer that starts a message on
// a second stream while the first one's is still unfinished, past the
// budget, gets that stream reset with resource_exhausted; the first stream
// and the connection go on.
func TestMaxPartialBytesOption(t *testing.T) {
	const limit = 64 << 10
	_, u := secServer(t, nil, server.WithMaxMessageSize(limit), server.WithMaxPartialBytes(limit))
	ws := secDial(t, u, nil)
	defer ws.Close()
	fragment := func(id uint32) []byte {
		return frame.Append(nil, frame.Frame{Type: frame.TypeMessage, Flags: frame.FlagMore, StreamID: id, Payload: make([]byte, 40<<10)})
	}
	secWrite(t, ws, secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), fragment(1)))
	secWrite(t, ws, secConcat(secOpen(3, echov1.EchoServiceChatProcedure, nil, 0), fragment(3)))
	typ, err := secAwaitEnd(t, ws, 3)
	if typ != frame.TypeReset || tether.CodeOf(err) != tether.CodeResourceExhausted {
		t.Fatalf("second unfinished message over the connection's budget: %v %v; want RESET resource_exhausted", typ, err)
	}
	if !strings.Contains(err.Error(), "65536") {
		t.Fatalf("reset %q does not name the limit", err)
	}
	// Stream 1 finishes its message (the rest, empty, without MORE) and
	// half-closes: its call ends normally.
	secWrite(t, ws, secConcat(frame.Append(nil, frame.Frame{Type: frame.TypeMessage, StreamID: 1}), secHalfClose(1)))
	if typ, err := secAwaitEnd(t, ws, 1); typ != frame.TypeEnd {
		t.Fatalf("first stream: %v %v; want END", typ, err)
	}
}
