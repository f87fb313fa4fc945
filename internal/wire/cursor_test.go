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
