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
