package chaos

import (
	"errors"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	chaosv1 "github.com/tetherrpc/tether/gen/tether/testing/chaos/v1"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// HostileAttacks names the hostile peer's attacks, by variant.
var HostileAttacks = []string{
	"oversized-message",      // a Batch message of 1.2 MiB in 64 KiB fragments (the server allows 1 MiB)
	"huge-length",            // a frame header announcing 4 GiB
	"garbage",                // random bytes
	"metadata-values",        // an OPEN with one key holding 8,000 empty values
	"half-close-mid-message", // a Batch whose only message is cut by HALF_CLOSE after its first fragment
	"never-opened-stream",    // MESSAGE and WINDOW on streams never opened
	"open-and-vanish",        // 20 Watch streams with a large window, then TCP closed without a close frame
	"window-overflow",        // WINDOW increments that overflow 2^31
}

// HostileResult is what a hostile attack did.
type HostileResult struct {
	// Op is set for an attack that is a call with a key that must have no
	// effect (its request is not a valid complete message).
	Op *Op
	// CloseCode is the WebSocket close code the server answered with, 0 if
	// none came.
	CloseCode int
}

func marshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func openFrame(id uint32, procedure string, md map[string][]string) []byte {
	open := &tetherv1.Open{Procedure: procedure}
	for k, vs := range md {
		open.Metadata = append(open.Metadata, &tetherv1.MetadataEntry{Key: k, Values: vs})
	}
	return frame.Append(nil, frame.Frame{Type: frame.TypeOpen, StreamID: id, Payload: marshal(open)})
}

// Hostile connects to the server at addr (host:port on loopback) as
// principal "hostile", runs one attack and waits (at most 2 s) for the
// server to close the connection. key is the idempotency key of attacks
// that are calls.
func Hostile(addr string, variant int, key string, seed uint64) (HostileResult, error) {
	var res HostileResult
	d := websocket.Dialer{Subprotocols: []string{tether.Subprotocol}, HandshakeTimeout: 3 * time.Second}
	hdr := http.Header{"Authorization": {"Bearer " + Token("hostile")}}
	ws, resp, err := d.Dial("ws://"+addr, hdr)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return res, err // the server may be down: not an error of the server
	}
	defer ws.Close()
	_ = ws.SetWriteDeadline(time.Now().Add(3 * time.Second))
	send := func(b []byte) error { return ws.WriteMessage(websocket.BinaryMessage, b) }
	batch := ChaosBatchProcedure
	keyMD := map[string][]string{tether.MetadataIdempotencyKey: {key}}
	var werr error
	switch HostileAttacks[variant%len(HostileAttacks)] {
	case "oversized-message":
		res.Op = &Op{Client: "hostile", Method: MethodBatch, Key: key, Fault: "oversized-message", Result: ResultFail, NoEffect: true}
		werr = send(append(openFrame(1, batch, keyMD), frame.AppendWindow(nil, 1, 1<<20)...))
		chunk := make([]byte, frame.MaxPayload-16)
		for sent := 0; werr == nil && sent < 1200<<10; sent += len(chunk) {
			werr = send(frame.Append(nil, frame.Frame{Type: frame.TypeMessage, Flags: frame.FlagMore, StreamID: 1, Payload: chunk}))
		}
		if werr == nil {
			werr = send(frame.Append(nil, frame.Frame{Type: frame.TypeMessage, StreamID: 1, Payload: chunk[:10]}))
		}
		if werr == nil {
			werr = send(frame.Append(nil, frame.Frame{Type: frame.TypeHalfClose, StreamID: 1}))
		}
	case "huge-length":
		b := frame.AppendHeader(nil, frame.TypeMessage, 0, 1, 0)
		b[len(b)-4], b[len(b)-3], b[len(b)-2], b[len(b)-1] = 0xff, 0xff, 0xff, 0xff
		werr = send(append(b, 1, 2, 3))
	case "garbage":
		r := rand.New(rand.NewPCG(seed, 7))
		b := make([]byte, 1+r.IntN(4096))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		werr = send(b)
	case "metadata-values":
		werr = send(openFrame(1, ChaosGetProcedure, map[string][]string{"x-many": make([]string, 8000)}))
	case "half-close-mid-message":
		res.Op = &Op{Client: "hostile", Method: MethodBatch, Key: key, Fault: "half-close-mid-message", Result: ResultFail, NoEffect: true}
		msg := marshal(&chaosv1.BatchRequest{Account: "hostile", Amount: 1_000_000})
		werr = send(append(append(openFrame(1, batch, keyMD),
			frame.Append(nil, frame.Frame{Type: frame.TypeMessage, Flags: frame.FlagMore, StreamID: 1, Payload: msg[:len(msg)/2]})...),
			frame.Append(nil, frame.Frame{Type: frame.TypeHalfClose, StreamID: 1})...))
	case "never-opened-stream":
		werr = send(append(frame.Append(nil, frame.Frame{Type: frame.TypeMessage, StreamID: 5, Payload: []byte{1}}), frame.AppendWindow(nil, 7, 100)...))
	case "open-and-vanish":
		var b []byte
		req := marshal(&chaosv1.WatchRequest{Account: "hostile", Count: 1 << 20, Payload: make([]byte, 512)})
		for i := range uint32(20) {
			id := 2*i + 1
			b = append(b, openFrame(id, ChaosWatchProcedure, nil)...)
			b = frame.AppendWindow(b, id, 1<<20)
			b = frame.Append(b, frame.Frame{Type: frame.TypeMessage, StreamID: id, Payload: req})
			b = frame.Append(b, frame.Frame{Type: frame.TypeHalfClose, StreamID: id})
		}
		werr = send(b)
		time.Sleep(20 * time.Millisecond)
		ws.UnderlyingConn().Close() // no close frame
		return res, werr
	case "window-overflow":
		werr = send(append(append(openFrame(1, ChaosTransferProcedure, keyMD), frame.AppendWindow(nil, 1, 0x7fffffff)...), frame.AppendWindow(nil, 1, 0x7fffffff)...))
	}
	if werr != nil {
		return res, nil // the server closed first
	}
	// Wait for the server's answer: a close frame, or the connection
	// closing. Ordinary frames (a RESET of the stream) are read past.
	_ = ws.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				res.CloseCode = ce.Code
			}
			return res, nil
		}
	}
}

// The procedures the hostile peer names.
var (
	ChaosBatchProcedure    = chaosv1.ChaosLedgerServiceBatchProcedure
	ChaosGetProcedure      = chaosv1.ChaosLedgerServiceGetProcedure
	ChaosWatchProcedure    = chaosv1.ChaosLedgerServiceWatchProcedure
	ChaosTransferProcedure = chaosv1.ChaosLedgerServiceTransferProcedure
)
