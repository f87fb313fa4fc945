module github.com/tetherrpc/tether/contrib/telemetrytest

go 1.26.0

require (
	github.com/prometheus/client_golang v1.25.0
	github.com/tetherrpc/tether v0.0.0
	github.com/tetherrpc/tether/contrib/otel v0.0.0
	github.com/tetherrpc/tether/contrib/prometheus v0.0.0
	go.opentelemetry.io/otel v1.47.0
	go.opentelemetry.io/otel/sdk v1.47.0
	go.opentelemetry.io/otel/trace v1.47.0
	go.uber.org/goleak v1.3.0
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cenkalti/backoff/v4 v4.3.0 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/go-logr/logr v1.4.4 // indirect
	github.com/go-logr/stdr v1.2.2 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/gorilla/websocket v1.5.3 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/pandatix/go-abnf v0.5.3 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.73.1 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	go.opentelemetry.io/auto/sdk v1.2.1 // indirect
	go.opentelemetry.io/otel/log v1.47.0 // indirect
	go.opentelemetry.io/otel/metric v1.47.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

// The acceptance test of issue 14 item 7 needs both integrations; it lives
// in a module of its own so that neither depends on the other.
replace (
	github.com/tetherrpc/tether => ../..
	github.com/tetherrpc/tether/contrib/otel => ../otel
	github.com/tetherrpc/tether/contrib/prometheus => ../prometheus
)
