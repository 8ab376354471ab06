#!/usr/bin/env bash
# The cost of knowing who is calling: `/v1/authorize` with an RS256 JWT verified by Spillway
# (policy `principals.jwt`, 1,000 distinct tokens from 500 tenants, each seen again every
# ~1,000 requests, so the verified-token cache holds them all) against the same endpoint with
# the tenant and user in plain headers and no `principals:` section. Two processes of one
# release build, measured alternately in the same run with the same wrk settings. Prints both
# medians and their ratio (target >= 0.90).
#
#   bench/auth.sh                 # 3 rounds of 10 s each
#   ROUNDS=5 DURATION=20s CONNECTIONS=64 bench/auth.sh
#   bench/auth.sh path/to/spillway   # measure that build instead of building target/release
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
source bench/lib.sh
need wrk wrk
need openssl openssl

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
keys=crates/spillway-server/tests/fixtures/principal

if [ $# -eq 0 ]; then
  cargo build --release -q -p spillway-server --bin spillway
  set -- target/release/spillway
fi
bin=$1
work=$(mktemp -d)
trap 'stop_all; rm -rf "$work"' EXIT

# 1,000 RS256 tokens signed with the test key rsa-1, valid for a day.
python3 - "$keys/rsa1.pem" "$work/tokens.txt" <<'PY'
import base64, json, subprocess, sys, time
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
key, out = sys.argv[1], sys.argv[2]
head = b64(json.dumps({"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}).encode())
exp = int(time.time()) + 86400
with open(out, "w") as f:
    for i in range(1000):
        claims = {"sub": f"u{i}", "org": {"id": f"t{i % 500}"}, "plan": "pro", "exp": exp,
                  "iss": "https://auth.bench", "aud": "api"}
        signing = head + "." + b64(json.dumps(claims).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing.encode(),
                             capture_output=True, check=True).stdout
        f.write(signing + "." + b64(sig) + "\n")
PY

limits='default_tier: free
limits:
  user-minute: {algorithm: fixed_window, limit: 1000000000, window: 1m, key: [tenant, user]}
tiers:
  free: {limits: [user-minute]}
  paid: {limits: [user-minute]}'
echo "$limits" >"$work/plain.yaml"
cat >"$work/jwt.yaml" <<YAML
$limits
principals:
  jwt:
    jwks_file: $PWD/$keys/jwks.json
    algorithms: [RS256]
    issuer: https://auth.bench
    audience: api
    claims: {tenant: org.id, user: sub, tier: plan}
    tiers: {pro: paid}
YAML

plain_port=$(free_port)
jwt_port=$(free_port)
"$bin" serve --listen "127.0.0.1:$plain_port" --config "$work/plain.yaml" --log-filter warn >"$work/plain.log" 2>&1 &
pids+=($!)
"$bin" serve --listen "127.0.0.1:$jwt_port" --config "$work/jwt.yaml" --log-filter warn >"$work/jwt.log" 2>&1 &
pids+=($!)
wait_port "$plain_port"
wait_port "$jwt_port"

# run NAME PORT ARGS... -> appends "rps p50_ms p99_ms" to $work/res-NAME
run() {
  local out rps p50 p99
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/auth.lua "http://127.0.0.1:$2" -- "${@:3}")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")" >>"$work/res-$1"
  echo "  $1: $rps req/s, p50 $p50, p99 $p99"
  if grep -q "Non-2xx" <<<"$out"; then echo "  $1: $(grep 'Non-2xx' <<<"$out")"; fi
  return 0
}
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency -s bench/auth.lua (plain: -- plain; jwt: -- token FILE)"
# Warm up: connections, and every token verified once into the cache.
wrk -t1 -c"$CONNECTIONS" -d2s -s bench/auth.lua "http://127.0.0.1:$plain_port" -- plain >/dev/null
wrk -t1 -c"$CONNECTIONS" -d2s -s bench/auth.lua "http://127.0.0.1:$jwt_port" -- token "$work/tokens.txt" >/dev/null
for r in $(seq "$ROUNDS"); do
  echo "round $r"
  run plain "$plain_port" plain
  run jwt "$jwt_port" token "$work/tokens.txt"
done

pl=$(cut -d' ' -f1 "$work/res-plain" | median)
jw=$(cut -d' ' -f1 "$work/res-jwt" | median)
echo
echo "median /v1/authorize, plain headers: $pl req/s (p50 $(cut -d' ' -f2 "$work/res-plain" | median) ms)"
echo "median /v1/authorize, RS256 JWT:     $jw req/s (p50 $(cut -d' ' -f2 "$work/res-jwt" | median) ms)"
awk -v a="$jw" -v b="$pl" 'BEGIN { printf "ratio jwt/plain: %.3f (target >= 0.90)\n", a/b }'
curl -s "http://127.0.0.1:$jwt_port/metrics" | grep -E '^spillway_principal_(token_verifications_total|rejected_total)' || true
