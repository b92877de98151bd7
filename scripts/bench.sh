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
run ./node 'BenchmarkGrantToCaps$' -benchtime 1x -timeout 5m
run ./drivers/gpufleet 'BenchmarkSiteToNode' -benchtime 1x -timeout 5m
run ./cmd/siteagent 'BenchmarkNodeRSS$' -benchtime 1x -timeout 5m
run ./drivers/miner/whatsminer 'BenchmarkShed1000$' -benchtime 5x
run ./drivers/miner/vnish 'BenchmarkShed1000$' -benchtime 5x
run ./drivers/miner/antminer 'BenchmarkDispatch1000$' -benchtime 2x
run ./drivers/miner 'BenchmarkShed5000$|BenchmarkPoll5000$' -benchtime 3x -timeout 10m
run ./drivers/miner 'BenchmarkFleetRSS$' -benchtime 1x -timeout 10m
run ./drivers/opcua 'BenchmarkChangeToPoint$' -benchtime 1x -timeout 10m
run ./drivers/opcua 'BenchmarkItemsCPU$' -benchtime 1x -timeout 10m
run ./agent 'BenchmarkMQTTPointsPerSecond$|BenchmarkMQTTReplay$' -benchtime 1x -timeout 10m
run ./drivers/mqtt/sparkplug 'BenchmarkSparkplugPointsPerSecond$' -benchtime 1x -timeout 5m
run ./agent 'BenchmarkCycleJitter$' -benchtime 1x -timeout 10m

echo
echo "== figures (name value unit)"
awk '
function unit(u) {
	if (u ~ /_us$/) return "us"
	if (u ~ /_ms$/ || u ~ /_ms_broker_/) return "ms"
	if (u ~ /_mb(_per_1000)?$/) return "MB"
	if (u ~ /_allocs$/) return "allocs/op"
	if (u ~ /_per_s$/) return "1/s"
	if (u ~ /_s$/) return "s"
	if (u ~ /_pct$/) return "%"
	return ""
}
/^Benchmark/ {
	for (i = 3; i < NF; i += 2) {
		u = $(i + 1)
		if (u ~ /^[a-z0-9]+(_[a-z0-9]+)+$/) printf "%s %s %s\n", u, $i, unit(u)
	}
}' "$log"
