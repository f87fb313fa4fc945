package client

import "sync/atomic"

// Stats is a snapshot of a client's activity, for metrics.
type Stats struct {
	// State is the connection state now.
	State State
	// ConnectAttempts counts connection attempts; Connects counts the ones
	// that succeeded. Reconnects is Connects minus the first.
	ConnectAttempts, Connects, Reconnects uint64
	// Retries counts attempts beyond the first of every call.
	Retries uint64
	// DeadLettered counts calls parked in the dead-letter queue.
	DeadLettered uint64
	// BytesIn and BytesOut count WebSocket payload bytes since the client
	// started, over every connection it has had: the closed ones, the
	// current one and the ones still draining. They never decrease.
	BytesIn, BytesOut uint64
}

type clientCounters struct {
	attempts, connects, retries, deadLettered atomic.Uint64
	// The totals of the connections that have closed, moved there (under
	// Client.mu) when a connection leaves Client.conns.
	bytesInClosed, bytesOutClosed atomic.Uint64
}

// Stats returns a snapshot of the client's activity.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	st := Stats{State: c.state}
	// Every open connection counts, draining ones too, and a closing one
	// moves its totals to the closed counters under mu: each byte is
	// counted once, and the sums never go down.
	st.BytesIn = c.counters.bytesInClosed.Load()
	st.BytesOut = c.counters.bytesOutClosed.Load()
	for conn := range c.conns {
		st.BytesIn += conn.BytesIn()
		st.BytesOut += conn.BytesOut()
	}
	c.mu.Unlock()
	st.ConnectAttempts = c.counters.attempts.Load()
	st.Connects = c.counters.connects.Load()
	if st.Connects > 0 {
		st.Reconnects = st.Connects - 1
	}
	st.Retries = c.counters.retries.Load()
	st.DeadLettered = c.counters.deadLettered.Load()
	return st
}
