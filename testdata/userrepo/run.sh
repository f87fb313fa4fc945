#!/usr/bin/env bash
# run.sh tests the README's "Pinned tools in your repository": in a new
# repository outside any Go module (a temporary directory), it runs the
# README's commands as written (a tools module of the repository's own with
# `go get -tool` for buf, protoc-gen-go and protoc-gen-go-tether, built into
# bin/ with `go -C tools install tool`), except that protoc-gen-go-tether
# comes from this checkout (a replace directive) instead of a published
# version. Then it copies tether's protos from the module cache as the
# README says, runs `buf generate` with the built tools on PATH, and vets,
# builds and runs a program of the generated code (main.go: serve on
# 127.0.0.1 with Server.Serve, call once, drain).
#
# It also checks the trap the README warns about: `go tool -modfile=…`
# outside a Go module fails with "cannot find main module".
#
# The first build of buf takes about two minutes on two cores; later runs
# come from the build cache. Run it from anywhere; .ci/run runs it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=$(cd ../.. && pwd)

step() { printf -- '-- userrepo: %s\n' "$*"; }

tmp=$(mktemp -d)
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
repo=$tmp/repo
mkdir -p "$repo"
cp -r proto buf.yaml buf.gen.yaml main.go "$repo/"
cd "$repo"
if [ "$(go env GOMOD)" != /dev/null ]; then
	echo "$repo is inside a Go module ($(go env GOMOD)); the test needs one outside" >&2
	exit 1
fi

# The README's commands: the block after the marker comment.
mapfile -t commands < <(sed -n '/testdata\/userrepo\/run.sh runs these commands/,/^```$/p' "$root/README.md" | sed '1,2d;$d')
if [ "${#commands[@]}" -lt 5 ]; then
	echo "README.md: no command block after the testdata/userrepo/run.sh marker" >&2
	exit 1
fi
run() {
	local line=$1
	case "$line" in
	*"go get -tool github.com/tetherrpc/tether/cmd/protoc-gen-go-tether"*)
		# This checkout instead of a published version.
		line="go mod edit -require=github.com/tetherrpc/tether@v0.0.0-00010101000000-000000000000 -replace=github.com/tetherrpc/tether=$root -tool=github.com/tetherrpc/tether/cmd/protoc-gen-go-tether && go mod tidy"
		;;
	esac
	printf '   $ %s\n' "$line"
	# go get lists every module it adds: shown only on failure.
	eval "$line" 2>"$tmp/stderr" || { cat "$tmp/stderr" >&2; return 1; }
}

step "the README's tools module, outside any Go module"
for line in "${commands[@]}"; do
	[[ "$line" == *"buf generate"* ]] && continue
	run "$line"
done
cd "$repo"
for tool in buf protoc-gen-go protoc-gen-go-tether; do
	[ -x "bin/$tool" ] || { echo "bin/$tool was not built" >&2; exit 1; }
done
grep -q 'github.com/bufbuild/buf v1.75.0' tools/go.mod || { echo "tools/go.mod does not pin buf v1.75.0" >&2; exit 1; }

step "the trap: go tool -modfile outside a Go module"
if out=$(go tool -modfile=tools/go.mod buf --version 2>&1); then
	echo "go tool -modfile=tools/go.mod worked outside a Go module; update the README" >&2
	exit 1
fi
grep -q 'cannot find main module, but -modfile was set' <<<"$out" || { echo "unexpected error: $out" >&2; exit 1; }
echo "   fails as the README says: ${out%%$'\n'*}"

step "the repository's own module, and tether's protos from the module cache (the README's command)"
go mod init example.com/greet >/dev/null 2>&1
go mod edit -require=github.com/tetherrpc/tether@v0.0.0-00010101000000-000000000000 -replace=github.com/tetherrpc/tether="$root"
mkdir -p third_party/tether
cp -r "$(go list -m -f '{{.Dir}}' github.com/tetherrpc/tether)/proto/tether" third_party/tether/
chmod -R u+w third_party

step "buf generate with the tools on PATH (the README's command)"
for line in "${commands[@]}"; do
	[[ "$line" == *"buf generate"* ]] && run "$line"
done
test -f gen/greet/v1/greet.pb.go && test -f gen/greet/v1/greet_tether.pb.go
if [ -e gen/tether ]; then
	echo "tether's own protos were generated into gen/tether" >&2
	exit 1
fi

step "go vet, build and run the generated code"
go mod tidy
go vet ./...
go build -o bin/greet .
out=$(./bin/greet)
[ "$out" = "Hello, Ada!" ] || { echo "greet printed: $out" >&2; exit 1; }
echo "   greet: $out"
step "ok"
