#!/usr/bin/env bash
# Instructions per HTTP request on the embedded store, counted by valgrind's callgrind: the
# server's user-space instructions while wrk drives it, divided by the requests answered.
# Deterministic enough to compare two builds on a machine too noisy for throughput, and it
# needs no hardware counters (this VM has none, so `perf stat -e instructions` reports
# <not supported>). Kernel work (loopback TCP) is not counted.
#
# The server runs under callgrind with one HTTP thread, instrumented only during the measured
# run (after a 5 s warm-up); wrk -t1 -c16 sends bench/check.lua's bodies.
#
#   bench/http_cg.sh BINARY                  # POST /v1/check
#   bench/http_cg.sh BINARY GET /healthz     # the HTTP stack's floor, same bodies
#   DURATION=20s bench/http_cg.sh BINARY
# Profiles stay in /tmp/http_cg/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
source bench/lib.sh
need wrk wrk
need valgrind valgrind
[ $# -ge 1 ] || { echo "usage: $0 BINARY [METHOD PATH]" >&2; exit 2; }
bin=$1; shift
mkdir -p /tmp/http_cg
port=$(free_port)
out=/tmp/http_cg/$(basename "$bin").$$.out
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
  "$bin" serve --listen "127.0.0.1:$port" --log-filter warn --http-threads 1 >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
# Start-up under valgrind takes longer than wait_port's default 10 s.
wait_port "$port" 600 || exit 1
wrk -t1 -c16 -d5s -s bench/check.lua "http://127.0.0.1:$port" -- "$@" >/dev/null
callgrind_control -i on $pid >/dev/null 2>&1
res=$(wrk -t1 -c16 -d"${DURATION:-10s}" -s bench/check.lua "http://127.0.0.1:$port" -- "$@")
callgrind_control -i off $pid >/dev/null 2>&1
kill -INT $pid; wait $pid 2>/dev/null || true
reqs=$(awk '/requests in/ {print $1}' <<<"$res")
ir=$(awk '/^totals:/ {print $2; exit}' "$out")
echo "$bin ${*:-POST /v1/check}: $reqs requests, $((ir / reqs)) instructions per request $(grep -o 'Non-2xx.*' <<<"$res" || true)"
