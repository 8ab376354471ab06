#!/usr/bin/env bash
# Envoy RLS throughput: h2load sends pre-encoded ShouldRateLimit calls to a release build of
# Spillway on the embedded (in-memory) store and reports decisions per second and p99 latency.
#
# Two load generators, one after the other against the same server:
# - h2load repeats one request body, so its key variety comes from several h2load processes
#   side by side, each with its own descriptor value (BENCH_CLIENTS of them);
# - our own generator (crates/spillway-server/examples/rls_load.rs) cycles through
#   BENCH_VALUES descriptor values over 4 connections with 32 calls in flight on each, the
#   connections split over BENCH_LOAD_THREADS threads (2: one per core, as h2load's several
#   processes spread over both). It costs more CPU per call than h2load, which shares the
#   machine with the server.
# Limits are high, so nearly every call is allowed, which is the common case in production.
# Between the two, h2load also calls the server's grpc.health.v1 Check with the same settings:
# a call that does no rate-limit work, the floor of the gRPC stack on this machine.
#
# Usage: bench/grpc.sh [REQUESTS_PER_CLIENT]
#   env: BENCH_CLIENTS, BENCH_CONNS, BENCH_STREAMS (h2load); BENCH_VALUES, BENCH_SECONDS,
#        BENCH_LOAD_THREADS (rls_load)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
source bench/lib.sh
need h2load nghttp2-client
need python3 python3

requests=${1:-200000}
clients=${BENCH_CLIENTS:-4}
conns=${BENCH_CONNS:-4}
streams=${BENCH_STREAMS:-32}

values=${BENCH_VALUES:-100000}
seconds=${BENCH_SECONDS:-10}
load_threads=${BENCH_LOAD_THREADS:-2}

cargo build --release -q -p spillway-server --bin spillway --example rls_load
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

grpc_fixture "$work" "$clients"

target/release/spillway serve --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 \
  --config "$work/conf/policy.yaml" --envoy-config "$work/conf/bench.yaml" --log-filter warn,spillway_server=info \
  > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  grep -q "grpc listening on" "$work/server.log" && break
  sleep 0.1
done
addr=$(grep -o "grpc listening on [0-9.:]*" "$work/server.log" | awk '{print $4}')
[ -n "$addr" ] || { cat "$work/server.log"; exit 1; }


# h2load_run WHAT METHOD FRAME_OF: BENCH_CLIENTS h2load processes side by side, client i sending
# the body file `FRAME_OF i` to METHOD; prints throughput, latency and the server's CPU.
h2load_run() {
  local what=$1 url="http://$addr/$2" frame_of=$3 ticks0 ticks1 start end
  rm -f "$work"/out/*
  ticks0=$(cpu_ticks "$server")
  start=$(date +%s.%N)
  h2load_clients "$url" "$work/out" "$clients" "$requests" "$conns" "$streams" "$frame_of" \
    "$work/out/latency.txt"
  end=$(date +%s.%N)
  ticks1=$(cpu_ticks "$server")
  echo "$what:"
  python3 - "$work" "$clients" "$start" "$end" "$((ticks1 - ticks0))" "$(getconf CLK_TCK)" <<'PY'
import glob, re, sys
work, clients, start, end = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
server_cpu = int(sys.argv[5]) / int(sys.argv[6])
done = ok = 0
for path in glob.glob(f"{work}/out/h2load-*.out"):
    text = open(path).read()
    done += int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", text).group(1))
    ok += int(re.search(r"status codes: (\d+) 2xx", text).group(1))
latencies = sorted(int(f[2]) for f in map(str.split, open(f"{work}/out/latency.txt")) if len(f) >= 3)
p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000
secs = end - start
print(f"  calls: {done} ({ok} with HTTP 200) in {secs:.2f}s from {clients} h2load clients")
print(f"  throughput: {done / secs:,.0f} calls/s")
print(f"  latency (client 0's {len(latencies)} calls): p50 {p(0.50):.2f} ms, p99 {p(0.99):.2f} ms, max {latencies[-1] / 1000:.2f} ms")
print(f"  server CPU: {server_cpu / secs:.2f} cores ({server_cpu / done * 1e6:.1f} us per call); h2load had the rest")
PY
}

rls_frame() { echo "$work/frame-$1.bin"; }
# An empty HealthCheckRequest: a gRPC frame header with length 0.
printf '\x00\x00\x00\x00\x00' > "$work/health.bin"
health_frame() { echo "$work/health.bin"; }

h2load_run "ShouldRateLimit (h2load)" envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit rls_frame
# The floor: tonic's own health service on the same port and connections settings, which does
# no rate-limit work: what tonic, h2 and hyper cost per call on this machine.
h2load_run "grpc.health.v1 Check, the gRPC stack's floor (h2load, same settings)" grpc.health.v1.Health/Check health_frame

echo
echo "rls_load over $values descriptor values, $load_threads threads:"
target/release/examples/rls_load --addr "$addr" --values "$values" --seconds "$seconds" \
  --threads "$load_threads" --server-pid "$server"
