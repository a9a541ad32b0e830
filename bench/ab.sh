#!/usr/bin/env bash
# A/B of mayfly builds on the token path, for changes too small to see through bench/run.sh's
# host noise: every binary runs its own server pinned to core 0 (all idle but the one under
# load), the load generator on core 1, and each round measures the crypto ceiling then each
# binary in turn for SECS seconds, so the ratios within a round share the host's mood.
#
#   cargo build --release -p mayfly-loadgen
#   bench/ab.sh ROUNDS OLD_BINARY NEW_BINARY [...]     # CONC (64), SECS (10)
#   EXTRA_2="--param lease=new" bench/ab.sh 10 OLD NEW NEW  # binary 2's requests open a lease each
#
# Prints one line per round: the ceiling (ops/s) and each binary's tokens/s and % of it.
set -euo pipefail
ROUNDS=$1; shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOADGEN=$ROOT/target/release/mayfly-loadgen
W=$(mktemp -d /tmp/ab.XXXX)
$LOADGEN keygen --out $W/client 2>/dev/null
PIDS=(); trap 'kill ${PIDS[@]} 2>/dev/null; rm -rf $W' EXIT
i=0
for b in "$@"; do
  PORT=$((18100+i)); mkdir -p $W/d$i
  cat > $W/m$i.toml <<EOT
listen = "127.0.0.1:$PORT"
issuer = "http://127.0.0.1:$PORT"
data_dir = "$W/d$i"
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
  MAYFLY_MASTER_KEY="$(head -c 32 /dev/urandom | base64)" taskset -c 0 $b server --config $W/m$i.toml >$W/out$i 2>$W/err$i &
  PIDS+=($!)
  for _ in $(seq 50); do curl -fs -o /dev/null http://127.0.0.1:$PORT/healthz && break; sleep 0.1; done
  i=$((i+1))
done
args() { echo --url http://127.0.0.1:$1/oauth2/token --aud http://127.0.0.1:$1 --key $W/client --client-id bench-client --resource https://api.example.test --scope read; }
for j in $(seq 0 $((i-1))); do extra=EXTRA_$j; taskset -c 1 $LOADGEN run $(args $((18100+j))) ${!extra:-} --requests 5000 --concurrency 64 --server-pid ${PIDS[$j]} --label w >/dev/null 2>&1; done
for r in $(seq $ROUNDS); do
  c=$(taskset -c 0 $LOADGEN ceiling --seconds 2 2>/dev/null | jq .ceiling_ops_per_s)
  line="round $r ceiling $c"
  for j in $(seq 0 $((i-1))); do
    extra=EXTRA_$j
    t=$(taskset -c 1 $LOADGEN run $(args $((18100+j))) ${!extra:-} --requests 200000 --concurrency ${CONC:-64} --duration ${SECS:-10} --server-pid ${PIDS[$j]} --label m 2>/dev/null | jq '.tokens_per_s|floor')
    line="$line | bin$j $t ($(awk -v t=$t -v c=$c 'BEGIN{printf "%.1f%%", 100*t/c}'))"
  done
  echo "$line"
done
