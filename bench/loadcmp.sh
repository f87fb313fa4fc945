#!/usr/bin/env bash
# loadcmp.sh: `tether load` against the benchmark's own figure for unary
# calls at concurrency 64 on one connection, in one run (docs/BENCHMARKS.md,
# "tether load against the benchmark"). Alternates, ROUNDS times: benchcmp's
# unary-c64 scenario (its own client), then `tether load -c 64
# --connections 1` against a fresh `benchcmp -serve tether` server, each for
# DURATION after a 500 ms warm-up; prints every round, the medians and the
# median of the rounds' ratios (tether load / benchcmp).
#
#   ./bench/loadcmp.sh              # ROUNDS=3 DURATION=3s
#   ROUNDS=5 DURATION=5s ./bench/loadcmp.sh
#
# Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3s}
tmp=$(mktemp -d)
srv_pid=
cleanup() {
	exec 3>&- 2>/dev/null || true
	[ -n "$srv_pid" ] && wait "$srv_pid" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

go build -o "$tmp/benchcmp" ./cmd/benchcmp
go -C ../cmd/tether build -o "$tmp/tether" . # the CLI is a module of its own
body='{"body": "AAAAAAAAAAAAAAAAAAAAAA=="}' # 16 bytes, as benchcmp's
load() { # target duration [flags]
	local target=$1 dur=$2
	shift 2
	"$tmp/tether" load --proto bench/v1/bench.proto --import-path proto \
		-c 64 --connections 1 --duration "$dur" "$@" "$target" bench.v1.BenchService/Unary -d "$body"
}

bench_rates=() load_rates=() ratios=()
for r in $(seq "$ROUNDS"); do
	"$tmp/benchcmp" -run 'unary-c64$' -systems tether -duration "$DURATION" -v=false -json "$tmp/bench.json" >/dev/null
	b=$(jq '.median["unary-c64"].tether.rate' "$tmp/bench.json")

	mkfifo "$tmp/stdin"
	"$tmp/benchcmp" -serve tether <"$tmp/stdin" >"$tmp/srv.json" &
	srv_pid=$!
	exec 3>"$tmp/stdin" # the server serves until this closes
	until [ -s "$tmp/srv.json" ]; do sleep 0.1; done
	target=$(jq -r '.targets[0]' "$tmp/srv.json")
	load "$target" 500ms >/dev/null # warm-up, as benchcmp's
	l=$(load "$target" "$DURATION" --format json | jq '.calls_per_second')
	exec 3>&-
	wait "$srv_pid"
	srv_pid=
	rm -f "$tmp/stdin" "$tmp/srv.json"

	printf 'round %d: benchcmp unary-c64 %.0f calls/s, tether load %.0f calls/s, ratio %.3f\n' "$r" "$b" "$l" "$(jq -n "$l/$b")"
	bench_rates+=("$b") load_rates+=("$l") ratios+=("$(jq -n "$l/$b")")
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mb=$(med "${bench_rates[@]}") ml=$(med "${load_rates[@]}")
# The ratio of each round compares two runs seconds apart; their median is
# the figure to quote (other load on the machine moves both).
printf 'median: benchcmp %.0f calls/s, tether load %.0f calls/s; median ratio of the rounds %.3f\n' "$mb" "$ml" "$(med "${ratios[@]}")"
