#!/usr/bin/env bash
# percall.sh: what one unary call costs each side in the kernel's and the Go
# scheduler's terms: context switches, futex calls (threads put to sleep and
# woken), the poller's epoll calls, reads and writes, per call, client and
# server, counted by perf stat (Debian's linux-perf) over a run of calls on
# one connection (or CONNS). Used in the sixteenth pass (docs/benchmarks/HISTORY.md): where a
# call's time goes between goroutines, which a CPU profile spreads thin.
#
#   ./bench/percall.sh [SYSTEM] [CONCURRENCY] [CALLS] [CONNS]
#   ./bench/percall.sh tether 1 50000 1    # the defaults
#   ./bench/percall.sh raw-ws 1 50000      # the raw gorilla echo, for scale
#   ./bench/percall.sh tether 64 100000 64 # 64 connections, one call at a time each
#
# SYSTEM is one of benchcmp's (tether, grpc-go, ..., raw-ws). The server is
# benchcmp's child (-serve), the client benchcmp -loop, each in its own
# process on 127.0.0.1. System-call counts need perf's syscalls
# tracepoints; where the kernel does not offer them, only the context
# switches and CPU time are shown.
set -euo pipefail
sys=${1:-tether}
conc=${2:-1}
calls=${3:-50000}
conns=${4:-1}
command -v perf >/dev/null || { echo "percall.sh: needs perf (apt-get install linux-perf)" >&2; exit 2; }
dir=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
bc="$tmp/benchcmp"
go -C "$dir" build -o "$bc" ./cmd/benchcmp

ev=task-clock,context-switches,cpu-migrations
sc=syscalls:sys_enter_futex,syscalls:sys_enter_nanosleep,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_read,syscalls:sys_enter_write
if perf stat -e "$sc" true >/dev/null 2>&1; then ev="$ev,$sc"; fi

mkfifo "$tmp/stdin"
"$bc" -serve "$sys" <"$tmp/stdin" >"$tmp/child" &
srv=$!
exec 3>"$tmp/stdin" # the child serves until its stdin closes
cleanup() { exec 3>&- || true; wait "$srv" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$tmp/child" ] && break; sleep 0.1; done
target=$(sed -n 's/.*"targets":\["\([^"]*\)".*/\1/p' "$tmp/child")
[ -n "$target" ] || { echo "percall.sh: the server did not start" >&2; exit 1; }

perf stat -x, -e "$ev" -p "$srv" -o "$tmp/srv.txt" 3>&- &
perfsrv=$!
sleep 0.3
perf stat -x, -e "$ev" -o "$tmp/cli.txt" 3>&- "$bc" -loop "$target" -loop-system "$sys" -loop-calls "$calls" -loop-concurrency "$conc" -loop-conns "$conns"
kill -INT "$perfsrv"
wait "$perfsrv" 2>/dev/null || true

# perf's CSV: value,unit,event,...; task-clock is in milliseconds.
row() { grep -v '^#' "$1" | grep . | awk -F, '{v=$1; if ($3=="task-clock") {v=v*1000; $3="CPU µs"} print $3 "," v}'; }
join -t, <(row "$tmp/cli.txt" | sort) <(row "$tmp/srv.txt" | sort) |
	awk -F, -v n="$calls" 'BEGIN {printf "| per call | client | server |\n|---|---:|---:|\n"}
		{printf "| %s | %.2f | %.2f |\n", $1, $2/n, $3/n}'
