#!/usr/bin/env bash
# Where the server's CPU goes on the token path: one server pinned to core 0 under a 12 s
# closed loop of client_credentials (64 connections, load on core 1), `perf record` of the
# server for 6 s of it, then the inclusive share of a few SQLite and kernel symbols.
#
#   cargo build --release -p mayfly -p mayfly-loadgen
#   bench/profile.sh BINARY [loadgen run arguments, e.g. --param lease=new]
#
# Needs perf (linux-perf). Prints the report's lines for the symbols and the run's tokens/s.
set -euo pipefail
B=$1; shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
L=$ROOT/target/release/mayfly-loadgen
W=$(mktemp -d /tmp/mayfly-profile.XXXX)
$L keygen --out $W/client >/dev/null 2>&1
mkdir -p $W/d
cat > $W/m.toml <<EOT
listen = "127.0.0.1:18200"
issuer = "http://127.0.0.1:18200"
data_dir = "$W/d"
[tokens]
default_ttl = "5m"
signing_alg = "EdDSA"
[audit]
output = "off"
[[clients]]
id = "bench-client"
jwks_file = "$W/client/client.jwks.json"
audiences = ["https://api.example.test"]
scopes = ["read", "write"]
EOT
MAYFLY_MASTER_KEY="$(head -c 32 /dev/urandom | base64)" taskset -c 0 "$B" server --config $W/m.toml >$W/out 2>$W/err &
SP=$!
trap 'kill $SP 2>/dev/null; wait $SP 2>/dev/null' EXIT
for _ in $(seq 50); do curl -fs -o /dev/null http://127.0.0.1:18200/healthz && break; sleep 0.1; done
A=(--url http://127.0.0.1:18200/oauth2/token --aud http://127.0.0.1:18200 --key $W/client
  --client-id bench-client --resource https://api.example.test --scope read "$@")
taskset -c 1 $L run "${A[@]}" --requests 5000 --concurrency 64 >/dev/null 2>&1
taskset -c 1 $L run "${A[@]}" --requests 200000 --concurrency 64 --duration 12 >$W/run.json 2>/dev/null &
LP=$!
sleep 3
perf record -F 999 -g -p $SP -o $W/perf.data -- sleep 6 >/dev/null 2>&1
wait $LP
perf report -i $W/perf.data --children --sort symbol --stdio -g none 2>/dev/null |
  grep -E '\] (sqlite3_step|__libc_pwrite|fsync|sqlite3BtreeInsert)$' | sed 's/  */ /g'
echo "tokens/s $(jq .tokens_per_s $W/run.json)   (perf data: $W/perf.data)"
