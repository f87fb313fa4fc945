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
	// UpgradesRefused counts the WebSocket upgrades the server refused
	// since it started, by reason (every Refusal* reason is present, 0 or
	// more). Each refusal is also logged at Info ("tether upgrade refused").
	UpgradesRefused map[string]uint64
}

// Reasons for refusing an upgrade, the keys of Stats.UpgradesRefused.
const (
	RefusalOrigin           = "origin"             // 403: the Origin is not allowed (WithAllowedOrigins)
	RefusalVersion          = "version"            // 400 (or close code 4400): no tether.v1 subprotocol offered
	RefusalUnauthenticated  = "unauthenticated"    // 401 (or 4401): the Authenticator refused the credentials
	RefusalPermissionDenied = "permission_denied"  // 403 (or 4403): the Authenticator refused with permission_denied
	RefusalShuttingDown     = "shutting_down"      // 503: Shutdown or Close began
	RefusalMaxConnections   = "max_connections"    // 503: WithMaxConnections reached
	RefusalMaxPerIP         = "max_connections_ip" // 429: WithMaxConnectionsPerIP reached
)

// refusalReasons lists the reasons, in the order of refusalCounts.
var refusalReasons = [...]string{RefusalOrigin, RefusalVersion, RefusalUnauthenticated, RefusalPermissionDenied, RefusalShuttingDown, RefusalMaxConnections, RefusalMaxPerIP}

// refusalCounts counts refused upgrades by reason (index in refusalReasons).
type refusalCounts [len(refusalReasons)]atomic.Uint64

type counters struct {
	accepted       atomic.Uint64
	aged           atomic.Uint64
	bytesInClosed  atomic.Uint64
	bytesOutClosed atomic.Uint64
	refused        refusalCounts
}

// Stats returns a snapshot of the server's activity.
func (s *Server) Stats() Stats {
	st := Stats{
		ConnectionsAccepted: s.counters.accepted.Load(),
		ConnectionsAgedOut:  s.counters.aged.Load(),
		BytesIn:             s.counters.bytesInClosed.Load(),
		BytesOut:            s.counters.bytesOutClosed.Load(),
		UpgradesRefused:     make(map[string]uint64, len(refusalReasons)),
	}
	for i, r := range refusalReasons {
		st.UpgradesRefused[r] = s.counters.refused[i].Load()
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
