#!/usr/bin/env bash
# Token exchange (RFC 8693) throughput and latency with Cedar policy evaluated, beside
# client_credentials on the same server, per core (server on core 0, load generator on core 1).
#   bench/exchange.sh            # about 3 minutes; results in bench/results/exchange-<UTC time>/
# Knobs: BENCH_REPEAT (3), BENCH_CLOSED_SECONDS (15), BENCH_OPEN_SECONDS (20), BENCH_CONC (64),
# BENCH_REQUESTS (200000 presigned per run), BENCH_SKIP_BUILD=1, BENCH_PORT (18090), OUT=DIR.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH_REPEAT=${BENCH_REPEAT:-3}
BENCH_CLOSED_SECONDS=${BENCH_CLOSED_SECONDS:-15}
BENCH_OPEN_SECONDS=${BENCH_OPEN_SECONDS:-20}
BENCH_CONC=${BENCH_CONC:-64}
BENCH_REQUESTS=${BENCH_REQUESTS:-200000}
BENCH_PORT=${BENCH_PORT:-18090}
OUT=${OUT:-$ROOT/bench/results/exchange-$(date -u +%Y%m%dT%H%M%SZ)}
LOADGEN=$ROOT/target/release/mayfly-loadgen
MAYFLY=$ROOT/target/release/mayfly
WORK=$(mktemp -d /tmp/mayfly-xbench.XXXXXX)
mkdir -p "$OUT"
SERVER=
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
log() { printf '[exchange %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  cargo build --release -p mayfly -p mayfly-loadgen
fi
"$LOADGEN" keygen --out "$WORK/k" 2>/dev/null
mkdir -p "$WORK/policies" "$WORK/data"
# The issuer's key and the client's key are the same file: the load generator signs both kinds.
cat >"$WORK/policies/schema.cedarschema" <<'S'
entity Client;
entity Audience;
entity Workload = {
  issuer: String, subject: String, namespace?: String, service_account?: String,
  repository?: String, repository_owner?: String, ref?: String, environment?: String,
  workflow?: String, actor?: String, project_path?: String, pipeline_source?: String,
  trust_domain?: String,
};
type RequestContext = {
  grant_type: String, requested_ttl: Long, source: String, now: Long, client_id: String, actor: String,
};
action "token", "read", "write" appliesTo {
  principal: [Client, Workload], resource: [Audience], context: RequestContext,
};
S
cat >"$WORK/policies/workloads.cedar" <<'P'
@id("payments-api-read")
permit(principal is Workload, action in [Action::"token", Action::"read"], resource == Audience::"https://api.example.test")
when { principal.issuer == "k8s" && principal has namespace && principal.namespace == "payments" };

@id("no-kube-system")
forbid(principal is Workload, action, resource)
when { principal has namespace && principal.namespace == "kube-system" };
P
cat >"$WORK/mayfly.toml" <<T
listen = "127.0.0.1:$BENCH_PORT"
issuer = "http://127.0.0.1:$BENCH_PORT"
data_dir = "$WORK/data"
trust_domain = "example.org"
[tokens]
signing_alg = "EdDSA"
[audit]
output = "off"
[policy]
dir = "$WORK/policies"
[[clients]]
id = "bench-client"
jwks_file = "$WORK/k/client.jwks.json"
audiences = ["https://api.example.test"]
scopes = ["read", "write"]
[[issuers]]
name = "k8s"
issuer = "https://kubernetes.default.svc.cluster.local"
preset = "kubernetes"
jwks_file = "$WORK/k/client.jwks.json"
audiences = ["mayfly"]
algorithms = ["ES256"]
T
cp "$WORK/mayfly.toml" "$WORK/policies/"*.cedar "$OUT/"
MAYFLY_MASTER_KEY=$(head -c 32 /dev/urandom | base64) taskset -c 0 "$MAYFLY" server --config "$WORK/mayfly.toml" >"$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$BENCH_PORT/healthz" && break; sleep 0.1; done
ARGS=(--url "http://127.0.0.1:$BENCH_PORT/oauth2/token" --aud "http://127.0.0.1:$BENCH_PORT" --key "$WORK/k"
      --client-id bench-client --resource https://api.example.test --scope read --server-pid "$SERVER")
run() { # NAME GRANT [args...]
  local name=$1 grant=$2; shift 2
  timeout 120 taskset -c 1 "$LOADGEN" run "${ARGS[@]}" --grant "$grant" --label "$name" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log" \
    || { log "run $name failed"; cat "$OUT/$name.log" >&2; exit 1; }
  tail -n 1 "$OUT/$name.log" >&2
}
run warmup-x token-exchange --requests 5000 --concurrency "$BENCH_CONC"
run warmup-c client-credentials --requests 5000 --concurrency "$BENCH_CONC"
for i in $(seq 1 "$BENCH_REPEAT"); do
  run "exchange-$i" token-exchange --requests "$BENCH_REQUESTS" --concurrency "$BENCH_CONC" --duration "$BENCH_CLOSED_SECONDS"
  run "cc-$i" client-credentials --requests "$BENCH_REQUESTS" --concurrency "$BENCH_CONC" --duration "$BENCH_CLOSED_SECONDS"
done
med() { jq -s "sort_by(.tokens_per_s) | .[(length - 1) / 2 | floor] | $2" "$OUT"/"$1"-[0-9]*.json; }
PEAK=$(med exchange .tokens_per_s)
HALF=$(awk -v p="$PEAK" 'BEGIN {printf "%d", p / 2}')
run exchange-open token-exchange --rate "$HALF" --duration "$BENCH_OPEN_SECONDS" --concurrency 64
{
  echo "## Token exchange ($(basename "$OUT")), mayfly $(git rev-parse --short HEAD)"
  echo
  echo "| | token exchange (Kubernetes SA token, Cedar) | client_credentials (same server) |"
  echo "|---|---|---|"
  echo "| tokens/s, one core, $BENCH_CONC connections (median; rounds) | $(med exchange '.tokens_per_s | round') ($(jq -rs 'map(.tokens_per_s | round) | join(", ")' "$OUT"/exchange-[0-9]*.json)) | $(med cc '.tokens_per_s | round') ($(jq -rs 'map(.tokens_per_s | round) | join(", ")' "$OUT"/cc-[0-9]*.json)) |"
  echo "| p50 / p99 closed loop (ms) | $(med exchange '.latency_ms.p50_ms * 100 | round / 100') / $(med exchange '.latency_ms.p99_ms * 100 | round / 100') | $(med cc '.latency_ms.p50_ms * 100 | round / 100') / $(med cc '.latency_ms.p99_ms * 100 | round / 100') |"
  echo "| open loop at half the peak ($HALF/s): p50 / p99 / max (ms) | $(jq -r '"\(.latency_ms.p50_ms * 100 | round / 100) / \(.latency_ms.p99_ms * 100 | round / 100) / \(.latency_ms.max_ms * 100 | round / 100)"' "$OUT/exchange-open.json") | |"
} | tee "$OUT/summary.md"
log "results in $OUT"
