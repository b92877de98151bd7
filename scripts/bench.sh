#!/usr/bin/env bash
# make bench: runs the benchmarks behind each figure the issues ask for and
# ends with one line per figure: name value unit.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run() { # package, benchmark regexp, extra flags...
	local pkg=$1 re=$2
	shift 2
	go test -run '^$' -bench "$re" "$@" "$pkg" 2>&1 | tee -a "$log"
}

run ./control 'BenchmarkStep$' -benchtime 20000x
run ./drivers/modbus 'BenchmarkRegistersPerSecond$' -benchtime 3s
run ./agent 'BenchmarkSenseToDispatch$' -benchtime 1x -timeout 20m
run ./cmd/siteagent 'BenchmarkAgentRSS$' -benchtime 1x -timeout 5m

echo
echo "== figures (name value unit)"
awk '
function unit(u) {
	if (u ~ /_us$/) return "us"
	if (u ~ /_ms$/) return "ms"
	if (u ~ /_mb(_per_1000)?$/) return "MB"
	if (u ~ /_allocs$/) return "allocs/op"
	if (u ~ /_per_s$/) return "1/s"
	if (u ~ /_pct$/) return "%"
	return ""
}
/^Benchmark/ {
	for (i = 3; i < NF; i += 2) {
		u = $(i + 1)
		if (u ~ /^[a-z0-9]+(_[a-z0-9]+)+$/) printf "%s %s %s\n", u, $i, unit(u)
	}
}' "$log"
