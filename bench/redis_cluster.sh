#!/usr/bin/env bash
# Redis Cluster benchmark: the cluster's own CPU time per decision, over a load run through
# Spillway, summed over the masters.
#
# For each load below, wrk sends POST /v1/check to a Spillway on a fresh three-master Redis
# Cluster (redis-cli --cluster create, no replicas, on free ports), and the run reads every
# master's `INFO cpu` (used_cpu_sys + used_cpu_user) before and after: the sum of the
# differences divided by the requests wrk completed is the Redis CPU one decision costs, the
# same measure as bench/redis.sh (steady on a shared, noisy machine, unlike throughput).
# - spread: one token-bucket limit keyed by user over 100,000 users (each request its own
#           slot: nothing to coalesce, the cost of the per-slot queue shows here);
# - tenants: two limits, one keyed by tenant and one by tenant and user, five tenants of
#           20,000 users each (a request's keys share its tenant's slot, and the tenants' slots
#           are busy: the load per-slot coalescing is for).
# Every request is allowed; the store budget is 1 s (--store-timeout), so no decision is made
# without Redis. Prints every run and the medians (Redis µs per decision, requests per second,
# p99), and per run the mean requests per Redis call (spillway_redis_batch_requests; "-" for a
# build that does not coalesce on a cluster).
#
# Usage: bench/redis_cluster.sh                builds target/release/spillway and measures it
#        bench/redis_cluster.sh BIN...         alternates the builds given, run by run (OLD NEW)
#        DURATION=8 RUNS=5 WARMUP=2 CONNS=50 THREADS=1 LOADS="spread tenants" to change
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
source bench/lib.sh
need redis-server redis-server
need redis-cli redis-tools
need wrk wrk
need curl curl

DURATION=${DURATION:-8}
RUNS=${RUNS:-5}
CONNS=${CONNS:-50}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2}
LOADS=${LOADS:-spread tenants}

if [ $# -eq 0 ]; then
  cargo build --release -q -p spillway-server --bin spillway
  set -- target/release/spillway
fi
binaries=("$@")

tmp=$(mktemp -d)
trap 'stop_all; rm -rf "$tmp"' EXIT

users_bucket "$tmp/spread.yaml"
cat >"$tmp/tenants.yaml" <<'YAML'
default_tier: free
limits:
  per-tenant:
    algorithm: token_bucket
    rate: 1000000/s
    burst: 100000000
    key: [tenant]
  per-user:
    algorithm: token_bucket
    rate: 1000/s
    burst: 1000000
    key: [tenant, user]
tiers:
  free:
    limits: [per-tenant, per-user]
YAML

users_load "$tmp/spread.lua"
cat >"$tmp/tenants.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local t = math.random(1, 5)
  return wrk.format(nil, "/v1/check", nil,
    '{"tenant":"t' .. t .. '","user":"u' .. math.random(1, 20000) .. '"}')
end
LUA

# start_node: starts one cluster-enabled server on a free port (another port if someone took
# that one meanwhile) and leaves its port in $node_port.
start_node() {
  local port dir
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    dir="$tmp/node-$port"
    mkdir -p "$dir"
    if start_redis "$port" "$dir" --cluster-enabled yes --cluster-config-file "$dir/nodes.conf"; then
      node_port=$port
      return 0
    fi
  done
  echo "could not start a cluster node" >&2
  exit 1
}

# start_cluster: starts three cluster-enabled servers, joins them, prints their ports.
start_cluster() {
  local ports=() node_port
  for _ in 1 2 3; do
    start_node
    ports+=("$node_port")
  done
  redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
  for port in "${ports[@]}"; do
    until redis-cli -p "$port" CLUSTER INFO | grep -q cluster_state:ok; do sleep 0.1; done
  done
  echo "${ports[@]}"
}

# one_run BINARY_INDEX LOAD: prints "µs_per_decision rps p99_ms non2xx batch sys cpu ctx" (see
# redis_load_run in bench/lib.sh), the CPU summed over the masters; cpu, ctx: Spillway's CPU µs
# and context switches per request.
one_run() {
  # Runs in a subshell (`< <(...)`): stop what it started even when a start fails.
  trap stop_all EXIT
  local i=$1 load=$2 bin=${binaries[$1]} ports sport urls
  # The cluster's processes must be in `pids` of this shell, so start it here, not in $(...).
  start_cluster >"$tmp/ports"
  read -r -a ports <"$tmp/ports"
  urls=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}")
  sport=$(free_port)
  "$bin" serve --config "$tmp/$load.yaml" --store-url "cluster+${urls%,}" \
    --store-timeout 1s --listen "127.0.0.1:$sport" --log-filter warn >/dev/null 2>&1 &
  pids+=($!)
  wait_healthy "$sport" "${pids[-1]}"
  LOAD_PID=${pids[-1]} redis_load_run "$sport" "$tmp/$load.lua" "${ports[@]}"
  stop_all
}

echo "machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')"
echo "redis: $(redis-server --version | awk '{print $3}'), 3 masters, wrk -t$THREADS -c$CONNS -d${DURATION}s, $RUNS runs"
for load in $LOADS; do
  declare -A us=() rps=() p99=() cpu=() ctx=()
  for run in $(seq "$RUNS"); do
    for i in "${!binaries[@]}"; do
      read -r u r p x m _ c s < <(one_run "$i" "$load")
      echo "$load run $run ${binaries[$i]}: cluster ${u} µs/decision, ${r} req/s, p99 ${p}ms, non-2xx ${x}, requests/call ${m}, spillway ${c} µs CPU and ${s} context switches per request"
      us[$i]+="$u "; rps[$i]+="$r "; p99[$i]+="$p "; cpu[$i]+="$c "; ctx[$i]+="$s "
    done
  done
  for i in "${!binaries[@]}"; do
    mu=$(tr ' ' '\n' <<<"${us[$i]}" | grep . | median)
    mr=$(tr ' ' '\n' <<<"${rps[$i]}" | grep . | median)
    mp=$(tr ' ' '\n' <<<"${p99[$i]}" | grep . | median)
    mc=$(tr ' ' '\n' <<<"${cpu[$i]}" | grep . | median)
    ms=$(tr ' ' '\n' <<<"${ctx[$i]}" | grep . | median)
    echo "median $load ${binaries[$i]}: cluster $mu µs/decision, $mr req/s, p99 ${mp}ms, spillway $mc µs CPU/request, $ms switches/request"
  done
  unset us rps p99 cpu ctx
done
