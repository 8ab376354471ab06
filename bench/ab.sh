#!/usr/bin/env bash
# Two builds of Spillway, alternated under the same wrk load on POST /v1/check (embedded store),
# each round on a fresh server: requests per second, server CPU per request (from
# /proc/PID/stat) and p99. For before/after comparisons on a noisy machine.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY          # e.g. a copy of target/release/spillway
#   ROUNDS=4 DURATION=8s bench/ab.sh /tmp/old/spillway target/release/spillway
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
source bench/lib.sh
need wrk wrk
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-64}


one() {
  local label=$1 binary=$2 port pid t0 t1 out rps reqs p99
  port=$(free_port)
  "$binary" serve --listen "127.0.0.1:$port" --log-filter warn >/dev/null 2>&1 &
  pid=$!
  wait_port "$port" || { echo "$label: the server never listened" >&2; kill "$pid"; return 1; }
  wrk -t1 -c"$CONNECTIONS" -d2s -s bench/check.lua "http://127.0.0.1:$port" >/dev/null
  t0=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/check.lua "http://127.0.0.1:$port")
  t1=$(cpu_ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out" | tr -d ,)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  python3 -c "print(f'$label: {float(\"$rps\"):,.0f} req/s, {($t1 - $t0) / $(getconf CLK_TCK) / $reqs * 1e6:.1f} us CPU per request, p99 $p99')"
}

echo "wrk -t1 -c$CONNECTIONS -d$DURATION --latency -s bench/check.lua, alternating, $ROUNDS rounds"
for r in $(seq "$ROUNDS"); do
  one old "$1"
  one new "$2"
done
