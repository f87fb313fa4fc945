#!/usr/bin/env bash
# check-generated.sh regenerates everything scripts/generate.sh writes and
# fails if that changed anything, so that CI catches .proto edits committed
# without their generated code and hand edits to generated files. It reports
# modified, deleted and new untracked files alike.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

paths=(gen cmd/protoc-gen-go-tether/testdata/tethertest.binpb)

./scripts/generate.sh

# --untracked-files=all lists each new file, not only its directory.
changes=$(git status --porcelain --untracked-files=all -- "${paths[@]}")
if [[ -n "$changes" ]]; then
  echo "Generated files are out of date:" >&2
  echo "$changes" >&2
  echo >&2
  git --no-pager diff -- "${paths[@]}" | head -n 100 >&2 || true
  echo "Run ./scripts/generate.sh (and, if the generator's test protos or" >&2
  echo "output changed, go test ./cmd/protoc-gen-go-tether -update) and commit the result." >&2
  exit 1
fi
echo "Generated files are up to date."
