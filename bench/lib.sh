# Helpers the benchmark scripts share; sourced from the repository root.

# The median of the numbers on stdin, one per line (the middle one; the lower middle of an
# even count).
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# A free loopback TCP port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# poll TENTHS WHAT PID CMD...: runs CMD (its output dropped) every tenth of a second until it
# succeeds, for up to TENTHS tenths of a second. Fails with a message naming WHAT if it never
# does, or at once if PID (when not empty) exits first. The one waiting loop of the scripts.
poll() {
  local tenths=$1 what=$2 pid=$3
  shift 3
  for _ in $(seq "$tenths"); do
    "$@" >/dev/null 2>&1 && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      echo "$what exited before it was ready" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "$what was not ready within $((tenths / 10)).$((tenths % 10)) s" >&2
  return 1
}

# Whether something listens on loopback port $1.
port_open() { (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

# Waits for something to listen on loopback port $1: up to 10 s, or $2 tenths of a second.
wait_port() { poll "${2:-100}" "port $1" "" port_open "$1"; }

# User plus system CPU ticks process $1 has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# grpc_fixture DIR CLIENTS: what the gRPC benchmarks serve and send. DIR/conf holds the policy
# and one Envoy domain, `bench`, whose `user` limit is high enough that every call is allowed;
# DIR/frame-I.bin (I from 0 to CLIENTS - 1) is a whole pre-encoded ShouldRateLimit call for
# user-I, as h2load sends a body; DIR/out is for the load generators' files.
grpc_fixture() {
# The server watches its config's directory for edits; h2load's per-call logs go elsewhere so
# their writes do not wake the watcher during the run.
mkdir -p "$1/conf" "$1/out"
cat > "$1/conf/bench.yaml" <<'YAML'
domain: bench
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 100000000}
YAML
cat > "$1/conf/policy.yaml" <<'YAML'
default_tier: free
tiers:
  free: {}
YAML

# One gRPC frame per client: 0x00, 4-byte big-endian length, then a RateLimitRequest
# (domain = 1, descriptors = 2 { entries = 1 { key = 1, value = 2 } }, hits_addend = 3).
python3 - "$1" "$2" <<'PY'
import struct, sys
work, clients = sys.argv[1], int(sys.argv[2])
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)
def field(num, payload):
    return varint(num << 3 | 2) + varint(len(payload)) + payload
for i in range(clients):
    entry = field(1, b"user") + field(2, f"user-{i}".encode())
    message = field(1, b"bench") + field(2, field(1, entry)) + varint(3 << 3) + varint(1)
    with open(f"{work}/frame-{i}.bin", "wb") as f:
        f.write(b"\x00" + struct.pack(">I", len(message)) + message)
PY
}

# h2load_clients URL OUT CLIENTS REQUESTS CONNS STREAMS BODY_OF [LOG]: CLIENTS h2load processes
# side by side, client i sending the gRPC body in the file `BODY_OF i` prints, REQUESTS calls
# over CONNS connections with STREAMS in flight on each; waits for all. Client i's summary goes
# to OUT/h2load-i.out. With LOG, client 0 also logs each call's latency there: one client's
# calls are the sample, since a log line per call from every client costs h2load CPU on the
# cores it shares with the server.
h2load_clients() {
  local url=$1 out=$2 clients=$3 requests=$4 conns=$5 streams=$6 body_of=$7 latency=${8:-}
  local i log pids=()
  for i in $(seq 0 $((clients - 1))); do
    log=()
    [ "$i" -eq 0 ] && [ -n "$latency" ] && log=(--log-file "$latency")
    h2load -n "$requests" -c "$conns" -m "$streams" -t 1 -d "$($body_of "$i")" \
      -H 'content-type: application/grpc' -H 'te: trailers' \
      "${log[@]}" "$url" > "$out/h2load-$i.out" &
    pids+=($!)
  done
  wait "${pids[@]}"
}

# Pinned runs (SERVER_CPUS and LOAD_CPUS, `taskset` CPU lists, both or neither): pin_setup
# moves the calling script, and so all it starts from then on (wrk, h2load, redis-cli), onto
# LOAD_CPUS; `server COMMAND... &` starts a server on SERVER_CPUS, and pin_server PID moves one
# already running there (a redis-server started by start_redis). Pinned, the load generator
# stops taking its share of the server's cores, and the server's figures are per core it has.
# Unset, all three do nothing.
pin_setup() {
  SERVER_CPUS=${SERVER_CPUS:-}
  LOAD_CPUS=${LOAD_CPUS:-}
  [ -n "$SERVER_CPUS$LOAD_CPUS" ] || return 0
  [ -n "$SERVER_CPUS" ] && [ -n "$LOAD_CPUS" ] || { echo "set both SERVER_CPUS and LOAD_CPUS" >&2; exit 2; }
  need taskset util-linux
  taskset -a -p -c "$LOAD_CPUS" $$ >/dev/null
}
# server COMMAND...: execs COMMAND, on SERVER_CPUS when set, so only ever in the background
# (`server ... &`), where $! stays the server's own pid.
server() { if [ -n "${SERVER_CPUS:-}" ]; then exec taskset -c "$SERVER_CPUS" "$@"; else exec "$@"; fi; }
pin_server() { if [ -n "${SERVER_CPUS:-}" ]; then taskset -a -p -c "$SERVER_CPUS" "$1" >/dev/null; fi; }
pin_banner() {
  if [ -n "${SERVER_CPUS:-}" ]; then
    echo "pinned: servers and Redis on CPUs $SERVER_CPUS, load generators on CPUs $LOAD_CPUS"
  fi
}

# Processes a benchmark started and stops between runs; stop_all kills and reaps them. A
# script traps EXIT to call it (with its own temporary files: trap 'stop_all; rm -rf "$tmp"'
# EXIT), so a failed start leaves nothing running.
pids=()
stop_all() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# start_redis PORT DIR [ARGS...]: a redis-server on loopback PORT without persistence, its
# files in DIR, ARGS added; returns once it answers PING. Fails with a message if it exits
# first (a port taken meanwhile, a bad argument) or does not answer within 10 s, rather than
# wait for it forever.
start_redis() {
  local port=$1 dir=$2 pid
  shift 2
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" "$@" \
    >/dev/null &
  pid=$!
  pids+=("$pid")
  poll 100 "redis-server on port $port" "$pid" redis-cli -p "$port" ping
}

# wait_healthy PORT PID: waits for Spillway's /healthz on loopback PORT (up to 30 s); fails
# with a message if process PID exits first.
wait_healthy() { poll 300 "spillway (port $1)" "$2" curl -fs "http://127.0.0.1:$1/healthz"; }

# redis_cpu PORT...: the CPU seconds the Redis servers on these ports have used so far, summed:
# "user sys".
redis_cpu() {
  local port
  for port in "$@"; do redis-cli -p "$port" INFO cpu; done | tr -d '\r' |
    awk -F: '/^used_cpu_user:/ {u += $2} /^used_cpu_sys:/ {s += $2} END {printf "%.6f %.6f\n", u, s}'
}

# users_load FILE [METHOD PATH]: a wrk script sending {"user": ...} (one of 100,000 users
# picked at random per request) as `POST /v1/check`, or as METHOD PATH (`GET /healthz`: the
# same bytes to an endpoint that does no rate-limit work).
users_load() {
  cat >"$1" <<LUA
wrk.method = "${2:-POST}"
wrk.headers["Content-Type"] = "application/json"
request = function()
  return wrk.format(nil, "${3:-/v1/check}", nil, '{"user":"u' .. math.random(1, 100000) .. '"}')
end
LUA
}

# users_bucket FILE: a policy of one token bucket per user (1,000/s, burst 1,000,000), which
# users_load's requests never exhaust.
users_bucket() {
  cat >"$1" <<'YAML'
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
YAML
}

# proc_cpu PID: the CPU seconds process PID has used so far (user + system, all its threads).
proc_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%.6f\n", ($12 + $13) / hz}' \
    "/proc/$1/stat"
}

# proc_switches PID: the context switches (voluntary and not) of all of process PID's threads
# so far.
proc_switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ {n += $2} END {print n + 0}'
}

# redis_load_run PORT LUA CPU_PORT...: warms Spillway on loopback PORT up with wrk (WARMUP s),
# then measures DURATION s (THREADS threads, CONNS connections, script LUA), reading the CPU
# of the Redis servers on CPU_PORT... before and after, and with LOAD_PID set, that process's
# (Spillway's) CPU and context switches too. Prints "us_per_decision rps p99_ms non2xx batch
# sys_us spillway_us ctx": Redis CPU per completed request, the part of it in the kernel, the
# mean requests per Redis call (spillway_redis_batch_requests; "-" for a build without it),
# and, with LOAD_PID ("-" without), Spillway's CPU µs and context switches per request.
redis_load_run() {
  local port=$1 lua=$2 out ub sb ua sa n rps p99 non2xx batch pc0=0 pc1=0 px0=0 px1=0
  shift 2
  wrk -t "$THREADS" -c "$CONNS" -d "${WARMUP}s" -s "$lua" "http://127.0.0.1:$port" >/dev/null
  read -r ub sb < <(redis_cpu "$@")
  if [ -n "${LOAD_PID:-}" ]; then pc0=$(proc_cpu "$LOAD_PID"); px0=$(proc_switches "$LOAD_PID"); fi
  out=$(wrk -t "$THREADS" -c "$CONNS" -d "${DURATION}s" --latency -s "$lua" "http://127.0.0.1:$port")
  if [ -n "${LOAD_PID:-}" ]; then pc1=$(proc_cpu "$LOAD_PID"); px1=$(proc_switches "$LOAD_PID"); fi
  read -r ua sa < <(redis_cpu "$@")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  # wrk prints 850.00us, 1.20ms or 1.05s; in milliseconds:
  p99=$(awk '$1 == "99%" {v = $2; if (v ~ /us$/) v = v / 1000; else if (v ~ /ms$/) v = v + 0;
      else v = v * 1000; print v}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  batch=$(curl -fs "http://127.0.0.1:$port/metrics" | awk '/^spillway_redis_batch_requests_sum/ {s = $2}
      /^spillway_redis_batch_requests_count/ {c = $2} END {if (c > 0) printf "%.2f", s / c; else print "-"}')
  awk -v ub="$ub" -v sb="$sb" -v ua="$ua" -v sa="$sa" -v n="$n" -v r="$rps" -v p="$p99" \
    -v x="${non2xx:-0}" -v m="$batch" -v on="${LOAD_PID:-}" -v pc="$pc0 $pc1" -v px="$px0 $px1" \
    'BEGIN {split(pc, c, " "); split(px, w, " ")
      printf "%.2f %s %s %s %s %.2f", (ua - ub + sa - sb) * 1e6 / n, r, p, x, m, (sa - sb) * 1e6 / n
      if (on != "") printf " %.2f %.3f\n", (c[2] - c[1]) * 1e6 / n, (w[2] - w[1]) / n
      else printf " - -\n"}'
}

# nginx_return_200 DIR PORT: DIR/nginx.conf for the ceiling the HTTP benchmarks compare with:
# one nginx worker answering `return 200` on loopback PORT, no access log, its files in DIR.
# Run it with `nginx -c DIR/nginx.conf -p DIR` (it stays in the foreground).
nginx_return_200() {
  mkdir -p "$1"
  cat >"$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1;
  server { listen 127.0.0.1:$2; location / { return 200; } }
}
CONF
}
