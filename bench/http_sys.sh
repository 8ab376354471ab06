#!/usr/bin/env bash
# System calls and context switches per HTTP request, counted by the kernel (`perf stat` on
# tracepoints and software events, which this VM allows although it has no hardware counters):
# the server's calls while wrk drives it, divided by the requests answered. What the kernel does
# for a request costs CPU that bench/http_cg.sh's user-space instructions do not show; a call
# that finds nothing (a read that returns EAGAIN) or a wake-up that does nothing costs as much
# as thousands of instructions.
#
# The server runs with one HTTP thread (as bench/http_cg.sh's); wrk -t1 -c16 (CONNS=N for
# another count) sends bench/check.lua's bodies for DURATION (5s unless given) after a 2 s
# warm-up. It is a count, not a timing: the rate the run reaches is not reported. Calls that
# several requests share (epoll_wait, a wake-up of the thread) are fewer per request the more
# requests arrive together, so those depend a little on the machine's load; reads and writes
# per request do not.
#
#   bench/http_sys.sh BINARY                  # POST /v1/check on the embedded store
#   bench/http_sys.sh BINARY GET /healthz     # the HTTP stack's floor
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
source bench/lib.sh
need wrk wrk
need perf linux-perf
need curl curl
[ $# -ge 1 ] || { echo "usage: $0 BINARY [METHOD PATH]" >&2; exit 2; }
bin=$1
shift
trap stop_all EXIT
port=$(free_port)
"$bin" serve --listen "127.0.0.1:$port" --log-filter warn --http-threads 1 >/dev/null 2>&1 &
pid=$!
pids+=("$pid")
wait_healthy "$port" "$pid"
wrk -t1 -c"${CONNS:-16}" -d2s -s bench/check.lua "http://127.0.0.1:$port" -- "$@" >/dev/null
events=raw_syscalls:sys_enter,context-switches
for call in read write writev recvfrom sendto epoll_wait epoll_ctl futex; do
  events+=,syscalls:sys_enter_$call
done
out=$(mktemp)
perf stat -x, -e "$events" -p "$pid" -o "$out" &
perf=$!
# perf attaches in the background; give it a moment, so the measured run starts counted.
sleep 0.2
res=$(wrk -t1 -c"${CONNS:-16}" -d"${DURATION:-5s}" -s bench/check.lua \
  "http://127.0.0.1:$port" -- "$@")
kill -INT $perf
wait $perf 2>/dev/null || true
reqs=$(awk '/requests in/ {print $1}' <<<"$res")
echo "$bin ${*:-POST /v1/check}: $reqs requests; per request:"
awk -F, -v reqs="$reqs" '$3 ~ /:|context/ {
  name = $3; sub(/^(raw_)?syscalls:sys_enter_?/, "", name); if (name == "") name = "all calls"
  printf "  %-16s %.3f\n", name, $1 / reqs }' "$out"
rm -f "$out"
