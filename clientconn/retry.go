package clientconn

import (
	"time"

	"github.com/tetherrpc/tether"
)

// RetryPolicy says how a method's calls are retried and what happens to a
// call that exhausts its attempts. Generated code fills it from the method's
// (tether.v1.retry) option; client.WithDefaultRetryPolicy sets one for
// methods that declare none, and client.WithRetryPolicy overrides it for one
// call. *client.Client follows it; another Conn may ignore it. Zero fields
// take the defaults documented on each field.
//
// Whatever the policy, a request that never reached the server (its OPEN was
// never written, or the server refused it before dispatch) is retried
// transparently. Once a request has reached the server, it is retried only
// if the method is safe to repeat — idempotency_level NO_SIDE_EFFECTS or
// IDEMPOTENT — or declares a retry policy, which asserts that the server
// deduplicates repeated calls by their idempotency key.
//
// Streaming calls follow the policy until their first response message has
// been delivered; after that they are committed and not retried. A
// server-streaming call keeps its one request for the retries and for the
// dead-letter queue; a client-streaming or bidi call keeps up to
// client.RetryBufferSize bytes of the requests it sent, and is committed
// past that.
type RetryPolicy struct {
	// MaxAttempts counts the first attempt too (default 3 for methods that
	// are safe to repeat or declare a policy, 1 otherwise). Transparent
	// retries of unprocessed requests do not count.
	MaxAttempts int
	// InitialBackoff is the delay before the first retry (default 100ms);
	// each delay is drawn at random from [0, d] ("full jitter").
	InitialBackoff time.Duration
	// MaxBackoff caps the delay (default 5s).
	MaxBackoff time.Duration
	// BackoffMultiplier grows the delay after each attempt (default 2).
	BackoffMultiplier float64
	// RetryableCodes are retried once the request has reached the server
	// (default: unavailable, plus aborted for methods that are safe to
	// repeat). resource_exhausted is not retried by default: a limit that
	// refused a request (size, metadata) refuses it again; add it for
	// methods whose server answers it for load shedding.
	RetryableCodes []tether.Code
	// DeadLetter parks a call that still failed to be delivered after its
	// attempts in the client's dead-letter queue
	// (client.WithDeadLetterQueue); the caller's error then satisfies
	// errors.Is(err, client.ErrDeadLettered). It
	// applies to unary and server-streaming calls (one that failed before
	// its first response): a client-streaming or bidi call is never parked.
	DeadLetter bool
}
