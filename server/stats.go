package server

import "sync/atomic"

// Stats is a snapshot of a server's activity, for metrics and health checks.
type Stats struct {
	// Connections is the number of open connections.
	Connections int
	// ActiveStreams is the number of calls in flight.
	ActiveStreams int
	// SendQueueBytes is the total size of the connections' write queues.
	SendQueueBytes int
	// BytesIn and BytesOut count WebSocket payload bytes since the server
	// started, closed connections included.
	BytesIn, BytesOut uint64
	// ConnectionsAccepted counts upgrades since the server started.
	ConnectionsAccepted uint64
	// ConnectionsAgedOut counts connections drained because they reached
	// the maximum connection age (WithMaxConnectionAge).
	ConnectionsAgedOut uint64
}

type counters struct {
	accepted       atomic.Uint64
	aged           atomic.Uint64
	bytesInClosed  atomic.Uint64
	bytesOutClosed atomic.Uint64
}

// Stats returns a snapshot of the server's activity.
func (s *Server) Stats() Stats {
	st := Stats{
		ConnectionsAccepted: s.counters.accepted.Load(),
		ConnectionsAgedOut:  s.counters.aged.Load(),
		BytesIn:             s.counters.bytesInClosed.Load(),
		BytesOut:            s.counters.bytesOutClosed.Load(),
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	st.Connections = len(s.conns)
	for c := range s.conns {
		st.ActiveStreams += c.ActiveStreams()
		st.SendQueueBytes += c.QueuedBytes()
		st.BytesIn += c.BytesIn()
		st.BytesOut += c.BytesOut()
	}
	return st
}
