#!/usr/bin/env bash
# Instructions per HTTP request, counted by valgrind's callgrind: the server's user-space
# instructions while wrk drives it, divided by the requests answered. Deterministic enough to
# compare two builds on a machine too noisy for throughput, and it needs no hardware counters
# (this VM has none, so `perf stat -e instructions` reports <not supported>). Kernel work
# (loopback TCP) is not counted, and neither is Redis's own work with STORE=redis.
#
# The server runs under callgrind with one HTTP thread, instrumented only during the measured
# run (after a 5 s warm-up); wrk -t1 -c16 (CONNS=N for another count) sends bench/check.lua's
# bodies.
#
#   bench/http_cg.sh BINARY                  # POST /v1/check on the embedded store
#   bench/http_cg.sh BINARY GET /healthz     # the HTTP stack's floor, same bodies
#   DURATION=20s bench/http_cg.sh BINARY
#   CONNS=1 STORE=redis bench/http_cg.sh BINARY   # one request in flight: one per Redis call
#   STORE=redis bench/http_cg.sh BINARY      # over a real Redis (see below)
#   REDIS_ARGS="--loadmodule /path/libspillway_redis_module.so" STORE=redis bench/http_cg.sh BINARY
#
# STORE=redis starts a redis-server on a free port and serves bench/redis.sh's `one` policy
# over it (one token bucket per user, wrk picking one of 100,000 users per request, all
# allowed; --store-timeout 1s so no decision is made without Redis; REDIS_ARGS are extra
# redis-server arguments, such as the native module's --loadmodule). POLICY=one serves that
# policy and load on the embedded store too (POLICY=example, the built-in example policy with
# bench/check.lua's bodies, is the embedded store's default). POLICY=routes serves `one`'s
# bucket plus ROUTES routes (16 unless given), each adding a limit of its own quota, and the
# requests take the routes in turn: each answer's `RateLimit-Policy` differs from the last
# ROUTES - 1 answers', which measures the serving thread's cache of those values (it keeps
# 8). ROTATE=N takes only N of the routes in turn, spread evenly over the list, so the
# same policy can be measured with values that fit the cache (ROUTES=16 ROTATE=8) and with
# values that do not (ROUTES=16). Callgrind runs the
# server's threads one at a time, so requests per Redis call differ from a free-running
# server; the script prints the mean (spillway_redis_batch_requests over the measured run).
# Profiles stay in /tmp/http_cg/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
source bench/lib.sh
need wrk wrk
need valgrind valgrind
[ $# -ge 1 ] || { echo "usage: $0 BINARY [METHOD PATH]" >&2; exit 2; }
bin=$1; shift
STORE=${STORE:-memory}
case "$STORE" in redis) POLICY=${POLICY:-one} ;; *) POLICY=${POLICY:-example} ;; esac
mkdir -p /tmp/http_cg
tmp=$(mktemp -d)
trap 'stop_all; rm -rf "$tmp"' EXIT
lua=bench/check.lua
serve=()
case "$POLICY" in
  example) ;;
  one)
    users_bucket "$tmp/one.yaml"
    users_load "$tmp/one.lua" "$@"
    lua=$tmp/one.lua
    serve+=(--config "$tmp/one.yaml")
    ;;
  routes)
    routes=${ROUTES:-16}
    rotate=${ROTATE:-$routes}
    users_bucket "$tmp/routes.yaml"
    {
      for ((r = 0; r < routes; r++)); do
        printf '  route-%d:\n    algorithm: token_bucket\n    rate: 1000/s\n' "$r"
        printf '    burst: %d\n    key: [user]\n' $((1000000 + r))
      done
    } >"$tmp/limits.yaml"
    # The route limits go right under `limits:` (before the bucket), the routes at the end.
    awk -v extra="$tmp/limits.yaml" '{print} /^limits:/ {
      while ((getline line < extra) > 0) print line }' "$tmp/routes.yaml" >"$tmp/policy.yaml"
    {
      echo "routes:"
      for ((r = 0; r < routes; r++)); do
        printf '  - match: "POST /r%d"\n    limits: [route-%d]\n' "$r" "$r"
      done
    } >>"$tmp/policy.yaml"
    cat >"$tmp/routes.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/check", nil, '{"user":"u' .. math.random(1, 100000) ..
    '","method":"POST","path":"/r' .. (n % $rotate) * $((routes / rotate)) .. '"}')
end
LUA
    lua=$tmp/routes.lua
    serve+=(--config "$tmp/policy.yaml")
    ;;
  *) echo "POLICY is example, one or routes, not $POLICY" >&2; exit 2 ;;
esac
case "$STORE" in
  memory) ;;
  redis)
    need redis-server redis-server
    need redis-cli redis-tools
    need curl curl
    rport=$(free_port)
    read -r -a redis_args <<<"${REDIS_ARGS:-}"
    start_redis "$rport" "$tmp" "${redis_args[@]}"
    serve+=(--store-url "redis://127.0.0.1:$rport" --store-timeout 1s)
    ;;
  *) echo "STORE is memory or redis, not $STORE" >&2; exit 2 ;;
esac
port=$(free_port)
out=/tmp/http_cg/$(basename "$bin").$STORE-$POLICY.$$.out
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
  "$bin" serve --listen "127.0.0.1:$port" --log-filter warn --http-threads 1 "${serve[@]}" \
  >/dev/null 2>&1 &
pid=$!
pids+=("$pid")
# Start-up under valgrind takes longer than wait_port's default 10 s.
wait_port "$port" 600 || exit 1
# batch_counts: "sum count" of spillway_redis_batch_requests so far ("0 0" without Redis).
batch_counts() {
  [ "$STORE" = redis ] || { echo "0 0"; return; }
  curl -fs "http://127.0.0.1:$port/metrics" | awk '/^spillway_redis_batch_requests_sum/ {s = $2}
    /^spillway_redis_batch_requests_count/ {c = $2} END {printf "%d %d\n", s, c}'
}
wrk -t1 -c"${CONNS:-16}" -d5s -s "$lua" "http://127.0.0.1:$port" -- "$@" >/dev/null
read -r bs0 bc0 < <(batch_counts)
callgrind_control -i on $pid >/dev/null 2>&1
res=$(wrk -t1 -c"${CONNS:-16}" -d"${DURATION:-10s}" -s "$lua" "http://127.0.0.1:$port" -- "$@")
callgrind_control -i off $pid >/dev/null 2>&1
read -r bs1 bc1 < <(batch_counts)
kill -INT $pid; wait $pid 2>/dev/null || true
reqs=$(awk '/requests in/ {print $1}' <<<"$res")
ir=$(awk '/^totals:/ {print $2; exit}' "$out")
batch=""
[ "$STORE" = redis ] && [ "$bc1" -gt "$bc0" ] &&
  batch=", $(awk -v s=$((bs1 - bs0)) -v c=$((bc1 - bc0)) 'BEGIN {printf "%.2f", s / c}') requests per Redis call"
echo "$bin ($STORE, $POLICY) ${*:-POST /v1/check}: $reqs requests, $((ir / reqs)) instructions per request$batch $(grep -o 'Non-2xx.*' <<<"$res" || true)"
