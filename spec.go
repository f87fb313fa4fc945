package tether

// StreamType says how many messages each side of a call sends.
type StreamType uint8

// The four kinds of call.
const (
	StreamTypeUnary  StreamType = iota // one request, one response
	StreamTypeClient                   // many requests, one response
	StreamTypeServer                   // one request, many responses
	StreamTypeBidi                     // many requests, many responses
)

// String returns "unary", "client_stream", "server_stream" or "bidi_stream".
func (t StreamType) String() string {
	switch t {
	case StreamTypeUnary:
		return "unary"
	case StreamTypeClient:
		return "client_stream"
	case StreamTypeServer:
		return "server_stream"
	case StreamTypeBidi:
		return "bidi_stream"
	}
	return "unknown"
}

// IdempotencyLevel is a method's declared idempotency, from protobuf's
// standard MethodOptions.idempotency_level. The numbers match
// descriptorpb.MethodOptions_IdempotencyLevel.
type IdempotencyLevel uint8

// The idempotency levels.
const (
	IdempotencyUnknown       IdempotencyLevel = 0 // may have side effects; not safe to repeat
	IdempotencyNoSideEffects IdempotencyLevel = 1 // reads only; always safe to repeat
	IdempotencyIdempotent    IdempotencyLevel = 2 // repeating has the same effect as one call
)

// String returns "idempotency_unknown", "no_side_effects" or "idempotent".
func (l IdempotencyLevel) String() string {
	switch l {
	case IdempotencyNoSideEffects:
		return "no_side_effects"
	case IdempotencyIdempotent:
		return "idempotent"
	}
	return "idempotency_unknown"
}

// Spec describes a procedure: its full name, kind of call and idempotency.
type Spec struct {
	// Procedure is the full name, "/package.Service/Method".
	Procedure string
	// StreamType is the kind of call.
	StreamType StreamType
	// IdempotencyLevel is the method's declared idempotency.
	IdempotencyLevel IdempotencyLevel
	// ResumeFromCursor is the method's (tether.v1.resume_from_cursor)
	// option: its resumable client-streaming and bidi streams restart on a
	// server that does not hold them from the cursor the handler attached
	// last (docs/PROTOCOL.md, "Resumable streams"). Client and server must
	// agree on it: a server refuses cursors on a procedure whose Spec does
	// not have it. Server streams restart from cursors whether it is set or
	// not.
	ResumeFromCursor bool
}

// Reserved metadata keys.
const (
	// MetadataIdempotencyKey carries the idempotency key of a logical call; it
	// stays the same across retries and dead-letter replays.
	MetadataIdempotencyKey = "tether-idempotency-key"
	// MetadataAttempt carries the attempt number (1 for the first attempt).
	MetadataAttempt = "tether-attempt"
)

// Subprotocol is the WebSocket subprotocol of this version of the wire
// protocol, negotiated with Sec-WebSocket-Protocol.
const Subprotocol = "tether.v1"
