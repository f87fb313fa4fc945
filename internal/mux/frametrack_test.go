package mux

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
)

// wsFrame is a server-to-client WebSocket frame: unmasked, with the
// shortest length encoding.
func wsFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	var h []byte
	switch n := len(payload); {
	case n <= 125:
		h = []byte{b0, byte(n)}
	case n <= 0xffff:
		h = []byte{b0, 126, byte(n >> 8), byte(n)}
	default:
		h = binary.BigEndian.AppendUint64([]byte{b0, 127}, uint64(n))
	}
	return append(h, payload...)
}

// wsMaskedFrame is a client-to-server WebSocket frame: masked (with key),
// with the shortest length encoding.
func wsMaskedFrame(fin bool, op byte, payload []byte, key [4]byte) []byte {
	h := wsFrame(fin, op, make([]byte, len(payload)))
	h = h[:len(h)-len(payload)] // the header alone
	h[1] |= 0x80
	f := append(h, key[:]...)
	for i, c := range payload {
		f = append(f, c^key[i%4])
	}
	return f
}

const handshake = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"

// trackEnds feeds b to a new tracker in chunks of at most chunk bytes, as
// Read would (each chunk consumed up to where consume stops), and returns
// the offsets at which the tracker stood at a frame's start, and whether it
// was still following at the end.
func trackEnds(b []byte, chunk int) (ends []int, on bool) {
	return trackEndsWith(newFrameTracker(), b, chunk)
}

// trackEndsWith is trackEnds with the tracker t (a server's, say).
func trackEndsWith(t *frameTracker, b []byte, chunk int) (ends []int, on bool) {
	pos := 0
	for pos < len(b) {
		k := t.consume(b[pos:min(len(b), pos+chunk)])
		if k < 1 {
			panic("consume returned nothing for bytes")
		}
		pos += k
		if t.atFrameStart() {
			ends = append(ends, pos)
		}
	}
	return ends, t.state != trackOff
}

// TestFrameTrackerEnds: whatever the size of the reads, the tracker stops at
// the end of the handshake's response and of every frame (each length
// encoding, control frames between fragments), and nowhere else.
func TestFrameTrackerEnds(t *testing.T) {
	frames := [][]byte{
		wsFrame(true, 2, []byte("hello")),
		wsFrame(true, 2, nil),
		wsFrame(false, 2, bytes.Repeat([]byte{1}, 126)),
		wsFrame(true, 9, []byte("ping")),
		wsFrame(false, 0, bytes.Repeat([]byte{2}, 300)),
		wsFrame(true, 0, bytes.Repeat([]byte{3}, 70000)),
		wsFrame(true, 8, []byte{3, 232}),
	}
	stream := []byte(handshake)
	want := []int{len(handshake)}
	for _, f := range frames {
		stream = append(stream, f...)
		want = append(want, len(stream))
	}
	for _, chunk := range []int{1, 2, 3, 7, 128, 4096, len(stream)} {
		ends, on := trackEnds(stream, chunk)
		if !on || !slices.Equal(ends, want) {
			t.Fatalf("reads of %d: ends %v (following %v), want %v", chunk, ends, on, want)
		}
	}
}

// TestFrameTrackerLost: a header a server must not send (masked, a reserved
// bit or opcode, a control frame fragmented or over 125 bytes, a length
// over 2^63, or a proxy's HTTP text read as a frame) stops the tracking.
func TestFrameTrackerLost(t *testing.T) {
	for name, h := range map[string][]byte{
		"masked":          {0x82, 0x81, 1, 2, 3, 4, 'x'},
		"rsv1":            {0xc2, 1, 'x'},
		"opcode 3":        {0x83, 1, 'x'},
		"opcode 11":       {0x8b, 1, 'x'},
		"fragmented ping": {0x09, 1, 'x'},
		"long close":      {0x88, 126, 0, 126},
		"2^63":            {0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0},
		"proxy text":      []byte("HTTP/1.1 101 Switching Protocols\r\n\r\n"),
	} {
		stream := append([]byte(handshake), wsFrame(true, 2, []byte("ok"))...)
		stream = append(stream, h...)
		if _, on := trackEnds(stream, 1); on {
			t.Errorf("%s: still following", name)
		}
		tr := newFrameTracker()
		tr.state = trackOff
		if tr.messageEnd(h) || tr.consume(h) != len(h) {
			t.Errorf("%s: a lost tracker claims a message or holds bytes back", name)
		}
	}
}

// TestFrameTrackerMessageEnd: messageEnd finds a whole message (control
// frames before it count, a close frame is one) and nothing short of one.
func TestFrameTrackerMessageEnd(t *testing.T) {
	at := newFrameTracker()
	at.consume([]byte(handshake))
	whole := slices.Concat(wsFrame(true, 9, []byte("p")), wsFrame(false, 2, []byte("ab")), wsFrame(true, 10, nil), wsFrame(true, 0, []byte("cd")))
	for i := range len(whole) {
		if at.messageEnd(whole[:i]) {
			t.Fatalf("a message claimed whole in its first %d of %d bytes", i, len(whole))
		}
	}
	if !at.messageEnd(whole) || !at.messageEnd(append(whole, 0x82)) {
		t.Fatal("a whole message not found")
	}
	if !at.messageEnd(wsFrame(true, 8, nil)) {
		t.Fatal("a close frame not taken as a message's end")
	}
	if at.messageEnd(wsFrame(true, 9, nil)) {
		t.Fatal("a lone ping taken as a message")
	}
	mid := *at
	mid.consume([]byte{0x82})
	if mid.messageEnd(wsFrame(true, 2, nil)) {
		t.Fatal("messageEnd answered from inside a frame")
	}
	if at.state != trackHeader || at.n != 0 {
		t.Fatal("messageEnd changed the tracker")
	}
}

// FuzzFrameTracker: for any bytes after a handshake, the tracker stops at the
// same offsets whatever the size of the reads, never holds back bytes it was
// given (consume takes at least one), and agrees with messageEnd.
func FuzzFrameTracker(f *testing.F) {
	f.Add(wsFrame(true, 2, []byte("hi")), uint8(3))
	f.Add(slices.Concat(wsFrame(false, 2, []byte("a")), wsFrame(true, 9, nil), wsFrame(true, 0, bytes.Repeat([]byte{7}, 200))), uint8(1))
	f.Add([]byte{0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0}, uint8(9))
	f.Add([]byte{0x88, 0x81, 0, 0, 0, 0}, uint8(2))
	f.Add(slices.Concat(wsMaskedFrame(false, 2, []byte("a"), [4]byte{9, 8, 7, 6}), wsMaskedFrame(true, 0, bytes.Repeat([]byte{7}, 300), [4]byte{1, 1, 1, 1})), uint8(5))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		// A server's tracker, on the same bytes: the same ends from one
		// read size to another, and messageEnd agreeing with them.
		sByByte, son1 := trackEndsWith(newServerTracker(), data, 1)
		sByChunk, son2 := trackEndsWith(newServerTracker(), data, int(chunk)%64+1)
		if !slices.Equal(sByByte, sByChunk) || son1 != son2 {
			t.Fatalf("server: ends %v (following %v) by byte, %v (%v) by chunks", sByByte, son1, sByChunk, son2)
		}
		swant, sprev := false, 0
		for _, end := range sByByte {
			b0 := data[sprev]
			if op := b0 & 0x0f; (op < 8 && b0&0x80 != 0) || op == 8 {
				swant = true
				break
			}
			sprev = end
		}
		if got := newServerTracker().messageEnd(data); got != swant {
			t.Fatalf("server: messageEnd %v, want %v (ends %v)", got, swant, sByByte)
		}
		stream := append([]byte(handshake), data...)
		byByte, on1 := trackEnds(stream, 1)
		byChunk, on2 := trackEnds(stream, int(chunk)%64+1)
		if !slices.Equal(byByte, byChunk) || on1 != on2 {
			t.Fatalf("ends %v (following %v) by byte, %v (%v) by chunks of %d", byByte, on1, byChunk, on2, int(chunk)%64+1)
		}
		at := newFrameTracker()
		at.consume([]byte(handshake))
		// The reference: walk frame by frame from the tracker's ends.
		want := false
		prev := len(handshake)
		for _, end := range byByte[1:] {
			b0 := stream[prev]
			if op := b0 & 0x0f; (op < 8 && b0&0x80 != 0) || op == 8 {
				want = true
				break
			}
			prev = end
		}
		if got := at.messageEnd(data); got != want {
			t.Fatalf("messageEnd %v, want %v (ends %v)", got, want, byByte)
		}
	})
}

// TestServerTrackerEnds: a server's tracker follows the client's masked
// frames (each length encoding, with the masking key) from the first frame,
// and stops at the end of each whatever the size of the reads.
func TestServerTrackerEnds(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	frames := [][]byte{
		wsMaskedFrame(true, 2, []byte("hello"), key),
		wsMaskedFrame(true, 2, nil, key),
		wsMaskedFrame(false, 2, bytes.Repeat([]byte{1}, 126), key),
		wsMaskedFrame(true, 10, []byte("pong"), key),
		wsMaskedFrame(true, 0, bytes.Repeat([]byte{3}, 70000), key),
		wsMaskedFrame(true, 8, []byte{3, 232}, key),
	}
	var stream []byte
	var want []int
	for _, f := range frames {
		stream = append(stream, f...)
		want = append(want, len(stream))
	}
	for _, chunk := range []int{1, 2, 3, 7, 128, 4096, len(stream)} {
		ends, on := trackEndsWith(newServerTracker(), stream, chunk)
		if !on || !slices.Equal(ends, want) {
			t.Fatalf("reads of %d: ends %v (following %v), want %v", chunk, ends, on, want)
		}
	}
	at := newServerTracker()
	whole := slices.Concat(wsMaskedFrame(false, 2, []byte("ab"), key), wsMaskedFrame(true, 9, nil, key), wsMaskedFrame(true, 0, []byte("cd"), key))
	for i := range len(whole) {
		if at.messageEnd(whole[:i]) {
			t.Fatalf("a message claimed whole in its first %d of %d bytes", i, len(whole))
		}
	}
	if !at.messageEnd(whole) {
		t.Fatal("a whole masked message not found")
	}
	// An unmasked frame is one a client must not send: tracking stops.
	if _, on := trackEndsWith(newServerTracker(), append(wsMaskedFrame(true, 2, []byte("ok"), key), wsFrame(true, 2, []byte("x"))...), 1); on {
		t.Fatal("a server's tracker follows an unmasked frame")
	}
}
