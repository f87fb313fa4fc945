// Package telemetrytest holds the acceptance test of tether's telemetry:
// contrib/prometheus, contrib/otel and interceptors/logging installed
// together, as an operator would, checked through a scrape of /metrics, the
// OpenTelemetry SDK's in-memory exporter and the JSON log. It has no code
// of its own.
package telemetrytest
