#!/usr/bin/env bash
# The tenant catalog at a million tenants (issue 14): import it, then time a node's cold load
# (from `spillway serve` starting until its port accepts: the catalog is loaded before it
# listens) on SQLite and on PostgreSQL, with the process's resident set. The bytes the compiled
# catalog itself holds: `cargo run --release -p spillway-core --example catalog_million`.
#
#   bench/catalog.sh [BINARY]        # default target/release/spillway
#   TENANTS=200000 bench/catalog.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
source bench/lib.sh
BINARY=${1:-target/release/spillway}
TENANTS=${TENANTS:-1000000}
ROUNDS=${ROUNDS:-3}
work=$(mktemp -d)
chmod 755 "$work"
pgpid=""
cleanup() {
  [ -n "$pgpid" ] && kill "$pgpid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

python3 - "$TENANTS" >"$work/tenants.jsonl" <<'PY'
import sys
tiers = ["free", "paid", "enterprise"]
for i in range(int(sys.argv[1])):
    print('{"key":{"kind":"tenant","tenant":"tenant-%07d"},"entry":{"kind":"tenant","body":{"tier":"%s"}}}' % (i, tiers[i % 3]))
PY

# The example policy without its `tenants:` section (those live in the catalog now).
awk '/^tenants:/{f=1;next} f && /^[a-z_]+:/{f=0} !f' examples/spillway.yaml >"$work/policy.yaml"

# Seconds from start to the `catalog loaded` line, then the node is stopped.
cold_load() {
  local url=$1 port start end
  port=$(free_port)
  start=$(date +%s.%N)
  "$BINARY" serve --listen "127.0.0.1:$port" --catalog "$url" \
    --config "$work/policy.yaml" --log-format json >"$work/node.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do
    (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
    sleep 0.02
  done
  end=$(date +%s.%N)
  grep -q '"catalog loaded"' "$work/node.log" || { cat "$work/node.log" >&2; kill "$pid"; return 1; }
  local rss
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c "print(f'  cold start to listening (catalog loaded): {$end - $start:.2f} s, resident {$rss / 1024:.0f} MB')"
}

run() {
  local name=$1 url=$2
  echo "$name: importing $TENANTS tenants"
  "$BINARY" catalog migrate --catalog "$url" >/dev/null
  local t0 t1
  t0=$(date +%s.%N)
  "$BINARY" catalog import "$work/tenants.jsonl" --catalog "$url" --config "$work/policy.yaml" >/dev/null
  t1=$(date +%s.%N)
  python3 -c "print(f'  import: {$t1 - $t0:.1f} s')"
  for _ in $(seq "$ROUNDS"); do cold_load "$url"; done
  # Beside it in the same run: the same node with no catalog, for the baseline.
  local port start end pid
  port=$(free_port)
  start=$(date +%s.%N)
  "$BINARY" serve --listen "127.0.0.1:$port" --config "$work/policy.yaml" >/dev/null 2>&1 &
  pid=$!
  wait_port "$port"
  end=$(date +%s.%N)
  local rss
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c "print(f'  baseline (no catalog): {$end - $start:.2f} s, resident {$rss / 1024:.0f} MB')"
}

run sqlite "sqlite://$work/catalog.db"

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$pgbin" ]; then
  echo "postgres: not installed, skipped"
  exit 0
fi
mkdir -p "$work/pg"
chown nobody "$work/pg"
runuser -u nobody -- "$pgbin/initdb" -D "$work/pg/data" -U postgres --auth=trust --no-sync >/dev/null
pgport=$(free_port)
runuser -u nobody -- "$pgbin/postgres" -D "$work/pg/data" -p "$pgport" -k "$work/pg" \
  -c listen_addresses=127.0.0.1 -c fsync=off >"$work/pg/log" 2>&1 &
pgpid=$!
wait_port "$pgport"
sleep 1
"$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -qc "CREATE DATABASE spillway" >/dev/null
run postgres "postgres://postgres@127.0.0.1:$pgport/spillway"
