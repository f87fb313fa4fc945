// Package chaos is tether's randomized fault checker, in the spirit of
// Jepsen: clients make a seeded mix of every call kind against a ledger
// whose effects are logged with their keys, while a seeded scheduler
// injects faults; at the end the clients' histories, the replayed
// dead-letter queues and the server's effect log are checked against the
// delivery promise (docs/DELIVERY.md, "How the promise is tested").
//
// The service is tether.testing.chaos.v1.ChaosLedgerService
// (proto/tether/testing/chaos/v1/chaos.proto): Credit (side effects,
// deduplicated by idempotency key, dead-lettered), Put (IDEMPOTENT), Get
// (NO_SIDE_EFFECTS), Watch (server stream), Batch (client stream, one effect
// per call key) and Transfer (bidi, one effect per request). The handler,
// Ledger, stores each effect's key in the same step as the effect
// (EffectLog, an append-only file), so effects are exactly-once across
// restarts and SIGKILL; a handler run that finds its key already applied is
// logged as a rerun, which shows whether the idempotency interceptor let a
// repeat through. Each line carries the server incarnation (epoch) whose
// handler wrote it: a handler of a server closed in process may finish
// after the next one started (Close cancels the handlers' contexts but does
// not wait for them), and its effect belongs to the closed server's cache,
// not the new one's (Effect.Late marks such lines).
//
// Every operation is recorded as invoke -> ok / fail(code) / parked(dead
// letter id) with its key (Op). Client-side faults are drawn per operation
// from the seed: cancels at random points (including a cancel before a
// client stream's request is complete, after which the call must have no
// effect), short deadlines, handler panics before and after the effect,
// slow handlers, slow consumers, streams dropped without Close, the same
// call sent twice at once (a double click). Server-side faults come from
// Schedule: cuts (RST) of every connection or of one, and stalls, through
// internal/faultproxy, graceful restarts (Shutdown, then a new server with a
// fresh idempotency cache on the same port), kills (SIGKILL of the server
// process in TestChaosProcess; Close in TestChaos), and a hostile raw
// WebSocket peer on the same server sending oversized and malformed frames
// (Hostile).
//
// Check states what is checked. On top of it the test checks that no
// stream is left open on the server, that goroutines are back to the
// baseline (goleak) and that the heap stays within a stated bound.
//
// Run it with
//
//	go test -race ./internal/chaos -run TestChaos
//
// TestChaos runs the fixed seeds 1, 2, 3 and one random seed (printed) with
// in-process clients and server; TestChaosProcess runs the server as a
// separate process (SIGKILL) and one client as a separate process. Flags:
//
//	-chaos.seed N               run only seed N (a failure prints the command)
//	-chaos.duration D           TestChaos: total load time over its seeds (default 10s)
//	-chaos.process.duration D   TestChaosProcess: load time (default 4s)
//	-chaos.disable k1,k2        fault kinds or hostile attacks not to inject (e.g. abandon,kill,half-close-mid-message)
//	-chaos.cache small|big|seed the server's idempotency cache: twice as many keys as callers (at
//	                            least 16), 256 B a key, 1 s TTL (evicts under load), the defaults
//	                            (never evicts in a run), or drawn from the seed
//	-chaos.clients N            TestChaos: in-process clients (default 3)
//	-chaos.workers N            concurrent callers per client (default 3)
//	-chaos.history              log every operation
//
// A long local soak:
//
//	go test -race ./internal/chaos -run 'TestChaos$' -chaos.duration=10m -timeout=30m
//
// The same seed makes the same schedule and the same operations (each
// worker draws from its own source before each call); the interleaving of
// calls and faults still depends on timing, so a rerun replays the schedule,
// not the exact history.
package chaos
