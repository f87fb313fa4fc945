#!/usr/bin/env bash
# abpairs.sh: two builds of tether side by side in alternating runs, the way
# docs/benchmarks/HISTORY.md measures a change ("alternating pairs"): one benchcmp
# run of revision A, then one of revision B, ROUNDS times, each against a
# fresh server, and for every row of benchcmp's table both medians and in
# how many pairs B's value was lower (the order in a round alternates: A
# first in odd rounds, B first in even ones). On these shared VMs the machine's
# state drifts by more than most changes gain, so a change is judged by its
# pairs, not by one run of each.
#
#   ./bench/abpairs.sh A B [REGEXP]      # revisions (anything git names)
#   ROUNDS=8 ./bench/abpairs.sh 96beac7 HEAD '^unary-c1$'
#   ./bench/abpairs.sh HEAD~1 HEAD '^(bidi-c64|push-fleet)$'
#
# REGEXP picks benchcmp's scenarios (default '^unary-c1$'), run for tether
# only. ROUNDS defaults to 6.
# Every run's rows are kept in OUT (default abpairs.txt in the current
# directory) for the record. Everything listens on 127.0.0.1 only.
set -euo pipefail
if [ $# -lt 2 ]; then
	sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
	exit 2
fi
a=$1
b=$2
re=${3:-'^unary-c1$'}
rounds=${ROUNDS:-6}
out=${OUT:-abpairs.txt}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

build() { # rev name
	mkdir "$tmp/$2"
	git -C "$repo" archive "$1" | tar -x -C "$tmp/$2"
	go -C "$tmp/$2/bench" build -o "$tmp/bc-$2" ./cmd/benchcmp
	echo "$2 = $1 ($(git -C "$repo" rev-parse --short "$1"))"
}
build "$a" A
build "$b" B

: >"$out"
for i in $(seq "$rounds"); do
	# The order alternates (A B, B A, ...): in two 8-round series the run
	# first in a round had the lower CPU per call in 6 of 8 pairs whichever
	# build it was. Later series did not confirm it; alternating costs
	# nothing.
	order="A B"
	if [ $((i % 2)) -eq 0 ]; then order="B A"; fi
	for side in $order; do
		"$tmp/bc-$side" -run "$re" -systems tether -count 1 -v=false |
			grep '^| ' | grep -v '^| scenario\|^|---\|^| target\|^| raw' |
			awk -F'|' -v s="$side" -v r="$i" '{gsub(/^ +| +$/, "", $2); gsub(/^ +| +$/, "", $3); print s "\t" r "\t" $2 "\t" $3}' >>"$out"
	done
	echo "round $i of $rounds done" >&2
done

# For each row: the medians of A and B and how many pairs B was lower in.
awk -F'\t' '
function median(list,   n, v, i, j, t) {
	n = split(list, v, " ")
	for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j-1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j-1]; v[j-1] = t }
	return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
{
	v = $4; gsub(/,/, "", v)
	if (v !~ /^[0-9.]+$/) next
	if (!($3 in seen)) { seen[$3] = 1; order[++rows] = $3 }
	vals[$3, $1] = vals[$3, $1] " " v
	pair[$3, $2, $1] = v
	if ($2 > maxr) maxr = $2
}
END {
	print "| row | A median | B median | B/A | B lower, pairs |"
	print "|---|---:|---:|---:|---:|"
	for (k = 1; k <= rows; k++) {
		r = order[k]; lower = 0; n = 0
		for (i = 1; i <= maxr; i++) if ((r, i, "A") in pair && (r, i, "B") in pair) {
			n++; if (pair[r, i, "B"] + 0 < pair[r, i, "A"] + 0) lower++
		}
		ma = median(vals[r, "A"]); mb = median(vals[r, "B"])
		printf "| %s | %s | %s | %s | %d of %d |\n", r, ma, mb, (ma + 0 ? sprintf("%.3f", mb / ma) : "–"), lower, n
	}
}' "$out"
