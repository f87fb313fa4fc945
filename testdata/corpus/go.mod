// The corpus module: real-world protos generated with buf and protoc,
// built, vetted and served by run.sh. It is a module of its own, like a
// user repository, so that grpc-go stays out of tether's go.mod.
module github.com/tetherrpc/tether/testdata/corpus

go 1.26.0

require (
	github.com/tetherrpc/tether v0.0.0-00010101000000-000000000000
	go.uber.org/goleak v1.3.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/cenkalti/backoff/v4 v4.3.0 // indirect
	github.com/gorilla/websocket v1.5.3 // indirect
	github.com/stretchr/testify v1.10.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
)

replace github.com/tetherrpc/tether => ../..
