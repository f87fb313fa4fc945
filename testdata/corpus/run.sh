#!/usr/bin/env bash
# run.sh is the corpus test: it generates real-world protos (grpc's health,
# reflection and interop-testing protos, a googleapis subset, connect-go's
# test protos, a route_guide-style user service, and protoc-gen-go-tether's
# edge-case test protos) with buf and with plain protoc, then builds and vets
# all of it, and runs the tests in this module, which serve a few of the
# services over 127.0.0.1 and call them (the route guide with grpc-go and
# tether at once, as in docs/MIGRATING.md).
#
# The corpus is laid out as a user repository that depends on tether's own
# protos (tether/v1) with buf managed mode, as the README shows: its
# buf.gen.yaml is the README's. Run it from anywhere; .ci/run runs it.
#
# protoc comes from the system (Debian: apt-get install protobuf-compiler).
# Without it the protoc half is skipped, except in CI (CI=true), where it
# fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=$(cd ../.. && pwd)

step() { printf -- '-- corpus: %s\n' "$*"; }

# The plugins and buf, built from the repository (tools/go.mod pins buf,
# protoc-gen-go and protoc-gen-go-grpc), on PATH as a user would have them.
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
(
	cd "$root"
	go build -o "$bin/" ./cmd/protoc-gen-go-tether
	go build -modfile=tools/go.mod -o "$bin/" github.com/bufbuild/buf/cmd/buf \
		google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
)
export PATH="$bin:$PATH"

step "the README's buf.gen.yaml is this one"
readme_yaml=$(sed -n '/checks that this is testdata\/corpus\/buf.gen.yaml/,/^```$/p' "$root/README.md" |
	sed '1,2d;$d' | sed 's|github.com/you/repo/gen|github.com/tetherrpc/tether/testdata/corpus/gen|')
if [ "$readme_yaml" != "$(cat buf.gen.yaml)" ]; then
	echo "README.md's buf.gen.yaml differs from testdata/corpus/buf.gen.yaml:" >&2
	diff <(echo "$readme_yaml") buf.gen.yaml >&2 || true
	exit 1
fi

step "tether's protos from the Go module cache into third_party/tether (the README's command)"
rm -rf third_party
mkdir -p third_party/tether
cp -r "$(go list -m -f '{{.Dir}}' github.com/tetherrpc/tether)/proto/tether" third_party/tether/
chmod -R u+w third_party

step "the generator's edge-case protos into proto/edge"
rm -rf proto/edge
mkdir -p proto/edge
cp -r "$root/cmd/protoc-gen-go-tether/testdata/proto/tethertest" proto/edge/
# Those fail generation on purpose (tether's retry option checks), and those
# import tether/v1, which the route guide covers: the rest is a buf module of
# its own, outside this workspace, generated without grpc-go below.
rm -rf proto/edge/tethertest/invalid proto/edge/tethertest/v1 proto/edge/tethertest/editions
echo 'version: v2' >proto/edge/buf.yaml

rm -rf gen genprotoc

step "buf generate (buf.gen.yaml: the README's, managed mode, with grpc-go and package_suffix)"
buf generate

# grpc-go's generator fails on some edge cases (the table in issue 17), so
# they are generated without it, into the messages' package: the harder case
# for tether's names.
step "buf generate: edge cases, tether code in the messages' package"
buf generate --template '{
  "version": "v2",
  "managed": {
    "enabled": true,
    "disable": [{"file_option": "go_package", "path": "tether"}],
    "override": [{"file_option": "go_package_prefix", "value": "github.com/tetherrpc/tether/testdata/corpus/gen"}]
  },
  "plugins": [
    {"local": "protoc-gen-go", "out": "gen", "opt": "paths=source_relative"},
    {"local": "protoc-gen-go-tether", "out": "gen", "opt": "paths=source_relative"}
  ]
}' proto/edge

if command -v protoc >/dev/null; then
	step "protoc $(protoc --version): everything, tether code in the messages' package"
	# Each file goes to genprotoc/<its directory>, in a package named after
	# the directory (grpc/health/v1: grpc_health_v1), by M mappings; tether's
	# own keep their go_package.
	includes=(proto/user proto/grpc-proto proto/googleapis proto/connect proto/edge)
	files=()
	mappings=""
	for inc in "${includes[@]}"; do
		while IFS= read -r f; do
			files+=("$f")
			dir=$(dirname "$f")
			mappings+=",M$f=github.com/tetherrpc/tether/testdata/corpus/genprotoc/$dir;${dir//[^a-zA-Z0-9]/_}"
		done < <(cd "$inc" && find . -name '*.proto' | sed 's|^\./||' | sort)
	done
	mkdir -p genprotoc
	module=module=github.com/tetherrpc/tether/testdata/corpus/genprotoc
	protoc "${includes[@]/#/-I}" -Ithird_party/tether \
		--go_out=genprotoc --go_opt="$module$mappings" \
		--go-tether_out=genprotoc --go-tether_opt="$module$mappings" \
		"${files[@]}"
elif [ "${CI:-}" = true ]; then
	echo "protoc is not installed (apt-get install -y protobuf-compiler)" >&2
	exit 1
else
	step "protoc is not installed: skipping its half (CI installs it)"
fi

step "go vet ./... (every generated package); the tests, which serve over 127.0.0.1"
go mod tidy -diff
go vet ./...
go test -race -count=1 . ./routeguide
