package tether

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Error is an RPC error: a Code, a message, optional typed details and, when
// the error came from a server, the call's trailers. Handlers return it to
// choose the code a caller sees; callers reach it with errors.As or CodeOf.
//
// Any other error a handler returns reaches the caller as CodeUnknown with its
// message; a context error becomes CodeCanceled or CodeDeadlineExceeded.
type Error struct {
	code    Code
	err     error
	details []*anypb.Any
	meta    Metadata
}

// NewError returns an error with code c that wraps err. err may be nil.
func NewError(c Code, err error) *Error { return &Error{code: c, err: err} }

// Errorf returns an error with code c and a formatted message.
func Errorf(c Code, format string, args ...any) *Error {
	return &Error{code: c, err: fmt.Errorf(format, args...)}
}

// Error returns "code: message", or only the code when there is no message.
func (e *Error) Error() string {
	msg := e.Message()
	if msg == "" {
		return e.code.String()
	}
	return e.code.String() + ": " + msg
}

// Code returns the error's status code.
func (e *Error) Code() Code { return e.code }

// Message returns the message without the code.
func (e *Error) Message() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}

// Unwrap returns the wrapped error, so errors.Is and errors.As see through
// an Error.
func (e *Error) Unwrap() error { return e.err }

// Is reports whether target is an *Error with the same code and no message:
// errors.Is(err, tether.NewError(tether.CodeNotFound, nil)) tests for a code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.err == nil && len(t.details) == 0 && t.code == e.code
}

// AddDetail attaches a typed detail. An *anypb.Any is attached as it is; any
// other message is packed into one.
func (e *Error) AddDetail(m proto.Message) error {
	if a, ok := m.(*anypb.Any); ok {
		e.details = append(e.details, a)
		return nil
	}
	a, err := anypb.New(m)
	if err != nil {
		return fmt.Errorf("tether: pack error detail: %w", err)
	}
	e.details = append(e.details, a)
	return nil
}

// Details returns the typed details. Unpack one with anypb.UnmarshalTo or
// (*anypb.Any).UnmarshalNew.
func (e *Error) Details() []*anypb.Any { return e.details }

// Meta returns the trailers that came with the error from the server; nil
// for an error made locally. Do not modify it.
func (e *Error) Meta() Metadata { return e.meta }

// WithMeta returns a copy of e that carries md as its trailers.
func (e *Error) WithMeta(md Metadata) *Error {
	c := *e
	c.meta = md
	return &c
}

// CodeOf returns the code of err: CodeOK for nil, the code of an *Error found
// with errors.As, CodeCanceled or CodeDeadlineExceeded for context errors, and
// CodeUnknown otherwise.
func CodeOf(err error) Code {
	if err == nil {
		return CodeOK
	}
	if e, ok := err.(*Error); ok { // the usual case, without errors.As's allocation
		return e.code
	}
	var e *Error
	if errors.As(err, &e) {
		return e.code
	}
	switch {
	case errors.Is(err, context.Canceled):
		return CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return CodeDeadlineExceeded
	}
	return CodeUnknown
}

// AsError converts any error to an *Error, keeping an *Error found with
// errors.As and mapping context errors to their codes. It returns nil for nil.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*Error); ok {
		return e
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{code: CodeOf(err), err: err}
}
