package wire

import (
	"bytes"
	"testing"
)

// TestCursorPrefix: a cursor prefix round-trips, an empty cursor is none,
// and prefixes that are truncated or longer than MaxCursor are refused.
func TestCursorPrefix(t *testing.T) {
	for _, c := range [][]byte{nil, {7}, bytes.Repeat([]byte{1}, MaxCursor)} {
		b := AppendCursor(nil, c)
		b = append(b, "msg"...)
		got, msg, err := SplitCursor(b)
		if err != nil || !bytes.Equal(got, c) || string(msg) != "msg" || (len(c) == 0) != (got == nil) {
			t.Fatalf("cursor of %d bytes: got %d bytes, %q, %v", len(c), len(got), msg, err)
		}
	}
	for _, b := range [][]byte{nil, {0x80}, {5, 1, 2}, AppendCursor(nil, make([]byte, MaxCursor+1))} {
		if _, _, err := SplitCursor(b); err == nil {
			t.Fatalf("SplitCursor(%x...) accepted", b[:min(len(b), 4)])
		}
	}
}

// TestCursorPrefixRequests: the prefix of client-streaming and bidi
// responses round-trips (cursor, request count, checkpoint, message), and
// malformed ones are refused: truncated, a cursor over MaxCursor, a
// checkpoint without a cursor or with a message after it.
func TestCursorPrefixRequests(t *testing.T) {
	for _, c := range []struct {
		cursor     []byte
		requests   uint64
		checkpoint bool
		msg        string
	}{
		{nil, 0, false, "msg"},
		{[]byte{7}, 0, false, "msg"},
		{[]byte{7}, 1 << 40, false, ""},
		{bytes.Repeat([]byte{1}, MaxCursor), 3, true, ""},
	} {
		b := append(AppendCursorPrefix(nil, c.cursor, c.requests, c.checkpoint), c.msg...)
		cursor, requests, checkpoint, msg, err := SplitCursorPrefix(b)
		wantReq := c.requests
		if c.cursor == nil {
			wantReq = 0
		}
		if err != nil || !bytes.Equal(cursor, c.cursor) || (cursor == nil) != (c.cursor == nil) || requests != wantReq ||
			checkpoint != c.checkpoint || string(msg) != c.msg || checkpoint != (msg == nil) {
			t.Fatalf("%+v: got %x %d %v %q %v", c, cursor, requests, checkpoint, msg, err)
		}
	}
	for name, b := range map[string][]byte{
		"empty":                     nil,
		"truncated H":               {0x80},
		"truncated cursor":          {5 << 1, 1, 2},
		"no request count":          {1 << 1, 9},
		"truncated request count":   {1 << 1, 9, 0x80},
		"cursor over MaxCursor":     AppendCursorPrefix(nil, make([]byte, MaxCursor+1), 1, false),
		"checkpoint without cursor": {1},
		"checkpoint with a message": append(AppendCursorPrefix(nil, []byte{1}, 1, true), 'x'),
		"H over the largest cursor": {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
	} {
		if _, _, _, _, err := SplitCursorPrefix(b); err == nil {
			t.Fatalf("%s: SplitCursorPrefix(%x) accepted", name, b)
		}
	}
}

// FuzzCursorPrefix feeds arbitrary payloads to both cursor prefix decoders:
// they never panic, and what they accept encodes back to a payload that
// decodes to the same values.
func FuzzCursorPrefix(f *testing.F) {
	f.Add(AppendCursor(nil, []byte("offset-7")))
	f.Add(append(AppendCursorPrefix(nil, []byte("offset-7"), 12, false), "msg"...))
	f.Add(AppendCursorPrefix(nil, []byte{1, 2, 3}, 1<<63, true))
	f.Add([]byte{0})
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		if cursor, msg, err := SplitCursor(b); err == nil {
			c2, m2, err := SplitCursor(append(AppendCursor(nil, cursor), msg...))
			if err != nil || !bytes.Equal(c2, cursor) || !bytes.Equal(m2, msg) {
				t.Fatalf("SplitCursor round trip: %v", err)
			}
		}
		cursor, requests, checkpoint, msg, err := SplitCursorPrefix(b)
		if err != nil {
			return
		}
		if len(cursor) > MaxCursor || checkpoint && (cursor == nil || msg != nil) {
			t.Fatalf("accepted %x: cursor of %d bytes, checkpoint %v, message %x", b, len(cursor), checkpoint, msg)
		}
		c2, r2, k2, m2, err := SplitCursorPrefix(append(AppendCursorPrefix(nil, cursor, requests, checkpoint), msg...))
		if err != nil || !bytes.Equal(c2, cursor) || r2 != requests || k2 != checkpoint || !bytes.Equal(m2, msg) {
			t.Fatalf("SplitCursorPrefix round trip of %x: %v", b, err)
		}
	})
}
