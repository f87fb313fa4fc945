package tether

import (
	"fmt"
	"strconv"
	"strings"
)

// Code is a status code. Codes have the same names, numbers and meanings as
// gRPC's, so that a tether error maps one to one onto a gRPC status.
type Code uint32

// The status codes, numbered as in gRPC.
const (
	CodeOK                 Code = 0  // Not an error.
	CodeCanceled           Code = 1  // The caller canceled the call.
	CodeUnknown            Code = 2  // An error with no better code.
	CodeInvalidArgument    Code = 3  // The request is invalid whatever the server's state.
	CodeDeadlineExceeded   Code = 4  // The deadline passed before the call finished.
	CodeNotFound           Code = 5  // A requested entity was not found.
	CodeAlreadyExists      Code = 6  // The entity a call tried to create exists.
	CodePermissionDenied   Code = 7  // The caller may not do this.
	CodeResourceExhausted  Code = 8  // A limit or quota was reached.
	CodeFailedPrecondition Code = 9  // The system is not in a state to do this.
	CodeAborted            Code = 10 // The operation was aborted, typically by a conflict.
	CodeOutOfRange         Code = 11 // An argument is out of the valid range.
	CodeUnimplemented      Code = 12 // The procedure is not implemented or not served.
	CodeInternal           Code = 13 // An invariant was broken; a bug.
	CodeUnavailable        Code = 14 // The service is unavailable for now; retry may help.
	CodeDataLoss           Code = 15 // Unrecoverable data loss or corruption.
	CodeUnauthenticated    Code = 16 // The caller has no valid credentials.
)

var codeNames = [...]string{
	"ok", "canceled", "unknown", "invalid_argument", "deadline_exceeded",
	"not_found", "already_exists", "permission_denied", "resource_exhausted",
	"failed_precondition", "aborted", "out_of_range", "unimplemented",
	"internal", "unavailable", "data_loss", "unauthenticated",
}

// String returns the code's snake_case name, as connect and gRPC's JSON
// mapping spell it (for example "deadline_exceeded").
func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "code_" + strconv.FormatUint(uint64(c), 10)
}

// MarshalText implements encoding.TextMarshaler.
func (c Code) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler. It accepts the names
// String returns, gRPC's upper-case names and "code_N".
func (c *Code) UnmarshalText(b []byte) error {
	s := strings.ToLower(string(b))
	s = strings.TrimPrefix(s, "code_")
	for i, name := range codeNames {
		if s == name {
			*c = Code(i)
			return nil
		}
	}
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		*c = Code(n)
		return nil
	}
	return fmt.Errorf("tether: unknown code %q", b)
}
