#!/usr/bin/env bash
# Redis store benchmark: Redis's own CPU time per decision, over a load run through Spillway.
#
# For each policy below, wrk sends POST /v1/check to a Spillway on a fresh Redis, and the run
# reads Redis's `INFO cpu` (used_cpu_sys + used_cpu_user) before and after: the difference
# divided by the requests wrk completed is the Redis CPU one decision costs. Unlike
# throughput, that figure holds steady on a shared, noisy machine. Two policies:
# - one:  one token-bucket limit over 100,000 users, every request allowed;
# - four: examples/spillway.yaml, whose free tier gives a request four limits (ip-burst,
#         ip-daily-candidate in shadow, free-user-minute, free-user-daily), with
#         bench/check.lua's 200,000 users over 500 tenants, every request allowed.
# The store budget is 1 s (--store-timeout), so no decision is made without Redis.
# Prints every run and the medians (Redis µs per decision, requests per second, p99, and
# Spillway's own CPU µs and context switches per request: /proc/PID/stat's utime + stime and
# the voluntary + nonvoluntary switches of all its threads, before and after the measured
# run), and per run the mean requests per Redis call (spillway_redis_batch_requests, counted
# from warm-up on).
#
# Usage: bench/redis.sh                    builds target/release/spillway and measures it
#        bench/redis.sh BIN...             alternates the builds given, run by run (e.g. OLD NEW)
#        DURATION=8 RUNS=5 WARMUP=2 CONNS=50 THREADS=1 POLICIES="one four" to change
#        NEW_ARGS="..." / OLD_ARGS="..."   extra `serve` flags for the second / first build
#                                          (only with exactly two builds)
#        REDIS_ARGS="..."                  extra redis-server arguments for every run, e.g.
#                                          "--loadmodule target/release/libspillway_redis_module.so"
#        NEW_REDIS_ARGS="..." / OLD_REDIS_ARGS="..."  the same per build (only with exactly two
#                                          builds; give one build twice to compare the module
#                                          with the Lua library on the same binary)
#        SERVER_CPUS=1 LOAD_CPUS=0         Spillway and Redis (and the sentinels) on CPU 1, wrk
#                                          on CPU 0 (pin_setup in bench/lib.sh)
#        STORE=sentinel                    the store found through Sentinel: the same Redis as
#                                          master, one replica and three redis-sentinel
#                                          processes (Redis CPU is still the master's)
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
POLICIES=${POLICIES:-one four}
STORE=${STORE:-server}
case "$STORE" in
  server) ;;
  sentinel) need redis-sentinel redis-sentinel ;;
  *) echo "STORE=$STORE: expected server or sentinel" >&2; exit 2 ;;
esac

if [ $# -eq 0 ]; then
  cargo build --release -q -p spillway-server --bin spillway
  set -- target/release/spillway
fi
binaries=("$@")
pin_setup

tmp=$(mktemp -d)
trap 'stop_all; rm -rf "$tmp"' EXIT

users_bucket "$tmp/one.yaml"
cp examples/spillway.yaml "$tmp/four.yaml"

users_load "$tmp/one.lua"
cp bench/check.lua "$tmp/four.lua"

# one_run BINARY_INDEX POLICY: prints "µs_per_decision rps p99_ms non2xx batch sys cpu ctx"
# (see redis_load_run in bench/lib.sh; sys: the part of µs_per_decision Redis spent in the
# kernel; cpu, ctx: Spillway's CPU µs and context switches per request).
one_run() {
  # Runs in a subshell (`< <(...)`): stop what it started even when a start fails.
  trap stop_all EXIT
  local i=$1 policy=$2 bin=${binaries[$1]} extra="" rextra=${REDIS_ARGS:-} rport sport
  if [ "${#binaries[@]}" -eq 2 ]; then
    if [ "$i" -eq 0 ]; then extra=${OLD_ARGS:-}; else extra=${NEW_ARGS:-}; fi
    if [ "$i" -eq 0 ]; then rextra+=" ${OLD_REDIS_ARGS:-}"; else rextra+=" ${NEW_REDIS_ARGS:-}"; fi
  fi
  rport=$(free_port)
  # shellcheck disable=SC2086
  start_redis "$rport" "$tmp" $rextra
  pin_server "${pids[-1]}"
  local url="redis://127.0.0.1:$rport"
  if [ "$STORE" = sentinel ]; then
    start_sentinels "$rport"
    url=$sentinel_url
  fi
  sport=$(free_port)
  # shellcheck disable=SC2086
  server "$bin" serve --config "$tmp/$policy.yaml" --store-url "$url" \
    --store-timeout 1s --listen "127.0.0.1:$sport" --log-filter warn $extra >/dev/null 2>&1 &
  pids+=($!)
  wait_healthy "$sport" "${pids[-1]}"
  LOAD_PID=${pids[-1]} redis_load_run "$sport" "$tmp/$policy.lua" "$rport"
  stop_all
}

# start_sentinels MASTER_PORT: a replica of the master and three sentinels watching it (each
# with its own config file, which Sentinel rewrites), added to `pids`; sets sentinel_url to the
# store URL once every sentinel names the master.
start_sentinels() {
  local master=$1 replica s port urls="" dir
  replica=$(free_port)
  mkdir -p "$tmp/replica-$replica"
  start_redis "$replica" "$tmp/replica-$replica" --replicaof 127.0.0.1 "$master"
  pin_server "${pids[-1]}"
  for s in 1 2 3; do
    port=$(free_port)
    dir="$tmp/sentinel-$port"
    mkdir -p "$dir"
    printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor bench 127.0.0.1 %s 2\n' \
      "$port" "$dir" "$master" >"$dir/sentinel.conf"
    server redis-sentinel "$dir/sentinel.conf" >/dev/null &
    pids+=($!)
    poll 100 "redis-sentinel on port $port" "${pids[-1]}" \
      sh -c "redis-cli -p $port SENTINEL get-master-addr-by-name bench | grep -q 127.0.0.1"
    urls+="${urls:+,}redis://127.0.0.1:$port"
  done
  sentinel_url="sentinel:bench@$urls"
}

echo "machine: $(nproc --all) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')"
pin_banner
echo "store: $STORE, redis: $(redis-server --version | awk '{print $3}'), wrk -t$THREADS -c$CONNS -d${DURATION}s, $RUNS runs"
for policy in $POLICIES; do
  declare -A us=() rps=() p99=() cpu=() ctx=()
  for run in $(seq "$RUNS"); do
    for i in "${!binaries[@]}"; do
      read -r u r p x m k c s < <(one_run "$i" "$policy")
      echo "$policy run $run ${binaries[$i]}: redis ${u} µs/decision (${k} in the kernel), ${r} req/s, p99 ${p}ms, non-2xx ${x}, requests/call ${m}, spillway ${c} µs CPU and ${s} context switches per request"
      us[$i]+="$u "; rps[$i]+="$r "; p99[$i]+="$p "; cpu[$i]+="$c "; ctx[$i]+="$s "
    done
  done
  for i in "${!binaries[@]}"; do
    mu=$(tr ' ' '\n' <<<"${us[$i]}" | grep . | median)
    mr=$(tr ' ' '\n' <<<"${rps[$i]}" | grep . | median)
    mp=$(tr ' ' '\n' <<<"${p99[$i]}" | grep . | median)
    mc=$(tr ' ' '\n' <<<"${cpu[$i]}" | grep . | median)
    ms=$(tr ' ' '\n' <<<"${ctx[$i]}" | grep . | median)
    echo "median $policy ${binaries[$i]}: redis $mu µs/decision, $mr req/s, p99 ${mp}ms, spillway $mc µs CPU/request, $ms switches/request"
  done
  unset us rps p99 cpu ctx
done
