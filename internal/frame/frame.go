// Package frame encodes and decodes tether's binary frames (docs/PROTOCOL.md).
//
// A WebSocket binary message carries one or more frames back to back. Each
// frame is a 10-byte header followed by its payload:
//
//	+--------+--------+----------------+----------------+
//	| type 1 | flags 1| stream id 4 BE | length 4 BE    | payload (length bytes)
//	+--------+--------+----------------+----------------+
package frame

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Type is a frame type.
type Type uint8

// Frame types. See docs/PROTOCOL.md for each one's payload and rules.
const (
	TypeOpen      Type = 0x1 // client opens a stream: payload tether.v1.Open
	TypeHeaders   Type = 0x2 // server's response headers: payload tether.v1.Headers
	TypeMessage   Type = 0x3 // a message, or a fragment of one (FlagMore)
	TypeHalfClose Type = 0x4 // the sender will send no more messages on the stream
	TypeEnd       Type = 0x5 // server ends the call: payload tether.v1.End
	TypeReset     Type = 0x6 // either side aborts the stream: payload tether.v1.Reset
	TypeWindow    Type = 0x7 // flow-control credit: payload uint32 BE increment
	TypePing      Type = 0x8 // connection heartbeat: payload 8 opaque bytes
	TypeGoAway    Type = 0x9 // connection drain: payload tether.v1.GoAway
)

// Flags.
const (
	// FlagMore on a MESSAGE frame says the message continues in the next
	// MESSAGE frame of the same stream.
	FlagMore uint8 = 0x1
	// FlagAck on a PING frame marks it as the answer to a PING.
	FlagAck uint8 = 0x1
)

const (
	// HeaderSize is the size of a frame header in bytes.
	HeaderSize = 10
	// MaxPayload is the largest payload a frame may carry in protocol v1.
	MaxPayload = 1 << 16
	// PingPayloadSize is the exact payload size of a PING frame.
	PingPayloadSize = 8
	// WindowPayloadSize is the payload size of a WINDOW frame.
	WindowPayloadSize = 4
	// WindowAckPayloadSize is the payload size of a WINDOW frame that also
	// acknowledges messages of a resumable stream: the increment, then the
	// sequence number of the last message consumed (uint64 BE).
	WindowAckPayloadSize = 12
)

// Decoding errors. All of them are protocol errors: the connection that
// produced them is closed with close code 1002.
var (
	ErrShortHeader = errors.New("tether/frame: truncated frame header")
	ErrShortFrame  = errors.New("tether/frame: payload shorter than its length")
	ErrTooLarge    = errors.New("tether/frame: payload exceeds the frame limit")
	ErrStreamID    = errors.New("tether/frame: stream id not allowed for this frame type")
	ErrPayloadSize = errors.New("tether/frame: wrong payload size for this frame type")
	ErrFlags       = errors.New("tether/frame: flags not defined for this frame type")
)

// Frame is one decoded frame. Payload aliases the buffer it was parsed from.
type Frame struct {
	Type     Type
	Flags    uint8
	StreamID uint32
	Payload  []byte
}

// String describes the frame for logs and test failures.
func (f Frame) String() string {
	return fmt.Sprintf("%s(stream=%d flags=%#x len=%d)", f.Type, f.StreamID, f.Flags, len(f.Payload))
}

// String returns the frame type's name.
func (t Type) String() string {
	switch t {
	case TypeOpen:
		return "OPEN"
	case TypeHeaders:
		return "HEADERS"
	case TypeMessage:
		return "MESSAGE"
	case TypeHalfClose:
		return "HALF_CLOSE"
	case TypeEnd:
		return "END"
	case TypeReset:
		return "RESET"
	case TypeWindow:
		return "WINDOW"
	case TypePing:
		return "PING"
	case TypeGoAway:
		return "GOAWAY"
	}
	return fmt.Sprintf("UNKNOWN_%#x", uint8(t))
}

// Known reports whether t is a frame type of protocol v1. Receivers ignore
// frames of unknown types, so later versions can add types.
func (t Type) Known() bool { return t >= TypeOpen && t <= TypeGoAway }

// AppendHeader appends a frame header to dst.
func AppendHeader(dst []byte, t Type, flags uint8, streamID uint32, length int) []byte {
	return append(dst, byte(t), flags,
		byte(streamID>>24), byte(streamID>>16), byte(streamID>>8), byte(streamID),
		byte(length>>24), byte(length>>16), byte(length>>8), byte(length))
}

// Append appends the encoded frame to dst. It does not validate the frame;
// senders build only valid frames.
func Append(dst []byte, f Frame) []byte {
	dst = AppendHeader(dst, f.Type, f.Flags, f.StreamID, len(f.Payload))
	return append(dst, f.Payload...)
}

// Parse decodes the first frame of b and returns it with the bytes that
// follow it. The frame's payload aliases b. Parse checks everything that can
// be checked without connection state: sizes, stream id zero or not, flags.
func Parse(b []byte) (Frame, []byte, error) {
	if len(b) < HeaderSize {
		return Frame{}, nil, ErrShortHeader
	}
	f := Frame{
		Type:     Type(b[0]),
		Flags:    b[1],
		StreamID: binary.BigEndian.Uint32(b[2:6]),
	}
	n := binary.BigEndian.Uint32(b[6:10])
	if n > MaxPayload {
		return Frame{}, nil, ErrTooLarge
	}
	rest := b[HeaderSize:]
	if uint32(len(rest)) < n {
		return Frame{}, nil, ErrShortFrame
	}
	f.Payload = rest[:n:n]
	if err := validate(f); err != nil {
		return Frame{}, nil, err
	}
	return f, rest[n:], nil
}

func validate(f Frame) error {
	switch f.Type {
	case TypePing:
		if f.StreamID != 0 {
			return ErrStreamID
		}
		if len(f.Payload) != PingPayloadSize {
			return ErrPayloadSize
		}
		if f.Flags&^FlagAck != 0 {
			return ErrFlags
		}
	case TypeGoAway:
		if f.StreamID != 0 {
			return ErrStreamID
		}
		if f.Flags != 0 {
			return ErrFlags
		}
	case TypeWindow:
		if f.StreamID == 0 {
			return ErrStreamID
		}
		if len(f.Payload) != WindowPayloadSize && len(f.Payload) != WindowAckPayloadSize {
			return ErrPayloadSize
		}
		if f.Flags != 0 {
			return ErrFlags
		}
	case TypeMessage:
		if f.StreamID == 0 {
			return ErrStreamID
		}
		if f.Flags&^FlagMore != 0 {
			return ErrFlags
		}
	case TypeOpen, TypeHeaders, TypeEnd, TypeReset:
		if f.StreamID == 0 {
			return ErrStreamID
		}
		if f.Flags != 0 {
			return ErrFlags
		}
	case TypeHalfClose:
		if f.StreamID == 0 {
			return ErrStreamID
		}
		if f.Flags != 0 {
			return ErrFlags
		}
		if len(f.Payload) != 0 {
			return ErrPayloadSize
		}
	}
	return nil
}

// WindowIncrement returns the credit a WINDOW frame grants.
func WindowIncrement(f Frame) uint32 { return binary.BigEndian.Uint32(f.Payload) }

// AppendWindow appends a WINDOW frame granting n bytes of credit on a stream.
func AppendWindow(dst []byte, streamID, n uint32) []byte {
	dst = AppendHeader(dst, TypeWindow, 0, streamID, WindowPayloadSize)
	return binary.BigEndian.AppendUint32(dst, n)
}

// WindowAck returns the acknowledged sequence number a WINDOW frame carries,
// and false for a WINDOW frame without one.
func WindowAck(f Frame) (uint64, bool) {
	if len(f.Payload) != WindowAckPayloadSize {
		return 0, false
	}
	return binary.BigEndian.Uint64(f.Payload[4:]), true
}

// AppendWindowAck appends a WINDOW frame granting n bytes of credit on a
// resumable stream and acknowledging its messages up to sequence number seq.
func AppendWindowAck(dst []byte, streamID, n uint32, seq uint64) []byte {
	dst = AppendHeader(dst, TypeWindow, 0, streamID, WindowAckPayloadSize)
	dst = binary.BigEndian.AppendUint32(dst, n)
	return binary.BigEndian.AppendUint64(dst, seq)
}
