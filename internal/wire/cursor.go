package wire

import (
	"encoding/binary"
	"errors"
)

// MaxCursor bounds the application cursor a resumable server stream attaches
// to a message (docs/PROTOCOL.md, "Resumable streams").
const MaxCursor = 1024

// errCursor reports a MESSAGE payload whose cursor prefix is malformed.
var errCursor = errors.New("malformed cursor prefix")

// AppendCursor appends the cursor prefix of a message (a uvarint length,
// 0 for none, then the cursor) to dst.
func AppendCursor(dst, cursor []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(cursor)))
	return append(dst, cursor...)
}

// SplitCursor splits a MESSAGE payload with a cursor prefix into the cursor
// (nil when the message has none) and the message.
func SplitCursor(b []byte) (cursor, msg []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > MaxCursor || n > uint64(len(b)-k) {
		return nil, nil, errCursor
	}
	if n == 0 {
		return nil, b[k:], nil
	}
	return b[k : k+int(n)], b[k+int(n):], nil
}

// AppendCursorPrefix appends the cursor prefix of a response of a
// client-streaming or bidi stream that restarts from cursors (the stream
// asked for cursors on a method marked (tether.v1.resume_from_cursor)):
// a uvarint H whose bit 0 says the message is a checkpoint (a cursor and no
// application message) and whose other bits are the cursor's length N, then
// the N bytes of cursor and, when N > 0, a uvarint: the number of requests
// the handler had received when it attached the cursor.
func AppendCursorPrefix(dst, cursor []byte, requests uint64, checkpoint bool) []byte {
	h := uint64(len(cursor)) << 1
	if checkpoint {
		h |= 1
	}
	dst = binary.AppendUvarint(dst, h)
	if len(cursor) == 0 {
		return dst
	}
	dst = append(dst, cursor...)
	return binary.AppendUvarint(dst, requests)
}

// SplitCursorPrefix splits a payload that begins with AppendCursorPrefix's
// prefix into the cursor (nil when there is none), the request count that
// goes with it, whether the message is a checkpoint, and the application
// message (nil for a checkpoint). A cursor over MaxCursor bytes, a
// checkpoint without a cursor or with bytes after its prefix, and a
// truncated prefix are malformed.
func SplitCursorPrefix(b []byte) (cursor []byte, requests uint64, checkpoint bool, msg []byte, err error) {
	h, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, 0, false, nil, errCursor
	}
	b = b[k:]
	n, checkpoint := h>>1, h&1 == 1
	if n > MaxCursor || n > uint64(len(b)) || checkpoint && n == 0 {
		return nil, 0, false, nil, errCursor
	}
	if n == 0 {
		return nil, 0, false, b, nil
	}
	cursor, b = b[:n], b[n:]
	requests, k = binary.Uvarint(b)
	if k <= 0 {
		return nil, 0, false, nil, errCursor
	}
	b = b[k:]
	if checkpoint {
		if len(b) > 0 {
			return nil, 0, false, nil, errCursor
		}
		b = nil
	}
	return cursor, requests, checkpoint, b, nil
}
