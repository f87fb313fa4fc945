package dlq

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Entry is one dead-lettered call.
type Entry struct {
	// ID identifies the entry in its store. Put assigns it when it is
	// empty; see the package documentation for the format.
	ID string
	// Procedure is the call's full name, "/pkg.Service/Method".
	Procedure string
	// Request is the protobuf-encoded request message.
	Request []byte
	// Metadata is the request metadata the call was sent with.
	Metadata map[string][]string
	// IdempotencyKey is the key the call was sent with. Replay sends it
	// again under IdempotencyKeyHeader.
	IdempotencyKey string
	// Attempts is how many times the call was tried before it was
	// dead-lettered.
	Attempts int
	// LastCode is the tether status code of the last attempt (a
	// tether.Code), and LastError its error message.
	LastCode  uint32
	LastError string
	// FirstAttempt is when the first attempt started. DeadLettered is when
	// the call was written to the queue; Put sets it to the current time
	// when it is zero.
	FirstAttempt time.Time
	DeadLettered time.Time
	// Replays counts the failed replays of the entry. LastReplay is when
	// the last of them ran and LastReplayError is its error. (A successful
	// replay deletes the entry.)
	Replays         int
	LastReplay      time.Time
	LastReplayError string
	// ServerStreaming marks a server-streaming call (one request, a stream
	// of responses). Replay reads its responses to the end, through an
	// Invoker that is also a StreamInvoker.
	ServerStreaming bool
}

// Clone returns a deep copy of e.
func (e *Entry) Clone() *Entry {
	if e == nil {
		return nil
	}
	c := *e
	c.Request = bytes.Clone(e.Request)
	c.Metadata = cloneMetadata(e.Metadata)
	return &c
}

func cloneMetadata(md map[string][]string) map[string][]string {
	if md == nil {
		return nil
	}
	out := make(map[string][]string, len(md))
	for k, v := range md {
		out[k] = append([]string(nil), v...)
	}
	return out
}

// encodingVersion is the version written in the "v" field of every stored
// entry. An incompatible change to the encoding must increase it; adding an
// optional field need not, because decoding ignores unknown fields.
const encodingVersion = 1

// entryV1 is the stored form of an Entry, version 1.
type entryV1 struct {
	V               int                 `json:"v"`
	ID              string              `json:"id"`
	Procedure       string              `json:"procedure"`
	Request         []byte              `json:"request,omitempty"`
	Metadata        map[string][]string `json:"metadata,omitempty"`
	IdempotencyKey  string              `json:"idempotency_key,omitempty"`
	Attempts        int                 `json:"attempts"`
	LastCode        uint32              `json:"last_code"`
	LastError       string              `json:"last_error,omitempty"`
	FirstAttempt    time.Time           `json:"first_attempt,omitzero"`
	DeadLettered    time.Time           `json:"dead_lettered,omitzero"`
	Replays         int                 `json:"replays,omitempty"`
	LastReplay      time.Time           `json:"last_replay,omitzero"`
	LastReplayError string              `json:"last_replay_error,omitempty"`
	ServerStreaming bool                `json:"server_streaming,omitempty"`
}

// validate reports an entry that must not be stored.
func validate(e *Entry) error {
	switch {
	case e.Procedure == "":
		return errors.New("dlq: entry has no procedure")
	case e.Attempts < 0:
		return fmt.Errorf("dlq: entry has negative attempts (%d)", e.Attempts)
	case e.Replays < 0:
		return fmt.Errorf("dlq: entry has negative replays (%d)", e.Replays)
	}
	for _, t := range [...]time.Time{e.FirstAttempt, e.DeadLettered, e.LastReplay} {
		if y := t.Year(); y < 0 || y > 9999 {
			return fmt.Errorf("dlq: entry has a time outside years 0-9999: %v", t)
		}
	}
	return nil
}

// encodeEntry returns the stored form of e.
func encodeEntry(e *Entry) ([]byte, error) {
	if err := validate(e); err != nil {
		return nil, err
	}
	b, err := json.Marshal(entryV1{
		V:               encodingVersion,
		ID:              e.ID,
		Procedure:       e.Procedure,
		Request:         e.Request,
		Metadata:        e.Metadata,
		IdempotencyKey:  e.IdempotencyKey,
		Attempts:        e.Attempts,
		LastCode:        e.LastCode,
		LastError:       e.LastError,
		FirstAttempt:    e.FirstAttempt,
		DeadLettered:    e.DeadLettered,
		Replays:         e.Replays,
		LastReplay:      e.LastReplay,
		LastReplayError: e.LastReplayError,
		ServerStreaming: e.ServerStreaming,
	})
	if err != nil {
		return nil, fmt.Errorf("dlq: encode entry: %w", err)
	}
	return b, nil
}

// decodeEntry parses the stored form of an entry. It returns an error, and
// never panics, for bytes that are not a valid entry of a known version.
func decodeEntry(b []byte) (*Entry, error) {
	// Read the version first, so that an entry written by a newer,
	// incompatible encoding is reported as such rather than as whatever
	// type mismatch its fields would cause.
	var head struct {
		V *json.RawMessage `json:"v"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("dlq: decode entry: %w", err)
	}
	if head.V == nil {
		return nil, errors.New("dlq: decode entry: no version field")
	}
	v, err := strconv.Atoi(string(*head.V))
	if err != nil {
		return nil, fmt.Errorf("dlq: decode entry: bad version %.20q", *head.V)
	}
	if v != encodingVersion {
		return nil, fmt.Errorf("dlq: decode entry: unsupported encoding version %d (this build reads version %d)", v, encodingVersion)
	}
	var s entryV1
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("dlq: decode entry: %w", err)
	}
	e := &Entry{
		ID:              s.ID,
		Procedure:       s.Procedure,
		Request:         s.Request,
		Metadata:        s.Metadata,
		IdempotencyKey:  s.IdempotencyKey,
		Attempts:        s.Attempts,
		LastCode:        s.LastCode,
		LastError:       s.LastError,
		FirstAttempt:    s.FirstAttempt,
		DeadLettered:    s.DeadLettered,
		Replays:         s.Replays,
		LastReplay:      s.LastReplay,
		LastReplayError: s.LastReplayError,
		ServerStreaming: s.ServerStreaming,
	}
	// Empty and absent are the same thing; keep one form of each so that
	// an entry compares equal to itself after a round trip.
	if len(e.Request) == 0 {
		e.Request = nil
	}
	if len(e.Metadata) == 0 {
		e.Metadata = nil
	}
	if err := validate(e); err != nil {
		return nil, fmt.Errorf("dlq: decode entry: %w", err)
	}
	return e, nil
}
