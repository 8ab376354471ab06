#!/usr/bin/env bash
# Two builds of Spillway, alternated under the same load, each round on a fresh server, for
# before/after comparisons on a noisy machine (embedded store). Two loads:
# - LOAD=http (the default): wrk on POST /v1/check; requests per second, server CPU per
#   request (from /proc/PID/stat) and p99;
# - LOAD=grpc: bench/grpc.sh's h2load load on ShouldRateLimit (4 clients x 4 connections x 32
#   streams, CALLS each); calls per second and server CPU per call.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY          # e.g. a copy of target/release/spillway
#   ROUNDS=4 DURATION=8s bench/ab.sh /tmp/old/spillway target/release/spillway
#   LOAD=grpc ROUNDS=7 bench/ab.sh /tmp/old/spillway target/release/spillway
#   NEW_ARGS="--catalog sqlite:///tmp/million.db" bench/ab.sh B B   # same build, one flag apart
# OLD_ARGS and NEW_ARGS add `serve` flags to each side.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
source bench/lib.sh
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }

# Each round's server is stopped by stop_all; this trap stops one a failed run left behind.
work=""
trap 'stop_all; [ -z "$work" ] || rm -rf "$work"' EXIT

LOAD=${LOAD:-http}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-64}
CALLS=${CALLS:-200000}
case "$LOAD" in
  http) need wrk wrk; need python3 python3 ;;
  grpc)
    need h2load nghttp2-client
    need python3 python3
    work=$(mktemp -d)
    grpc_fixture "$work" 4
    ;;
  *) echo "LOAD must be http or grpc, not $LOAD" >&2; exit 2 ;;
esac

frame_of() { echo "$work/frame-$1.bin"; }

one_grpc() {
  local label=$1 binary=$2 port pid t0 t1 start end ok extra
  if [ "$label" = old ]; then extra=${OLD_ARGS:-}; else extra=${NEW_ARGS:-}; fi
  port=$(free_port)
  # shellcheck disable=SC2086 # the extra flags are meant to split into words
  "$binary" serve --listen 127.0.0.1:0 --grpc-listen "127.0.0.1:$port" --log-filter warn \
    --config "$work/conf/policy.yaml" --envoy-config "$work/conf/bench.yaml" $extra >/dev/null 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_port "$port" || { echo "$label: the server never listened" >&2; stop_all; return 1; }
  t0=$(cpu_ticks "$pid")
  start=$(date +%s.%N)
  h2load_clients "http://127.0.0.1:$port/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" \
    "$work/out" 4 "$CALLS" 4 32 frame_of
  end=$(date +%s.%N)
  t1=$(cpu_ticks "$pid")
  stop_all
  ok=$(cat "$work"/out/h2load-*.out | awk '/^status codes:/ {n += $3} END {print n}')
  python3 -c "s = $end - $start; print(f'$label: {$ok / s:,.0f} calls/s ($ok answered 200), {($t1 - $t0) / $(getconf CLK_TCK) / $ok * 1e6:.1f} us CPU per call')"
}


one() {
  local label=$1 binary=$2 port pid t0 t1 out rps reqs p99 extra
  if [ "$label" = old ]; then extra=${OLD_ARGS:-}; else extra=${NEW_ARGS:-}; fi
  port=$(free_port)
  # shellcheck disable=SC2086 # the extra flags are meant to split into words
  "$binary" serve --listen "127.0.0.1:$port" --log-filter warn $extra >/dev/null 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_port "$port" || { echo "$label: the server never listened" >&2; stop_all; return 1; }
  wrk -t1 -c"$CONNECTIONS" -d2s -s bench/check.lua "http://127.0.0.1:$port" >/dev/null
  t0=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/check.lua "http://127.0.0.1:$port")
  t1=$(cpu_ticks "$pid")
  stop_all
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out" | tr -d ,)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  python3 -c "print(f'$label: {float(\"$rps\"):,.0f} req/s, {($t1 - $t0) / $(getconf CLK_TCK) / $reqs * 1e6:.1f} us CPU per request, p99 $p99')"
}

if [ "$LOAD" = grpc ]; then
  echo "h2load, 4 clients x -n $CALLS -c 4 -m 32 on ShouldRateLimit, alternating, $ROUNDS rounds"
  for r in $(seq "$ROUNDS"); do
    one_grpc old "$1"
    one_grpc new "$2"
  done
  exit 0
fi
echo "wrk -t1 -c$CONNECTIONS -d$DURATION --latency -s bench/check.lua, alternating, $ROUNDS rounds"
for r in $(seq "$ROUNDS"); do
  one old "$1"
  one new "$2"
done
