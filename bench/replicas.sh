#!/usr/bin/env bash
# Token issuance (client_credentials, a fresh ES256 assertion per request) on the SQLite default,
# on PostgreSQL with one mayfly replica, and with two replicas sharing it, in the same run.
#   bench/replicas.sh        # about 3 minutes; results in bench/results/replicas-<UTC time>/
# Everything shares this machine's cores: the replicas, PostgreSQL and the load generator are not
# pinned (with two cores, pinning cannot give each part its own). Knobs: BENCH_REPEAT (3),
# BENCH_SECONDS (15), BENCH_CONC (64 in all, split across replicas), BENCH_SKIP_BUILD=1,
# TEST_PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/test), OUT=DIR.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH_REPEAT=${BENCH_REPEAT:-3}
BENCH_SECONDS=${BENCH_SECONDS:-15}
BENCH_CONC=${BENCH_CONC:-64}
PG_ADMIN=${TEST_PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test}
PG_BASE=${PG_ADMIN%/*}
DB=mayfly_bench_$(date -u +%H%M%S)
OUT=${OUT:-$ROOT/bench/results/replicas-$(date -u +%Y%m%dT%H%M%SZ)}
LOADGEN=$ROOT/target/release/mayfly-loadgen
MAYFLY=$ROOT/target/release/mayfly
WORK=$(mktemp -d /tmp/mayfly-rbench.XXXXXX)
mkdir -p "$OUT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { printf '[replicas %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

[ -n "${BENCH_SKIP_BUILD:-}" ] || cargo build --release -p mayfly -p mayfly-loadgen
psql "$PG_ADMIN" -qc "CREATE DATABASE $DB" >/dev/null
{
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
  echo "postgresql: $(psql "$PG_ADMIN" -Atc 'show server_version'), synchronous_commit $(psql "$PG_ADMIN" -Atc 'show synchronous_commit'), fsync $(psql "$PG_ADMIN" -Atc 'show fsync')"
  echo "mayfly: $(git rev-parse --short HEAD)"
} | tee "$OUT/machine.txt" >&2
"$LOADGEN" keygen --out "$WORK/k" 2>/dev/null
export MAYFLY_MASTER_KEY
MAYFLY_MASTER_KEY=$(head -c 32 /dev/urandom | base64)
ISSUER=http://127.0.0.1:18100
config() { # NAME PORT [DATABASE]
  mkdir -p "$WORK/$1"
  {
    echo "listen = \"127.0.0.1:$2\""
    echo "issuer = \"$ISSUER\""
    echo "data_dir = \"$WORK/$1/data\""
    [ -z "${3:-}" ] || echo "database = \"$3\""
    printf '[tokens]\nsigning_alg = "EdDSA"\n[audit]\noutput = "off"\n[[clients]]\nid = "bench-client"\n'
    echo "jwks_file = \"$WORK/k/client.jwks.json\""
    printf 'audiences = ["https://api.example.test"]\nscopes = ["read", "write"]\n'
  } >"$WORK/$1/mayfly.toml"
}
start() { # NAME PORT
  "$MAYFLY" server --config "$WORK/$1/mayfly.toml" >"$OUT/$1.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$2/healthz" 2>/dev/null && return 0; sleep 0.1; done
  log "$1 did not start"; cat "$OUT/$1.log" >&2; exit 1
}
# load NAME PORT... : one closed loop per replica (connections split evenly), in parallel.
load() {
  local name=$1; shift
  local n=$# i=0 conc=$((BENCH_CONC / $#)) pids=()
  for port in "$@"; do
    i=$((i + 1))
    "$LOADGEN" run --url "http://127.0.0.1:$port/oauth2/token" --aud "$ISSUER" --key "$WORK/k" \
      --client-id bench-client --resource https://api.example.test --scope read \
      --requests 150000 --concurrency "$conc" --duration "$BENCH_SECONDS" --label "$name-$i" \
      >"$OUT/$name.part$i.json" 2>"$OUT/$name.part$i.log" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { log "$name failed"; cat "$OUT/$name".part*.log >&2; exit 1; }; done
  jq -s '{tokens_per_s: (map(.tokens_per_s) | add), p50_ms: (map(.latency_ms.p50_ms) | max), p99_ms: (map(.latency_ms.p99_ms) | max), errors: (map(.error_count) | add)}' \
    "$OUT/$name".part*.json >"$OUT/$name.json"
  log "$name: $(jq -c . "$OUT/$name.json")"
}
config sqlite 18100
config pg1 18101 "$PG_BASE/$DB"
config pg2 18102 "$PG_BASE/$DB"
start sqlite 18100
start pg1 18101
start pg2 18102
# Warm-up (and the PostgreSQL replicas' first keys).
BENCH_SECONDS=3 load warm-sqlite 18100
BENCH_SECONDS=3 load warm-pg 18101 18102
for r in $(seq 1 "$BENCH_REPEAT"); do
  load "sqlite-$r" 18100
  load "pg-one-$r" 18101
  load "pg-two-$r" 18101 18102
done
med() { jq -s "sort_by(.tokens_per_s) | .[(length - 1) / 2 | floor] | $2" "$OUT"/"$1"-[0-9].json; }
all() { jq -rs 'map(.tokens_per_s | round) | join(", ")' "$OUT"/"$1"-[0-9].json; }
{
  echo "## Replicas ($(basename "$OUT"))"
  echo
  sed 's/^/    /' "$OUT/machine.txt"
  echo
  echo "| store | tokens/s (median; rounds) | p50 / p99 (ms) |"
  echo "|---|---|---|"
  for s in sqlite pg-one pg-two; do
    echo "| $s | $(med "$s" '.tokens_per_s | round') ($(all "$s")) | $(med "$s" '.p50_ms * 100 | round / 100') / $(med "$s" '.p99_ms * 100 | round / 100') |"
  done
} | tee "$OUT/summary.md"
log "results in $OUT"
