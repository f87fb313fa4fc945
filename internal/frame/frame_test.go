package frame

import (
	"bytes"
	"errors"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	frames := []Frame{
		{Type: TypeOpen, StreamID: 1, Payload: []byte("open")},
		{Type: TypeMessage, Flags: FlagMore, StreamID: 1, Payload: bytes.Repeat([]byte{7}, 300)},
		{Type: TypeMessage, StreamID: 1, Payload: nil},
		{Type: TypeHalfClose, StreamID: 1},
		{Type: TypePing, Flags: FlagAck, Payload: []byte("12345678")},
		{Type: TypeWindow, StreamID: 9, Payload: []byte{0, 1, 0, 0}},
		{Type: TypeGoAway, Payload: []byte{8, 3}},
		{Type: TypeEnd, StreamID: 0xffffffff, Payload: []byte{}},
	}
	var buf []byte
	for _, f := range frames {
		buf = Append(buf, f)
	}
	rest := buf
	for i, want := range frames {
		got, r, err := Parse(rest)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got.Type != want.Type || got.Flags != want.Flags || got.StreamID != want.StreamID || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("frame %d: got %v, want %v", i, got, want)
		}
		rest = r
	}
	if len(rest) != 0 {
		t.Fatalf("%d bytes left over", len(rest))
	}
	if n := WindowIncrement(frames[5]); n != 65536 {
		t.Fatalf("WindowIncrement = %d", n)
	}
	w := AppendWindow(nil, 9, 65536)
	if !bytes.Equal(w, Append(nil, frames[5])) {
		t.Fatalf("AppendWindow differs from Append")
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"short header", []byte{1, 0, 0}, ErrShortHeader},
		{"short payload", AppendHeader(nil, TypeMessage, 0, 1, 5), ErrShortFrame},
		{"too large", AppendHeader(nil, TypeMessage, 0, 1, MaxPayload+1), ErrTooLarge},
		{"ping on stream", Append(nil, Frame{Type: TypePing, StreamID: 1, Payload: make([]byte, 8)}), ErrStreamID},
		{"ping size", Append(nil, Frame{Type: TypePing, Payload: make([]byte, 7)}), ErrPayloadSize},
		{"window on conn", Append(nil, Frame{Type: TypeWindow, Payload: make([]byte, 4)}), ErrStreamID},
		{"window size", Append(nil, Frame{Type: TypeWindow, StreamID: 1, Payload: make([]byte, 3)}), ErrPayloadSize},
		{"window ack size", Append(nil, Frame{Type: TypeWindow, StreamID: 1, Payload: make([]byte, 8)}), ErrPayloadSize},
		{"message on conn", Append(nil, Frame{Type: TypeMessage}), ErrStreamID},
		{"message flags", Append(nil, Frame{Type: TypeMessage, StreamID: 1, Flags: 0x80}), ErrFlags},
		{"open flags", Append(nil, Frame{Type: TypeOpen, StreamID: 1, Flags: 1}), ErrFlags},
		{"goaway on stream", Append(nil, Frame{Type: TypeGoAway, StreamID: 3}), ErrStreamID},
		{"half-close payload", Append(nil, Frame{Type: TypeHalfClose, StreamID: 3, Payload: []byte{1}}), ErrPayloadSize},
	}
	for _, c := range cases {
		if _, _, err := Parse(c.in); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
}

// TestWindowAck: a WINDOW frame of a resumable stream carries the
// acknowledged sequence number after the increment; a plain one carries none.
func TestWindowAck(t *testing.T) {
	b := AppendWindowAck(nil, 7, 4096, 1<<33+5)
	f, rest, err := Parse(b)
	if err != nil || len(rest) != 0 {
		t.Fatalf("Parse: %v, %d left", err, len(rest))
	}
	if n := WindowIncrement(f); n != 4096 {
		t.Errorf("increment = %d, want 4096", n)
	}
	if seq, ok := WindowAck(f); !ok || seq != 1<<33+5 {
		t.Errorf("WindowAck = %d, %v", seq, ok)
	}
	plain, _, _ := Parse(AppendWindow(nil, 7, 4096))
	if _, ok := WindowAck(plain); ok {
		t.Error("a plain WINDOW carries an ack")
	}
}

func TestUnknownTypeIsParsed(t *testing.T) {
	f, _, err := Parse(Append(nil, Frame{Type: 0x42, StreamID: 1, Payload: []byte("x")}))
	if err != nil {
		t.Fatal(err)
	}
	if f.Type.Known() {
		t.Fatal("0x42 should be unknown")
	}
}

// FuzzParse feeds arbitrary WebSocket message bodies to the decoder: it must
// never panic, never read past its input, and every frame it accepts must
// encode back to the same bytes.
func FuzzParse(f *testing.F) {
	f.Add(Append(nil, Frame{Type: TypeOpen, StreamID: 1, Payload: []byte("\n\x10/echo.v1.E/Say")}))
	f.Add(Append(Append(nil, Frame{Type: TypeMessage, StreamID: 1, Flags: FlagMore, Payload: []byte("ab")}), Frame{Type: TypeHalfClose, StreamID: 1}))
	f.Add(Append(nil, Frame{Type: TypePing, Payload: make([]byte, 8)}))
	f.Add(AppendWindow(nil, 3, 1<<20))
	f.Add(AppendWindowAck(nil, 3, 1<<20, 1<<40))
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		rest := b
		for len(rest) > 0 {
			fr, r, err := Parse(rest)
			if err != nil {
				return
			}
			if len(r) >= len(rest) {
				t.Fatalf("Parse made no progress")
			}
			enc := Append(nil, fr)
			if !bytes.Equal(enc, rest[:len(rest)-len(r)]) {
				t.Fatalf("re-encoding differs")
			}
			rest = r
		}
	})
}
