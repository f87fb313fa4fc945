package mux

import (
	"errors"
	"fmt"

	"github.com/tetherrpc/tether"
)

// ErrUnprocessed marks an error of a stream that no application code on the
// peer saw: its OPEN never reached the socket, or the server refused it
// before dispatch (GOAWAY, stream limit). Such a call is always safe to retry.
var ErrUnprocessed = errors.New("the request was not processed by the server")

// unprocessed wraps err so that errors.Is(result, ErrUnprocessed) holds and
// the tether code is kept.
func unprocessed(err error) error {
	e := tether.AsError(err)
	return tether.NewError(e.Code(), &unprocessedError{e})
}

type unprocessedError struct{ err *tether.Error }

func (u *unprocessedError) Error() string { return u.err.Message() }
func (u *unprocessedError) Unwrap() []error {
	if inner := u.err.Unwrap(); inner != nil {
		return []error{ErrUnprocessed, inner}
	}
	return []error{ErrUnprocessed}
}

// protocolError is a violation of the wire protocol by the peer; it closes
// the connection with WebSocket close code 1002.
type protocolError struct{ msg string }

func (p *protocolError) Error() string { return "tether: protocol error: " + p.msg }

// floodError is a peer exceeding a frame-rate limit; it closes the
// connection with close code 1008 (policy violation).
type floodError struct{ what string }

func (f *floodError) Error() string { return "tether: flood of " + f.what }

func protoErrf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}
