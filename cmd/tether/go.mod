module github.com/tetherrpc/tether/cmd/tether

go 1.26.0

require (
	github.com/bufbuild/protocompile v0.14.1
	github.com/tetherrpc/tether v0.0.0
	go.uber.org/goleak v1.3.0
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/cenkalti/backoff/v4 v4.3.0 // indirect
	github.com/gorilla/websocket v1.5.3 // indirect
	go.etcd.io/bbolt v1.4.3 // indirect
	golang.org/x/sync v0.10.0 // indirect
	golang.org/x/sys v0.29.0 // indirect
)

// Develop against the tether in this repository. The command lives apart from
// the core so that the core's go.mod never requires what only the command
// links (bufbuild/protocompile, for --proto).
replace github.com/tetherrpc/tether => ../..
