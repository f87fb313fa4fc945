package prometheus

import (
	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/server"
)

// ServerCollector is a prometheus.Collector that reads a server's Stats at
// every scrape. It exports:
//
//	tether_server_connections                gauge: open connections
//	tether_server_active_streams             gauge: calls in flight
//	tether_server_send_queue_bytes           gauge: bytes queued to be written, all connections
//	tether_server_bytes_in_total             counter: WebSocket payload bytes received
//	tether_server_bytes_out_total            counter: WebSocket payload bytes sent
//	tether_server_connections_accepted_total counter: connections accepted
//	tether_server_upgrades_refused_total{reason} counter: upgrades refused (origin, version,
//	                                         unauthenticated, permission_denied, shutting_down,
//	                                         max_connections, max_connections_ip)
type ServerCollector struct {
	srv                                           *server.Server
	conns, streams, queue, in, out, acceptedConns *prom.Desc
	refused                                       *prom.Desc
}

var _ prom.Collector = (*ServerCollector)(nil)

// NewServerCollector returns a collector of srv's Stats. Register it with
// the registry that ServerMetrics is registered with. Only WithConstLabels
// applies.
func NewServerCollector(srv *server.Server, opts ...Option) *ServerCollector {
	cl := newConfig(opts).constLabels
	desc := func(name, help string) *prom.Desc { return prom.NewDesc(name, help, nil, cl) }
	return &ServerCollector{
		srv:           srv,
		conns:         desc("tether_server_connections", "Open tether connections."),
		streams:       desc("tether_server_active_streams", "Tether calls in flight."),
		queue:         desc("tether_server_send_queue_bytes", "Bytes waiting in the tether connections' write queues."),
		in:            desc("tether_server_bytes_in_total", "WebSocket payload bytes received by the tether server."),
		out:           desc("tether_server_bytes_out_total", "WebSocket payload bytes sent by the tether server."),
		acceptedConns: desc("tether_server_connections_accepted_total", "Tether connections accepted."),
		refused:       prom.NewDesc("tether_server_upgrades_refused_total", "WebSocket upgrades the tether server refused, by reason.", []string{"reason"}, cl),
	}
}

// Describe implements prometheus.Collector.
func (c *ServerCollector) Describe(ch chan<- *prom.Desc) {
	for _, d := range []*prom.Desc{c.conns, c.streams, c.queue, c.in, c.out, c.acceptedConns, c.refused} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *ServerCollector) Collect(ch chan<- prom.Metric) {
	st := c.srv.Stats()
	ch <- prom.MustNewConstMetric(c.conns, prom.GaugeValue, float64(st.Connections))
	ch <- prom.MustNewConstMetric(c.streams, prom.GaugeValue, float64(st.ActiveStreams))
	ch <- prom.MustNewConstMetric(c.queue, prom.GaugeValue, float64(st.SendQueueBytes))
	ch <- prom.MustNewConstMetric(c.in, prom.CounterValue, float64(st.BytesIn))
	ch <- prom.MustNewConstMetric(c.out, prom.CounterValue, float64(st.BytesOut))
	ch <- prom.MustNewConstMetric(c.acceptedConns, prom.CounterValue, float64(st.ConnectionsAccepted))
	for reason, n := range st.UpgradesRefused {
		ch <- prom.MustNewConstMetric(c.refused, prom.CounterValue, float64(n), reason)
	}
}

// clientStates are the values of the state label, in client.State order.
var clientStates = []client.State{
	client.StateIdle, client.StateConnecting, client.StateReady,
	client.StateTransientFailure, client.StateClosed,
}

// ClientCollector is a prometheus.Collector that reads a client's Stats at
// every scrape. It exports:
//
//	tether_client_connection_state{state}   gauge: 1 for the current state, 0 for the others
//	tether_client_connect_attempts_total    counter: connection attempts
//	tether_client_connects_total            counter: connections established
//	tether_client_reconnects_total          counter: connections established after the first
//	tether_client_retries_total             counter: call attempts beyond the first
//	tether_client_dead_lettered_total       counter: calls parked in the dead-letter queue
//	tether_client_bytes_in_total            counter: WebSocket payload bytes received
//	tether_client_bytes_out_total           counter: WebSocket payload bytes sent
//
// state is "idle", "connecting", "ready", "transient_failure" or "closed"
// (client.State's names). The byte counters cover every connection the
// client has had, as client.Stats does.
type ClientCollector struct {
	cli                                                 *client.Client
	state, attempts, connects, reconnects, retries, dlq *prom.Desc
	in, out                                             *prom.Desc
}

var _ prom.Collector = (*ClientCollector)(nil)

// NewClientCollector returns a collector of cli's Stats. Register it with
// the registry that ClientMetrics is registered with, with the same
// constant labels. Only WithConstLabels applies.
func NewClientCollector(cli *client.Client, opts ...Option) *ClientCollector {
	cl := newConfig(opts).constLabels
	desc := func(name, help string) *prom.Desc { return prom.NewDesc(name, help, nil, cl) }
	return &ClientCollector{
		cli:        cli,
		state:      prom.NewDesc("tether_client_connection_state", "State of the tether client's connection: 1 for the current state.", []string{"state"}, cl),
		attempts:   desc("tether_client_connect_attempts_total", "Tether connection attempts."),
		connects:   desc("tether_client_connects_total", "Tether connections established."),
		reconnects: desc("tether_client_reconnects_total", "Tether connections established after the first."),
		retries:    desc("tether_client_retries_total", "Tether call attempts beyond the first."),
		dlq:        desc("tether_client_dead_lettered_total", "Tether calls parked in the dead-letter queue."),
		in:         desc("tether_client_bytes_in_total", "WebSocket payload bytes received by the tether client, over every connection it has had."),
		out:        desc("tether_client_bytes_out_total", "WebSocket payload bytes sent by the tether client, over every connection it has had."),
	}
}

// Describe implements prometheus.Collector.
func (c *ClientCollector) Describe(ch chan<- *prom.Desc) {
	for _, d := range []*prom.Desc{c.state, c.attempts, c.connects, c.reconnects, c.retries, c.dlq, c.in, c.out} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *ClientCollector) Collect(ch chan<- prom.Metric) {
	st := c.cli.Stats()
	known := false
	for _, s := range clientStates {
		v := 0.0
		if s == st.State {
			v, known = 1, true
		}
		ch <- prom.MustNewConstMetric(c.state, prom.GaugeValue, v, s.String())
	}
	if !known { // a state newer than this package
		ch <- prom.MustNewConstMetric(c.state, prom.GaugeValue, 1, st.State.String())
	}
	ch <- prom.MustNewConstMetric(c.attempts, prom.CounterValue, float64(st.ConnectAttempts))
	ch <- prom.MustNewConstMetric(c.connects, prom.CounterValue, float64(st.Connects))
	ch <- prom.MustNewConstMetric(c.reconnects, prom.CounterValue, float64(st.Reconnects))
	ch <- prom.MustNewConstMetric(c.retries, prom.CounterValue, float64(st.Retries))
	ch <- prom.MustNewConstMetric(c.dlq, prom.CounterValue, float64(st.DeadLettered))
	ch <- prom.MustNewConstMetric(c.in, prom.CounterValue, float64(st.BytesIn))
	ch <- prom.MustNewConstMetric(c.out, prom.CounterValue, float64(st.BytesOut))
}
