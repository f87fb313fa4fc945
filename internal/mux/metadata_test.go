package mux

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
	"github.com/tetherrpc/tether/internal/wire"
)

// decodedOpenBytes is how many bytes decoding payload as an OPEN and
// turning its metadata into tether.Metadata allocates (what a server holds
// per call), averaged over a few runs.
func decodedOpenBytes(t *testing.T, payload []byte) int {
	t.Helper()
	const runs = 20
	keep := make([]tether.Metadata, runs)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range keep {
		var open tetherv1.Open
		if err := proto.Unmarshal(payload, &open); err != nil {
			t.Fatal(err)
		}
		keep[i] = wire.MetadataFromProto(open.GetMetadata())
	}
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(keep)
	return int(after.TotalAlloc-before.TotalAlloc) / runs
}

// metadataBombs are OPENs within MaxHeaderBytes (16 KiB) and MaxHeaderKeys
// (64 entries) on the wire, shaped to cost the receiver as much memory as
// possible.
func metadataBombs() map[string]*tetherv1.Open {
	one := &tetherv1.MetadataEntry{Key: "k", Values: make([]string, 8000)}
	var many []*tetherv1.MetadataEntry
	for i := range 64 {
		many = append(many, &tetherv1.MetadataEntry{Key: fmt.Sprintf("k%02d", i), Values: make([]string, 120)})
	}
	var tiny []*tetherv1.MetadataEntry
	for i := range 64 {
		tiny = append(tiny, &tetherv1.MetadataEntry{Key: fmt.Sprintf("k%02d", i), Values: strings.Split(strings.Repeat("v", 60), "")})
	}
	bombs := map[string]*tetherv1.Open{
		"one key, 8000 empty values":   {Procedure: "/a/b", Metadata: []*tetherv1.MetadataEntry{one}},
		"64 keys, 120 empty values":    {Procedure: "/a/b", Metadata: many},
		"64 keys, 60 one-byte values":  {Procedure: "/a/b", Metadata: tiny},
		"one key, one 16,000-byte one": {Procedure: "/a/b", Metadata: []*tetherv1.MetadataEntry{{Key: "k", Values: []string{strings.Repeat("v", 16000)}}}},
	}
	// The most values one key, or 64 keys, may carry within the limit as
	// it is counted now (each entry and value 32 bytes on top of its bytes).
	fill := func(keys int) *tetherv1.Open {
		open := &tetherv1.Open{Procedure: "/a/b"}
		for i := range keys {
			open.Metadata = append(open.Metadata, &tetherv1.MetadataEntry{Key: fmt.Sprintf("k%02d", i)})
		}
		for i := 0; ; i++ {
			e := open.Metadata[i%keys]
			e.Values = append(e.Values, "")
			if b, _ := proto.Marshal(open); len(b)+metadataCost(open.Metadata) > DefaultMaxHeaderBytes {
				e.Values = e.Values[:len(e.Values)-1]
				return open
			}
		}
	}
	bombs["one key, empty values up to the limit"] = fill(1)
	bombs["64 keys, empty values up to the limit"] = fill(64)
	return bombs
}

// TestMetadataMemoryBounded (issue 10 item 9): what an OPEN's metadata costs
// the server in memory is bounded, not only its encoded size: an OPEN whose
// decoded metadata would take more than 4 x MaxHeaderBytes is refused with
// RESET resource_exhausted (not unprocessed) before it is decoded, and the
// connection goes on. MaxHeaderKeys counted entries only, so one key with
// 8,000 empty values (16 KB on the wire) was accepted and held 139 KB.
func TestMetadataMemoryBounded(t *testing.T) {
	accepted := make(chan *tetherv1.Open, 1)
	ws, sc := rawPeer(t, Config{Accept: func(s *Stream, open *tetherv1.Open) {
		accepted <- open
		_ = s.Finish(nil, nil)
	}})
	bound := 4 * DefaultMaxHeaderBytes
	id := uint32(1)
	for name, open := range metadataBombs() {
		payload, err := proto.Marshal(open)
		if err != nil {
			t.Fatal(err)
		}
		if len(payload) > DefaultMaxHeaderBytes {
			t.Fatalf("%s: %d bytes; the test wants OPENs within the size limit", name, len(payload))
		}
		writeFrames(t, ws,
			frame.Frame{Type: frame.TypeOpen, StreamID: id, Payload: payload},
			frame.Frame{Type: frame.TypeHalfClose, StreamID: id})
		typ, err := awaitEnd(t, ws, id)
		id += 2
		decoded := decodedOpenBytes(t, payload)
		switch {
		case typ == frame.TypeEnd:
			<-accepted
			t.Logf("%s: %d bytes on the wire, accepted, %d bytes decoded", name, len(payload), decoded)
			if decoded > bound {
				t.Errorf("%s: accepted an OPEN of %d bytes whose metadata takes %d bytes decoded; want at most %d (4 x MaxHeaderBytes)", name, len(payload), decoded, bound)
			}
		case tether.CodeOf(err) == tether.CodeResourceExhausted:
			t.Logf("%s: %d bytes on the wire (%d decoded), refused: %v", name, len(payload), decoded, err)
		default:
			t.Errorf("%s: %v %v; want END or RESET resource_exhausted", name, typ, err)
		}
	}
	if sc.Err() != nil {
		t.Fatalf("connection closed: %v", sc.Err())
	}
}

// awaitEnd reads frames from ws until stream id gets END or RESET, and
// returns which, with the error it carries.
func awaitEnd(t *testing.T, ws *websocket.Conn, id uint32) (frame.Type, error) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("waiting for the end of stream %d: %v", id, err)
		}
		for len(msg) > 0 {
			f, rest, err := frame.Parse(msg)
			if err != nil {
				t.Fatal(err)
			}
			msg = rest
			if f.StreamID != id {
				continue
			}
			switch f.Type {
			case frame.TypeEnd:
				var end tetherv1.End
				_ = proto.Unmarshal(f.Payload, &end)
				return f.Type, wire.ErrorFromStatus(end.GetStatus(), nil)
			case frame.TypeReset:
				var r tetherv1.Reset
				_ = proto.Unmarshal(f.Payload, &r)
				if r.GetUnprocessed() {
					t.Errorf("stream %d refused as unprocessed: a retry would be refused again", id)
				}
				return f.Type, wire.ErrorFromStatus(r.GetStatus(), nil)
			}
		}
	}
}

// TestResponseMetadataMemoryBounded: the same for response headers at the
// client: HEADERS that would cost too much memory reset the stream with
// resource_exhausted.
func TestResponseMetadataMemoryBounded(t *testing.T) {
	headers, _ := proto.Marshal(&tetherv1.Headers{Metadata: []*tetherv1.MetadataEntry{{Key: "k", Values: make([]string, 8000)}}})
	cc := rawServer(t, Config{}, func(ws *websocket.Conn) {
		_, _, _ = ws.ReadMessage() // OPEN
		_ = ws.WriteMessage(websocket.BinaryMessage, frame.Append(nil, frame.Frame{Type: frame.TypeHeaders, StreamID: 1, Payload: headers}))
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
	md, err := s.Header(ctx)
	if err == nil {
		_, err = s.RecvMsg()
	}
	if tether.CodeOf(err) != tether.CodeResourceExhausted {
		t.Fatalf("HEADERS with one key and 8000 empty values (%d bytes): %d values kept, err %v; want resource_exhausted", len(headers), len(md["k"]), err)
	}
}
