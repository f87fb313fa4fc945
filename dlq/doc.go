// Package dlq is tether's dead-letter queue: a durable store for calls that
// exhausted their retries, and the means to replay them later.
//
// When a method's retry policy asks for it, the client writes a call that
// ran out of attempts to a Store before it answers the caller, so that the
// call is not lost when the process exits. An operator (or a program) can
// then inspect the queue, replay an entry once the server is healthy again,
// or purge it. The `tether dlq` command does all of this from a shell.
//
// # Stores
//
// OpenBolt opens the durable store, a single bbolt file: every Put is
// committed and fsynced before it returns, so an entry survives a crash or a
// SIGKILL of the process right after Put. bbolt takes an exclusive lock on
// the file, so only one process (one open handle) may use it at a time; a
// second open waits for the lock timeout (one second by default) and fails
// with ErrLocked.
//
// NewMemoryStore returns a store that lives in memory only. It is for tests
// and for programs that explicitly opt out of durability: its entries are
// lost when the process exits.
//
// # IDs
//
// An entry's ID is its key in the store. IDs assigned by a store are the
// store's sequence number written as 20 decimal digits with leading zeros
// ("00000000000000000042"), so that the byte order of IDs is the order in
// which the entries were written, and List returns the oldest entry first.
// An ID is never handed out twice by the same store, even after its entry is
// deleted or purged.
//
// # Encoding
//
// A stored entry is a JSON object with a version field, "v":1, and
// snake_case field names; the request bytes are base64 as encoding/json
// writes []byte. Decoding never panics: a value that is not a valid version 1
// entry is reported as an error that names the entry's ID.
//
// # Replay
//
// The store does not know how to make a call. Replay and ReplayAll take an
// Invoker, which the client package implements, send each entry's request
// with its original metadata and idempotency key (under
// IdempotencyKeyHeader, so a server that did see the call once can
// deduplicate it), delete the entries whose replay succeeds and record the
// failure on the ones whose replay fails. A server deduplicates per
// authenticated principal, within its cache's TTL: replay through a client
// that authenticates as the original caller did (for the tether client, its
// handshake credentials), or the handler runs again.
package dlq
