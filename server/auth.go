package server

import (
	"net/http"
	"strings"
	"time"

	"github.com/tetherrpc/tether"
)

// Identity is what an Authenticator learned about a client.
type Identity struct {
	// Principal identifies the client to handlers and interceptors
	// (Peer.Principal).
	//
	// The server and server/idempotency scope by the principal's value,
	// the same in every process and after a restart: idempotency keys are
	// deduplicated per principal, a resumable stream's token re-attaches
	// only for its principal, and sealed resume cursors cover it. The
	// scope is, in order: nil for every unauthenticated caller; a string
	// as itself; a value with a method PrincipalKey() string by what that
	// returns (the explicit choice: same string for the same caller in
	// every process, different strings for different callers); a
	// fmt.Stringer by its type and String(); any other value by its %#v
	// form, so that a *User (a new pointer for each connection) scopes as
	// the User it points to. A principal that holds a pointer below its top
	// level (a *User whose Org field is an *Org), a channel or a function
	// would scope by address: give it a PrincipalKey method. Until then
	// server/idempotency answers its keyed calls internal without running
	// them, and its resumable streams re-attach and restart only with the
	// very same principal value.
	//
	// Resumable-stream tokens, resume cursor seals and server/ratelimit's
	// per-principal buckets use the same rules with two differences: a
	// String method is not used (it is often a display name or a redacted
	// form that several callers share), and the value's type is part of
	// the scope (UserID(5) and ServiceID(5) are two callers). Principals
	// that are printed to be keyed cost microseconds per call where a
	// limiter keys them; a PrincipalKey method is both explicit and cheap.
	Principal any
	// Expires, when not zero, is when the credentials stop being valid: the
	// connection is closed then with close code 1008.
	Expires time.Time
}

// Authenticator checks a handshake request. It returns an error to refuse
// the connection: 401 Unauthorized, or 403 Forbidden for an error whose
// code is tether.CodePermissionDenied. The error's message is sent to the
// client, so it must not leak secrets.
type Authenticator func(r *http.Request) (Identity, error)

// BearerToken returns an Authenticator for "Authorization: Bearer <token>"
// headers (or, for browsers, which cannot set headers on a WebSocket, the
// "access_token" query parameter). validate checks the token.
func BearerToken(validate func(r *http.Request, token string) (Identity, error)) Authenticator {
	return func(r *http.Request) (Identity, error) {
		token := ""
		if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			token = strings.TrimSpace(h[7:])
		} else {
			token = r.URL.Query().Get("access_token")
		}
		if token == "" {
			return Identity{}, tether.Errorf(tether.CodeUnauthenticated, "missing bearer token")
		}
		return validate(r, token)
	}
}
