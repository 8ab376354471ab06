#!/usr/bin/env bash
# Instructions a Spillway build executes per decision, counted by valgrind's callgrind: unlike
# time, the count barely moves when the machine is busy, so two builds (or one build with two
# sets of flags) compare while other work runs. The count is per call of the given load,
# measured as the difference between a short and a long run of the same server (startup and
# shutdown cancel out). Callgrind runs the server's threads one at a time: the figure says what
# a decision costs in work, not what contention between cores adds.
#
#   bench/callgrind.sh BINARY [SERVE_FLAGS...]
#   LOAD=http CALLS=20000 bench/callgrind.sh target/release/spillway --no-top-k
#   CACHE=1 bench/callgrind.sh B      # also simulated L1 misses per call (I1mr D1mr D1mw)
#
# LOAD=grpc (the default): bench/grpc.sh's ShouldRateLimit calls (4 clients, 4 users);
# LOAD=http: POST /v1/check with 4 clients, each one tenant, user and IP.
# Profiles stay in /tmp/callgrind-spillway/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
source bench/lib.sh
need valgrind valgrind
need h2load nghttp2-client
[ $# -ge 1 ] || { echo "usage: $0 BINARY [SERVE_FLAGS...]" >&2; exit 2; }
binary=$1
shift

LOAD=${LOAD:-grpc}
CALLS=${CALLS:-20000}
out_dir=/tmp/callgrind-spillway
mkdir -p "$out_dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
grpc_fixture "$work" 4
for i in 0 1 2 3; do
  printf '{"tenant":"t%d","user":"u%d","ip":"10.0.0.%d","method":"GET","path":"/v1/items"}' \
    "$i" "$i" "$i" >"$work/body-$i.json"
done
frame_of() { echo "$work/frame-$1.bin"; }
body_of() { echo "$work/body-$1.json"; }
options=(--tool=callgrind)
[ "${CACHE:-0}" = 1 ] && options+=(--cache-sim=yes)

# run CALLS: prints the profile's totals line (Ir first) after CALLS calls.
run() {
  local calls=$1 port gport profile pid answered i pids=()
  shift
  port=$(free_port)
  gport=$(free_port)
  profile="$out_dir/$LOAD-$calls.out"
  valgrind "${options[@]}" --callgrind-out-file="$profile" "$binary" serve \
    --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$gport" --log-filter warn \
    --config "$work/conf/policy.yaml" --envoy-config "$work/conf/bench.yaml" "$@" \
    >/dev/null 2>"$work/valgrind.err" &
  pid=$!
  wait_port "$port" 600 || { echo "the server never listened" >&2; cat "$work/valgrind.err" >&2; kill "$pid"; return 1; }
  if [ "$LOAD" = grpc ]; then
    wait_port "$gport" 600 || { echo "the server never listened for gRPC" >&2; kill "$pid"; return 1; }
    h2load_clients "http://127.0.0.1:$gport/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" \
      "$work/out" 4 $((calls / 4)) 2 8 frame_of
  else
    for i in 0 1 2 3; do
      h2load --h1 -n $((calls / 4)) -c 2 -t 1 -d "$(body_of "$i")" -H 'content-type: application/json' \
        "http://127.0.0.1:$port/v1/check" >"$work/out/h2load-$i.out" &
      pids+=($!)
    done
    wait "${pids[@]}"
  fi
  answered=$(cat "$work"/out/h2load-*.out | awk '/^status codes:/ {n += $3} END {print n}')
  [ "$answered" -eq "$calls" ] || { echo "only $answered of $calls calls answered 2xx" >&2; return 1; }
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  awk '/^totals:/ {$1 = ""; print}' "$profile"
}

short=$((CALLS / 5))
a=$(run "$short" "$@")
b=$(run $((short + CALLS)) "$@")
events=$(awk '/^events:/ {$1 = ""; print}' "$out_dir/$LOAD-$short.out")
python3 - "$CALLS" "$a" "$b" "$events" <<'PY'
import sys
calls = int(sys.argv[1])
a, b, names = sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
print(", ".join(f"{(int(y) - int(x)) / calls:,.1f} {n}" for n, x, y in zip(names, a, b)), "per call")
PY
