package e2e

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
	"github.com/tetherrpc/tether/internal/wire"
	"github.com/tetherrpc/tether/server"
)

// TestMaxPartialBytesOption: server.WithMaxPartialBytes bounds the memory a
// connection holds for unfinished messages. A peer that starts a message on
// two streams at once, together past the budget, gets one of them reset
// with resource_exhausted (whichever handler assembles second); the other
// stream and the connection go on.
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

	// The first RESET names the stream that went over the budget.
	var reset uint32
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for reset == 0 {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("two unfinished messages over the connection's budget: no RESET (%v)", err)
		}
		for len(msg) > 0 && reset == 0 {
			f, rest, err := frame.Parse(msg)
			if err != nil {
				t.Fatalf("server sent a bad frame: %v", err)
			}
			msg = rest
			switch f.Type {
			case frame.TypeEnd:
				t.Fatalf("stream %d ended before either was reset", f.StreamID)
			case frame.TypeReset:
				var r tetherv1.Reset
				if err := proto.Unmarshal(f.Payload, &r); err != nil {
					t.Fatalf("bad RESET: %v", err)
				}
				err := wire.ErrorFromStatus(r.GetStatus(), nil)
				if tether.CodeOf(err) != tether.CodeResourceExhausted || !strings.Contains(err.Error(), "65536") {
					t.Fatalf("stream %d reset with %v; want resource_exhausted naming the limit", f.StreamID, err)
				}
				reset = f.StreamID
			}
		}
	}
	// The other stream finishes its message (an empty last fragment) and
	// half-closes: its call ends with an END.
	other := uint32(1)
	if reset == 1 {
		other = 3
	}
	secWrite(t, ws, secConcat(frame.Append(nil, frame.Frame{Type: frame.TypeMessage, StreamID: other}), secHalfClose(other)))
	if typ, err := secAwaitEnd(t, ws, other); typ != frame.TypeEnd {
		t.Fatalf("stream %d: %v %v; want END", other, typ, err)
	}
}
