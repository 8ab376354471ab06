# Helpers the benchmark scripts share; sourced from the repository root.

# The median of the numbers on stdin, one per line (the middle one; the lower middle of an
# even count).
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# A free loopback TCP port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits for something to listen on loopback port $1: up to 10 s, or $2 tenths of a second.
wait_port() {
  # $2: how many tenths of a second to wait (10 s by default).
  for _ in $(seq "${2:-100}"); do
    (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2
  return 1
}

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
