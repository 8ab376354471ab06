#!/usr/bin/env bash
# Spillway's POST /v1/check on the embedded store beside nginx answering a static `return 200`
# (one worker), in one run on this machine with the same wrk settings and the same request
# script. Prints both throughputs, their ratio, and Spillway's p50/p99 latency.
#
# Each round also sends the same bodies to the same Spillway process as `GET /healthz`, which
# does no rate-limit work: the HTTP stack's own floor on this machine, measured beside the rest.
#
#   bench/http.sh                 # 3 rounds of 10 s each (medians reported)
#   ROUNDS=5 DURATION=20s CONNECTIONS=64 bench/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
source bench/lib.sh
need wrk wrk
need nginx nginx

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}

cargo build --release -q -p spillway-server
work=$(mktemp -d)
trap 'stop_all; rm -rf "$work"' EXIT

sp_port=$(free_port)
ng_port=$(free_port)

target/release/spillway serve --listen "127.0.0.1:$sp_port" --log-filter warn >"$work/spillway.log" 2>&1 &
pids+=($!)

nginx_return_200 "$work/nginx" "$ng_port"
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)

wait_port "$sp_port"
wait_port "$ng_port"

# run NAME PORT [METHOD PATH] -> appends "rps p50_ms p99_ms" to $work/res-NAME
run() {
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/check.lua "http://127.0.0.1:$2" -- "${@:3}")
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")" >>"$work/res-$1"
  echo "  $1: $rps req/s, p50 $p50, p99 $p99"
  grep -q "Non-2xx" <<<"$out" && echo "  $1: $(grep 'Non-2xx' <<<"$out")"
  return 0
}
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency -s bench/check.lua (same for all three)"
# Warm both up (connections, caches, the limiter's first keys).
wrk -t1 -c"$CONNECTIONS" -d2s -s bench/check.lua "http://127.0.0.1:$sp_port" >/dev/null
wrk -t1 -c"$CONNECTIONS" -d2s -s bench/check.lua "http://127.0.0.1:$ng_port" >/dev/null
for r in $(seq "$ROUNDS"); do
  echo "round $r"
  run spillway "$sp_port"
  run nginx "$ng_port"
  run floor "$sp_port" GET /healthz
done

sp=$(cut -d' ' -f1 "$work/res-spillway" | median)
ng=$(cut -d' ' -f1 "$work/res-nginx" | median)
fl=$(cut -d' ' -f1 "$work/res-floor" | median)
p50=$(cut -d' ' -f2 "$work/res-spillway" | median)
p99=$(cut -d' ' -f3 "$work/res-spillway" | median)
echo
echo "median spillway /v1/check: $sp req/s (p50 ${p50} ms, p99 ${p99} ms)"
echo "median nginx return 200:   $ng req/s"
echo "median spillway /healthz:  $fl req/s (the HTTP stack's floor: no rate-limit work)"
awk -v a="$sp" -v b="$ng" 'BEGIN { printf "ratio spillway/nginx: %.2f (target >= 0.90)\n", a/b }'
awk -v a="$fl" -v b="$ng" 'BEGIN { printf "ratio floor/nginx:    %.2f\n", a/b }'
awk -v a="$sp" -v b="$fl" 'BEGIN { printf "ratio spillway/floor: %.2f\n", a/b }'
