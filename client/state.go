package client

// State is the state of a Client's connection.
type State int32

// The connection states, as in gRPC's connectivity package.
const (
	// StateIdle: no connection and no attempt under way.
	StateIdle State = iota
	// StateConnecting: an attempt is under way.
	StateConnecting
	// StateReady: connected; calls go out at once.
	StateReady
	// StateTransientFailure: the last attempt failed; the next one waits for
	// its backoff delay.
	StateTransientFailure
	// StateClosed: Close was called.
	StateClosed
)

// String returns the state's name.
func (s State) String() string {
	switch s {
	case StateIdle:
		return "idle"
	case StateConnecting:
		return "connecting"
	case StateReady:
		return "ready"
	case StateTransientFailure:
		return "transient_failure"
	case StateClosed:
		return "closed"
	}
	return "unknown"
}
