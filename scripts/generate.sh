#!/usr/bin/env bash
# generate.sh regenerates the Go code in gen/ from the .proto files in proto/,
# and the descriptor set that protoc-gen-go-tether's golden tests read.
#
# buf, protoc-gen-go and protoc-gen-go-tether all build from this module's
# pinned versions (see buf.gen.yaml and tools/go.mod), so only Go is needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

buf() { go tool -modfile=tools/go.mod buf "$@"; }

buf generate

# The generator's test protos import tether/v1/tether.proto, so they are
# compiled as a second module next to proto/. Source info is kept: the golden
# files carry the comments. After changing them, update the golden files with
#   go test ./cmd/protoc-gen-go-tether -update
testdata=cmd/protoc-gen-go-tether/testdata
buf build . \
  --config '{"version": "v2", "modules": [{"path": "proto"}, {"path": "'"$testdata"'/proto"}]}' \
  --path "$testdata/proto/tethertest" \
  --as-file-descriptor-set \
  -o "$testdata/tethertest.binpb"
