#!/usr/bin/env bash
# Spillway beside its peers in one run, alternating round by round: Limitador (built beside the
# project, never vendored) and, for HTTP on the embedded store, nginx answering `return 200`.
# The same limit on both limiters: one fixed window of 100,000,000 per second per user, so every
# request is allowed (the common case) and each user is its own counter.
#
# Loads (LOADS, all four by default):
# - http-memory: wrk -t1 -cCONNS on each server's check endpoint (Spillway POST /v1/check
#   {"user": ...}, Limitador POST /check_and_report), 100,000 users picked at random; nginx's
#   `return 200` with the same client and requests as the ceiling, and the same Spillway server's
#   `GET /healthz` with the same client and bodies (`spillway-healthz`) as its own HTTP floor:
#   how close a check can get to it is the work left above the HTTP stack;
# - http-redis:  the same over a fresh redis-server per run; also Redis's own CPU per decision
#   (INFO cpu, user + system), which a busy machine barely moves;
# - grpc-memory, grpc-redis: Envoy RLS ShouldRateLimit from bench/grpc.sh's h2load clients
#   (4 clients x 4 connections x 32 streams, CALLS each, one user per client), domain/namespace
#   `bench`.
# Every run also reads the server's own CPU (/proc/PID/stat, user + system, all threads) over
# the measured part and prints it per request or call, in µs, as bench/redis.sh does: Spillway's,
# the healthz floor's and Limitador's (nginx's work is in its worker, a child of the process
# started, so it prints "-"). The medians carry it too: what a request costs the limiter itself,
# which the request rate hides when the load generator shares the cores.
# Prints every run, then per load the medians and Spillway's ratio to each peer.
#
#   LIMITADOR=/work/peers/limitador/target/release/limitador-server bench/peers.sh [SPILLWAY_BINARY]
#   ROUNDS=5 DURATION=8 LOADS="http-memory grpc-redis" LIMITADOR=... bench/peers.sh
#   REDIS_ARGS="--loadmodule target/release/libspillway_redis_module.so" LIMITADOR=... bench/peers.sh
#     (extra redis-server arguments for every Redis the runs start; with Spillway's module loaded
#     both limiters use the same Redis, Spillway through the module and Limitador as ever)
#   SPILLWAY_ARGS="--http-threads 1" LIMITADOR=... bench/peers.sh
#     (extra `spillway serve` arguments, for Spillway's runs and its healthz floor's)
#   SERVER_CPUS=1 LOAD_CPUS=0 LIMITADOR=... bench/peers.sh
#     (each server, and the Redis it uses, on CPU 1 and wrk and h2load on CPU 0: see pin_setup
#     in bench/lib.sh. Every server sizes its threads to the CPUs it may run on: Spillway's and
#     Limitador's default thread counts follow the affinity, and nginx runs one worker anyway)
#
# Building Limitador here (outside this repository; ~25 minutes on 2 cores): fetch
# Kuadrant/limitador, keep only limitador/, limitador-server/, Cargo.toml and Cargo.lock,
# `apt-get install protobuf-compiler libclang-dev`, then
# `cargo build --release -p limitador-server`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
source bench/lib.sh
need redis-server redis-server
need redis-cli redis-tools
need wrk wrk
need h2load nghttp2-client
need nginx nginx
need curl curl
need python3 python3

: "${LIMITADOR:?set LIMITADOR to a limitador-server binary (see the header)}"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
CALLS=${CALLS:-100000}
LOADS=${LOADS:-http-memory http-redis grpc-memory grpc-redis}
if [ $# -ge 1 ]; then
  spillway=$1
else
  cargo build --release -q -p spillway-server --bin spillway
  spillway=target/release/spillway
fi
# After the build, which may use every core.
pin_setup

tmp=$(mktemp -d)
trap 'stop_all; rm -rf "$tmp"' EXIT

grpc_fixture "$tmp" 4
frame_of() { echo "$tmp/frame-$1.bin"; }
cat >"$tmp/policy.yaml" <<'YAML'
default_tier: free
limits:
  per-user:
    algorithm: fixed_window
    limit: 100000000
    window: 1s
    key: [user]
tiers:
  free:
    limits: [per-user]
YAML
# bench/grpc.sh's Envoy domain gives each `user` value 100,000,000 per second as well.
cat >"$tmp/limits.yaml" <<'YAML'
- namespace: bench
  max_value: 100000000
  seconds: 1
  conditions: []
  variables:
    - descriptors[0]['user']
YAML
users_load "$tmp/spillway.lua"
cat >"$tmp/limitador.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  return wrk.format(nil, "/check_and_report", nil,
    '{"namespace":"bench","values":{"user":"u' .. math.random(1, 100000) .. '"},"delta":1}')
end
LUA
cp "$tmp/spillway.lua" "$tmp/nginx.lua"
# Redis's CPU seconds so far, user and system together.
redis_total() { redis_cpu "$1" | awk '{printf "%.6f\n", $1 + $2}'; }
# The floor: the same requests, bodies included, to the same server's `GET /healthz`.
users_load "$tmp/spillway-healthz.lua" GET /healthz

# start_server WHO STORE: starts WHO (spillway, spillway-healthz, limitador or nginx) on free ports, with a fresh
# redis-server when STORE is redis; sets http, grpc, rport (empty without Redis) and cpu_pid, the
# process whose CPU is the server's (empty for nginx, whose worker is a child).
start_server() {
  local who=$1 store=$2 url=""
  http=$(free_port); grpc=$(free_port); rport=""; cpu_pid=""
  if [ "$store" = redis ]; then
    rport=$(free_port)
    local redis_args=()
    read -ra redis_args <<<"${REDIS_ARGS:-}"
    start_redis "$rport" "$tmp" "${redis_args[@]}"
    pin_server "${pids[-1]}"
    url="redis://127.0.0.1:$rport"
  fi
  case "$who" in
    spillway | spillway-healthz)
      local store_flags=() extra=()
      [ -n "$url" ] && store_flags=(--store-url "$url" --store-timeout 1s)
      read -ra extra <<<"${SPILLWAY_ARGS:-}"
      server "$spillway" serve --config "$tmp/policy.yaml" --envoy-config "$tmp/conf/bench.yaml" \
        "${store_flags[@]}" "${extra[@]}" --listen "127.0.0.1:$http" --grpc-listen "127.0.0.1:$grpc" \
        --log-filter warn >/dev/null 2>&1 &
      ;;
    limitador)
      local storage=(memory)
      [ -n "$url" ] && storage=(redis "$url")
      server "$LIMITADOR" --rls-ip 127.0.0.1 --rls-port "$grpc" --http-ip 127.0.0.1 --http-port "$http" \
        "$tmp/limits.yaml" "${storage[@]}" >"$tmp/limitador.log" 2>&1 &
      ;;
    nginx)
      nginx_return_200 "$tmp/nginx" "$http"
      server nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" >/dev/null 2>&1 &
      ;;
  esac
  pids+=($!)
  [ "$who" = nginx ] || cpu_pid=$!
  wait_port "$http" 300 || { echo "$who never listened" >&2; cat "$tmp/limitador.log" >&2 || true; exit 1; }
  [ "$who" = nginx ] || wait_port "$grpc" 300
}

# server_cpu: the started server's CPU seconds so far (0 for nginx; see start_server).
server_cpu() { if [ -n "$cpu_pid" ]; then proc_cpu "$cpu_pid"; else echo 0; fi; }

# per_request CPU0 CPU1 N: the server's CPU µs per request between two server_cpu readings
# ("-" for nginx).
per_request() {
  if [ -n "$cpu_pid" ]; then awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {printf "%.2f\n", (b - a) * 1e6 / n}'
  else echo -; fi
}

# one_http WHO STORE: prints "requests_per_second redis_us_per_decision non2xx cpu_us_per_request".
one_http() {
  # Runs in a subshell (`< <(...)`): stop what it started even when a start fails.
  trap stop_all EXIT
  local who=$1 store=$2 out n rps non2xx c0=0 c1=0 p0 p1
  start_server "$who" "$store"
  wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$tmp/$who.lua" "http://127.0.0.1:$http" >/dev/null
  [ -n "$rport" ] && c0=$(redis_total "$rport")
  p0=$(server_cpu)
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$tmp/$who.lua" "http://127.0.0.1:$http")
  p1=$(server_cpu)
  [ -n "$rport" ] && c1=$(redis_total "$rport")
  stop_all
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  awk -v r="$rps" -v n="$n" -v a="$c0" -v b="$c1" -v x="${non2xx:-0}" -v c="$(per_request "$p0" "$p1" "$n")" \
    'BEGIN {printf "%s %.2f %s %s\n", r, (b - a) * 1e6 / n, x, c}'
}

# one_grpc WHO STORE: prints "calls_per_second redis_us_per_decision non_ok cpu_us_per_call".
one_grpc() {
  # Runs in a subshell (`< <(...)`): stop what it started even when a start fails.
  trap stop_all EXIT
  local who=$1 store=$2 start end ok c0=0 c1=0 url p0 p1
  start_server "$who" "$store"
  url="http://127.0.0.1:$grpc/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
  h2load_clients "$url" "$tmp/out" 4 $((CALLS / 10)) 4 32 frame_of
  [ -n "$rport" ] && c0=$(redis_total "$rport")
  p0=$(server_cpu)
  start=$(date +%s.%N)
  h2load_clients "$url" "$tmp/out" 4 "$CALLS" 4 32 frame_of
  end=$(date +%s.%N)
  p1=$(server_cpu)
  [ -n "$rport" ] && c1=$(redis_total "$rport")
  stop_all
  # h2load counts HTTP statuses; a gRPC answer is 200 with grpc-status in the trailers, and a
  # limiter answering OVER_LIMIT still answers 200, so the calls must all be allowed: the
  # limit is far above the load.
  ok=$(cat "$tmp"/out/h2load-*.out | awk '/^status codes:/ {n += $3} END {print n}')
  awk -v s="$start" -v e="$end" -v ok="$ok" -v a="$c0" -v b="$c1" -v total=$((CALLS * 4)) \
    -v c="$(per_request "$p0" "$p1" "$ok")" \
    'BEGIN {printf "%.0f %.2f %d %s\n", ok / (e - s), (b - a) * 1e6 / ok, total - ok, c}'
}

echo "machine: $(nproc --all) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')"
echo "spillway: $spillway; limitador: $LIMITADOR ($("$LIMITADOR" --version 2>/dev/null | head -1))"
[ -n "${SPILLWAY_ARGS:-}" ] && echo "spillway serve also gets: $SPILLWAY_ARGS"
pin_banner
echo "redis $(redis-server --version | awk '{print $3}')${REDIS_ARGS:+ ($REDIS_ARGS)}; wrk -t1 -c$CONNS -d${DURATION}s; h2load 4 x -n $CALLS -c 4 -m 32; $ROUNDS rounds"
for load in $LOADS; do
  kind=${load%-*} store=${load#*-}
  whos="spillway limitador"
  [ "$load" = http-memory ] && whos="spillway limitador nginx spillway-healthz"
  declare -A rates=() redis=() cpu=() m=()
  for round in $(seq "$ROUNDS"); do
    for who in $whos; do
      read -r r u x c < <("one_$kind" "$who" "$store")
      echo "$load round $round $who: $r per second, redis $u µs/decision, failed $x, $who $c µs CPU/request"
      rates[$who]+="$r "; redis[$who]+="$u "; cpu[$who]+="$c "
    done
  done
  for who in $whos; do
    m[$who]=$(tr ' ' '\n' <<<"${rates[$who]}" | grep . | median)
    mu=$(tr ' ' '\n' <<<"${redis[$who]}" | grep . | median)
    mc=$(tr ' ' '\n' <<<"${cpu[$who]}" | { grep -Ev '^(-|)$' || true; } | median)
    echo "median $load $who: ${m[$who]} per second, redis $mu µs/decision, $who ${mc:--} µs CPU/request"
  done
  for who in $whos; do
    [ "$who" = spillway ] && continue
    python3 -c "print(f'ratio $load spillway/$who: {${m[spillway]} / ${m[$who]}:.2f}x')"
  done
  # The floor beside both peers: where /v1/check could reach if deciding cost nothing.
  if [ -n "${m[spillway-healthz]:-}" ]; then
    for who in nginx limitador; do
      python3 -c "print(f'ratio $load spillway-healthz/$who: {${m[spillway-healthz]} / ${m[$who]}:.2f}x')"
    done
  fi
  unset rates redis cpu m
done
