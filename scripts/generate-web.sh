#!/usr/bin/env bash
# Generates the TypeScript messages and service descriptors of web/gen with
# protoc-gen-es (pinned in web/package.json) through buf (pinned in
# tools/go.mod), from buf.gen.web.yaml. Needs `npm ci` in web/ first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x web/node_modules/.bin/protoc-gen-es ]; then
	(cd web && npm ci --no-audit --no-fund)
fi
go tool -modfile=tools/go.mod buf generate --template buf.gen.web.yaml
