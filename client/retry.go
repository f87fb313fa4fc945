package client

import (
	"time"

	"github.com/tetherrpc/tether"
)

// RetryPolicy says how a method's calls are retried and what happens to a
// call that exhausts its attempts. Generated code fills it from the method's
// (tether.v1.retry) option; a call can override it with WithRetryPolicy.
type RetryPolicy struct {
	// MaxAttempts counts the first attempt too; 1 disables retries.
	MaxAttempts int
	// InitialBackoff, MaxBackoff and BackoffMultiplier shape the jittered
	// delay between attempts.
	InitialBackoff    time.Duration
	MaxBackoff        time.Duration
	BackoffMultiplier float64
	// RetryableCodes are retried once the request has reached the server.
	RetryableCodes []tether.Code
	// DeadLetter parks a call that exhausts its attempts in the client's
	// dead-letter queue.
	DeadLetter bool
}
