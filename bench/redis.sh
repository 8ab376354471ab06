#!/usr/bin/env bash
# Redis store benchmark: the raw ceiling of one Redis running Spillway's check script by
# EVALSHA (redis-benchmark, random keys), beside Spillway's /v1/check over HTTP (wrk, many user
# keys, mostly allowed) on the same Redis. Prints both throughputs, their ratio and Spillway's
# p99, as medians of RUNS runs. Everything runs on loopback on free ports.
#
# Usage: bench/redis.sh            (DURATION=10 RUNS=3 CONNS=50 THREADS=2 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
source bench/lib.sh
need redis-server redis-server
need redis-cli redis-tools
need redis-benchmark redis-tools
need wrk wrk
need curl curl

DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}

cargo build --release -q -p spillway-server --bin spillway

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" >/dev/null &
pids+=($!)
until redis-cli -p "$rport" ping >/dev/null 2>&1; do sleep 0.1; done

# The same script the store runs: helpers, algorithms, dispatcher (order as in script.rs).
lua=crates/spillway-redis/lua
src=$(cat "$lua"/common.lua "$lua"/token_bucket.lua "$lua"/gcra.lua "$lua"/fixed_window.lua \
  "$lua"/sliding_window.lua "$lua"/sliding_log.lua "$lua"/leaky_bucket.lua "$lua"/dispatch.lua)
sha=$(redis-cli -p "$rport" SCRIPT LOAD "$src")

# 1000/s with a burst of a million: tokens = 1, micros = 1000 per token in scaled form.
policy="$tmp/policy.yaml"
cat >"$policy" <<YAML
default_tier: free
limits:
  per-user:
    algorithm: token_bucket
    rate: 1000/s
    burst: 1000000
    key: [user]
tiers:
  free:
    limits: [per-user]
store: {type: redis, url: "redis://127.0.0.1:$rport", prefix: bench, timeout: 1s}
YAML
sport=$(free_port)
target/release/spillway serve --config "$policy" --listen "127.0.0.1:$sport" --log-filter warn >/dev/null 2>&1 &
pids+=($!)
until curl -fs "http://127.0.0.1:$sport/healthz" >/dev/null; do sleep 0.1; done

cat >"$tmp/check.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  return wrk.format(nil, "/v1/check", nil, '{"user":"u' .. math.random(1, 100000) .. '"}')
end
LUA

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
raw=(); http=(); p99=()
for run in $(seq "$RUNS"); do
  r=$(redis-benchmark -p "$rport" -c "$CONNS" -n $((DURATION * 40000)) -r 100000 --csv \
      EVALSHA "$sha" 1 'bench:{__rand_int__}:raw' 1 "" 0 1 1 1000 1000000 1 1 \
      | tail -1 | cut -d, -f2 | tr -d '"')
  out=$(wrk -t "$THREADS" -c "$CONNS" -d "${DURATION}s" --latency -s "$tmp/check.lua" \
      "http://127.0.0.1:$sport")
  h=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p=$(awk '$1 == "99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  echo "run $run: EVALSHA $r/s, spillway $h/s, p99 $p${non2xx:+, non-2xx $non2xx}"
  raw+=("$r"); http+=("$h"); p99+=("$p")
done
mr=$(printf '%s\n' "${raw[@]}" | median)
mh=$(printf '%s\n' "${http[@]}" | median)
mp=$(printf '%s\n' "${p99[@]}" | sed 's/ms$//' | median)
echo "median EVALSHA (redis-benchmark): $mr req/s"
echo "median spillway /v1/check (wrk):  $mh req/s"
echo "ratio: $(awk -v h="$mh" -v r="$mr" 'BEGIN {printf "%.2f", h / r}')x   spillway p99 (median): ${mp}ms"
