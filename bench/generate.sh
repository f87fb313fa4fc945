#!/usr/bin/env bash
# generate.sh regenerates bench/gen from bench/proto: protobuf messages
# (protoc-gen-go), tether handlers and clients (protoc-gen-go-tether, built
# from this repository), grpc-go services (protoc-gen-go-grpc, in the
# subpackage benchv1grpc), connect-go handlers and clients
# (protoc-gen-connect-go, in benchv1connect) and drpc services
# (protoc-gen-go-drpc, in benchv1drpc). buf and the plugins build from the
# versions pinned in tools/go.mod, so only Go is needed. Run it from anywhere.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

buf() { go tool -modfile=tools/go.mod buf "$@"; }

buf lint bench
buf generate bench --template bench/buf.gen.yaml
