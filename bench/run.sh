#!/usr/bin/env bash
# mayfly vs oidc-provider: client_credentials with a fresh ES256 private_key_jwt assertion per
# request, JWT (EdDSA) access tokens, over HTTP/1.1 keep-alive on loopback. See docs/PERFORMANCE.md.
#
#   bench/run.sh                 # everything, results in bench/results/<UTC time>/
#
# Knobs (environment; BENCH_ because mayfly refuses unknown MAYFLY_* variables):
#   BENCH_REPEAT (3): interleaved rounds (ceiling, mayfly, ceiling, floor, oidc-provider); medians
#     are reported. The floor is `mayfly-floor`: HTTP plus the same cryptography, no state.
#   BENCH_CLOSED_SECONDS (15): length of each closed-loop run, capped at
#   BENCH_MAYFLY_REQUESTS (200000) / BENCH_OIDC_REQUESTS (40000) presigned assertions
#   BENCH_CONC (64): connections in the closed loop that measures the peak (64 in open loop)
#   BENCH_CONC_LOW (32): a shorter closed loop per round with fewer connections, for comparison
#   BENCH_OPEN_SECONDS (20): length of the open-loop run at half the peak rate
#   BENCH_CEILING_SECONDS (2): per measurement (four per round)
#   BENCH_PAIRS (8), BENCH_PAIR_SECONDS (3): after the rounds, short closed-loop slices of mayfly,
#     oidc-provider and the floor back to back (ABC, then CBA), whose per-slice ratios give
#     second estimates of mayfly vs oidc-provider and vs the floor, with less of the host's
#     drift in them
#   BENCH_FLOOR_PORT (18082), BENCH_SKIP_BUILD=1, OUT=DIR (default bench/results/<UTC time>)
#
# Layout: servers on core 0, load generator on core 1 ("per core" figures), then mayfly on both
# cores with the load generator unpinned. Loopback only; every run is bounded in requests and
# time; everything this script starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BENCH_MAYFLY_REQUESTS=${BENCH_MAYFLY_REQUESTS:-200000}
BENCH_OIDC_REQUESTS=${BENCH_OIDC_REQUESTS:-40000}
BENCH_CLOSED_SECONDS=${BENCH_CLOSED_SECONDS:-15}
BENCH_REPEAT=${BENCH_REPEAT:-3}
BENCH_CONC=${BENCH_CONC:-64}
BENCH_CONC_LOW=${BENCH_CONC_LOW:-32}
BENCH_OPEN_SECONDS=${BENCH_OPEN_SECONDS:-20}
BENCH_CEILING_SECONDS=${BENCH_CEILING_SECONDS:-2}
BENCH_PAIRS=${BENCH_PAIRS:-8}
BENCH_PAIR_SECONDS=${BENCH_PAIR_SECONDS:-3}
BENCH_MAYFLY_PORT=${BENCH_MAYFLY_PORT:-18080}
BENCH_OIDC_PORT=${BENCH_OIDC_PORT:-18081}
BENCH_FLOOR_PORT=${BENCH_FLOOR_PORT:-18082}
CAP_SECONDS=90 # hard cap on any single load run
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/bench/results/$STAMP}
export RUST_BACKTRACE=0

LOADGEN=$ROOT/target/release/mayfly-loadgen
MAYFLY=$ROOT/target/release/mayfly
FLOOR=$ROOT/target/release/mayfly-floor
WORK=$(mktemp -d /tmp/mayfly-bench.XXXXXX)
mkdir -p "$OUT"

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [ "$(nproc)" -lt 2 ]; then
  log "needs 2 cores (server on core 0, load generator on core 1); found $(nproc)"
  exit 1
fi
# ---- build -------------------------------------------------------------------------------
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  log "cargo build --release -p mayfly -p mayfly-loadgen"
  cargo build --release -p mayfly -p mayfly-loadgen
fi
if [ ! -d bench/oidc-provider/node_modules ]; then
  log "npm ci in bench/oidc-provider"
  (cd bench/oidc-provider && npm ci --no-audit --no-fund)
fi

if pgrep -x rustc >/dev/null || pgrep -x cc1 >/dev/null; then
  log "WARNING: a compiler is running on this machine; figures will be low and noisy"
fi

# ---- machine and versions ------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p')"
  echo "cores: $(nproc) ($(lscpu | sed -n 's/^Thread(s) per core: *//p') thread(s) per core; $(lscpu | sed -n 's/^Hypervisor vendor: *//p') guest)"
  echo "memory: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
  echo "kernel: $(uname -r)"
  echo "rustc: $(rustc --version)"
  echo "node: $(node --version)"
  echo "oidc-provider: $(node -p "require('./bench/oidc-provider/node_modules/oidc-provider/package.json').version")"
  echo "mayfly: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' (+ uncommitted changes in crates/)')"
} | tee "$OUT/machine.txt" >&2

# ---- helpers -------------------------------------------------------------------------------
wait_http() { # URL
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "not answering: $1"
  return 1
}
wait_port() { # PORT
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "nothing listening on port $1"
  return 1
}
kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
stop() { # PID
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# loadgen NAME PID [loadgen run args...]: one run, report to $OUT/NAME.json. The load generator
# reports CPU use during its measured phase: its own, the server's (PID) and the rest of the
# machine's (noise).
loadgen() {
  local name=$1 pid=$2
  shift 2
  if ! timeout "$CAP_SECONDS" "$@" --server-pid "$pid" --label "$name" >"$OUT/$name.json" 2>"$OUT/$name.log"; then
    log "run $name FAILED (errors or timeout): see $OUT/$name.json and $OUT/$name.log"
    cat "$OUT/$name.log" >&2
    return 1
  fi
  tail -n 1 "$OUT/$name.log" >&2
  jq -c '.cpu' "$OUT/$name.json" >&2
}

median_rate() { # NAME-PREFIX: median tokens/s over $OUT/PREFIX-*.json
  jq -s 'map(.tokens_per_s) | sort | .[(length - 1) / 2 | floor]' "$OUT"/"$1"-[0-9]*.json
}

# ---- keys and configs ----------------------------------------------------------------------
"$LOADGEN" keygen --out "$WORK/client" 2>>"$OUT/setup.log"
JWKS=$WORK/client/client.jwks.json

MAYFLY_ISSUER=http://127.0.0.1:$BENCH_MAYFLY_PORT
MAYFLY_URL=$MAYFLY_ISSUER/oauth2/token
OIDC_ISSUER=http://127.0.0.1:$BENCH_OIDC_PORT
OIDC_URL=$OIDC_ISSUER/token
FLOOR_ISSUER=http://127.0.0.1:$BENCH_FLOOR_PORT

write_mayfly_config() { # DATA_DIR NAME
  cat >"$WORK/mayfly.toml" <<EOF
listen = "127.0.0.1:$BENCH_MAYFLY_PORT"
issuer = "$MAYFLY_ISSUER"
data_dir = "$1"

[tokens]
default_ttl = "5m"
signing_alg = "EdDSA"

[audit]
# The JSON-lines copy is off; the hash-chained audit log in the store is always on.
output = "off"

[[clients]]
id = "bench-client"
jwks_file = "$JWKS"
audiences = ["https://api.example.test"]
scopes = ["read", "write"]
EOF
  cp "$WORK/mayfly.toml" "$OUT/mayfly-$2.toml"
}

MAYFLY_PID=
start_mayfly() { # CPU-LIST NAME
  local data=$WORK/data-$2
  mkdir -p "$data"
  write_mayfly_config "$data" "$2"
  # Only the config file and the master key: no MAYFLY_* from the caller's environment.
  local unset=()
  for v in $(compgen -e | grep '^MAYFLY_' || true); do unset+=(-u "$v"); done
  env "${unset[@]}" MAYFLY_MASTER_KEY="$(head -c 32 /dev/urandom | base64)" \
    taskset -c "$1" "$MAYFLY" server --config "$WORK/mayfly.toml" \
    >"$OUT/mayfly-$2.stdout" 2>"$OUT/mayfly-$2.stderr" &
  MAYFLY_PID=$!
  PIDS+=("$MAYFLY_PID")
  wait_http "$MAYFLY_ISSUER/healthz"
}

OIDC_PID=
start_oidc() {
  NODE_ENV=production taskset -c 0 node bench/oidc-provider/server.mjs \
    --jwks "$JWKS" --port "$BENCH_OIDC_PORT" >"$OUT/oidc.stdout" 2>"$OUT/oidc.stderr" &
  OIDC_PID=$!
  PIDS+=("$OIDC_PID")
  wait_port "$BENCH_OIDC_PORT"
}

# The floor: HTTP plus the same cryptography on the same stack as mayfly, and nothing else (no
# audit record, no replay check, no policy). What separates it from the ceiling is the cost of
# HTTP on loopback; what separates mayfly from it is the cost of mayfly's own work.
FLOOR_PID=
start_floor() {
  taskset -c 0 "$FLOOR" --listen "127.0.0.1:$BENCH_FLOOR_PORT" --issuer "$FLOOR_ISSUER" \
    --jwks "$JWKS" >"$OUT/floor.stdout" 2>"$OUT/floor.stderr" &
  FLOOR_PID=$!
  PIDS+=("$FLOOR_PID")
  wait_http "$FLOOR_ISSUER/healthz"
}

MAYFLY_ARGS=(--url "$MAYFLY_URL" --aud "$MAYFLY_ISSUER" --key "$WORK/client" --client-id bench-client
  --resource https://api.example.test --scope read)
OIDC_ARGS=(--url "$OIDC_URL" --aud "$OIDC_ISSUER" --key "$WORK/client" --client-id bench-client
  --resource https://api.example.test --scope read)
FLOOR_ARGS=(--url "$FLOOR_ISSUER/oauth2/token" --aud "$FLOOR_ISSUER" --key "$WORK/client" --client-id bench-client
  --resource https://api.example.test --scope read)
PIN_LG=(taskset -c 1 "$LOADGEN" run)

steal_ticks() { awk '/^cpu / {print $9}' /proc/stat; }
STEAL0=$(steal_ticks)

# ---- one core each: both servers on core 0, the load generator on core 1 --------------------
# The host is a shared VM whose speed drifts by tens of percent within minutes, so the servers
# and the crypto ceiling are measured in interleaved rounds, not one after the other: each
# round is ceiling, mayfly, oidc-provider, and ratios are taken within a round. The server not
# under load sits idle on core 0 meanwhile.
log "mayfly and oidc-provider on core 0, load generator on core 1"
start_mayfly 0 pinned
start_oidc
start_floor
sleep 2
jq -n --argjson m "$(kb "$MAYFLY_PID" VmRSS)" --argjson o "$(kb "$OIDC_PID" VmRSS)" \
  '{mayfly_idle_rss_kb: $m, oidc_idle_rss_kb: $o}' >"$OUT/mem-idle.json"
log "idle VmRSS: mayfly $(kb "$MAYFLY_PID" VmRSS) kB, oidc-provider $(kb "$OIDC_PID" VmRSS) kB"

loadgen mayfly-warmup "$MAYFLY_PID" "${PIN_LG[@]}" "${MAYFLY_ARGS[@]}" --requests 5000 --concurrency "$BENCH_CONC"
# A longer warm-up for oidc-provider: V8 needs a few thousand requests before its JIT settles.
loadgen oidc-warmup "$OIDC_PID" "${PIN_LG[@]}" "${OIDC_ARGS[@]}" --requests 5000 --concurrency "$BENCH_CONC"
loadgen floor-warmup "$FLOOR_PID" "${PIN_LG[@]}" "${FLOOR_ARGS[@]}" --requests 5000 --concurrency "$BENCH_CONC"

for i in $(seq 1 "$BENCH_REPEAT"); do
  log "round $i/$BENCH_REPEAT: crypto ceiling on core 0, ${BENCH_CEILING_SECONDS}s per measurement"
  taskset -c 0 "$LOADGEN" ceiling --seconds "$BENCH_CEILING_SECONDS" >"$OUT/ceiling-$i.json" 2>>"$OUT/setup.log"
  jq -c '{ceiling_ops_per_s, es256_verify_jsonwebtoken_per_s, eddsa_token_sign_per_s}' "$OUT/ceiling-$i.json" >&2
  # Odd rounds measure mayfly first, even rounds oidc-provider first, so that a drift of the
  # host within a round does not always favour the same server.
  oidc_closed() {
    loadgen "oidc-closed-$i" "$OIDC_PID" "${PIN_LG[@]}" "${OIDC_ARGS[@]}" \
      --requests "$BENCH_OIDC_REQUESTS" --concurrency "$BENCH_CONC" --duration "$BENCH_CLOSED_SECONDS"
  }
  if [ $((i % 2)) -eq 0 ]; then oidc_closed; fi
  loadgen "mayfly-closed-$i" "$MAYFLY_PID" "${PIN_LG[@]}" "${MAYFLY_ARGS[@]}" \
    --requests "$BENCH_MAYFLY_REQUESTS" --concurrency "$BENCH_CONC" --duration "$BENCH_CLOSED_SECONDS"
  # The ceiling again right after mayfly's run: its ratio to the ceiling uses the mean of the
  # two, which brackets the run instead of preceding it.
  taskset -c 0 "$LOADGEN" ceiling --seconds "$BENCH_CEILING_SECONDS" >"$OUT/ceiling-post-$i.json" 2>>"$OUT/setup.log"
  loadgen "floor-closed-$i" "$FLOOR_PID" "${PIN_LG[@]}" "${FLOOR_ARGS[@]}" \
    --requests "$BENCH_MAYFLY_REQUESTS" --concurrency "$BENCH_CONC" --duration "$BENCH_CLOSED_SECONDS"
  if [ $((i % 2)) -eq 1 ]; then oidc_closed; fi
  # Fewer connections: mayfly waits on its fsync with every request it holds, so it needs more
  # requests in flight than a server that writes nothing to keep its core busy.
  loadgen "mayfly-low-$i" "$MAYFLY_PID" "${PIN_LG[@]}" "${MAYFLY_ARGS[@]}" \
    --requests "$BENCH_MAYFLY_REQUESTS" --concurrency "$BENCH_CONC_LOW" --duration 8
  loadgen "oidc-low-$i" "$OIDC_PID" "${PIN_LG[@]}" "${OIDC_ARGS[@]}" \
    --requests "$BENCH_OIDC_REQUESTS" --concurrency "$BENCH_CONC_LOW" --duration 8
done

# Paired slices: the rounds above measure each server for 15 s, a minute or so apart, and the
# host's speed drifts by tens of percent over that time (per-round ratios of one run have
# ranged from 3.6x to 5.3x). Here the servers take turns for a few seconds each, in ABC CBA
# order (mayfly, oidc-provider, floor in odd slices; the reverse in even ones), and each slice
# gives one ratio per pair of servers: what drifts slowly cancels.
log "paired slices: $BENCH_PAIRS x (mayfly, oidc-provider, floor), ${BENCH_PAIR_SECONDS}s each"
slice() { # NAME PID PRESIGNED [loadgen run args...]: one slice of pair $k
  local name=$1 pid=$2 n=$3
  shift 3
  loadgen "slice-$name-$k" "$pid" "${PIN_LG[@]}" "$@" \
    --requests "$n" --concurrency "$BENCH_CONC" --duration "$BENCH_PAIR_SECONDS"
}
for k in $(seq 1 "$BENCH_PAIRS"); do
  order=(mayfly oidc floor)
  [ $((k % 2)) -eq 1 ] || order=(floor oidc mayfly)
  for who in "${order[@]}"; do
    case $who in
      mayfly) slice mayfly "$MAYFLY_PID" $((BENCH_PAIR_SECONDS * 15000)) "${MAYFLY_ARGS[@]}" ;;
      oidc) slice oidc "$OIDC_PID" $((BENCH_PAIR_SECONDS * 4000)) "${OIDC_ARGS[@]}" ;;
      floor) slice floor "$FLOOR_PID" $((BENCH_PAIR_SECONDS * 15000)) "${FLOOR_ARGS[@]}" ;;
    esac
  done
done

PEAK=$(median_rate mayfly-closed)
HALF=$(awk -v p="$PEAK" 'BEGIN {printf "%d", p / 2}')
log "mayfly open loop at half its median peak ($PEAK/s): $HALF/s for ${BENCH_OPEN_SECONDS}s"
loadgen mayfly-open-half "$MAYFLY_PID" "${PIN_LG[@]}" "${MAYFLY_ARGS[@]}" \
  --rate "$HALF" --duration "$BENCH_OPEN_SECONDS" --concurrency 64
OPEAK=$(median_rate oidc-closed)
OHALF=$(awk -v p="$OPEAK" 'BEGIN {printf "%d", p / 2}')
log "oidc-provider open loop at half its median peak ($OPEAK/s): $OHALF/s for ${BENCH_OPEN_SECONDS}s"
loadgen oidc-open-half "$OIDC_PID" "${PIN_LG[@]}" "${OIDC_ARGS[@]}" \
  --rate "$OHALF" --duration "$BENCH_OPEN_SECONDS" --concurrency 64

jq -n --argjson rss "$(kb "$MAYFLY_PID" VmRSS)" --argjson hwm "$(kb "$MAYFLY_PID" VmHWM)" \
  '{after_load_rss_kb: $rss, peak_hwm_kb: $hwm}' >"$OUT/mayfly-mem-pinned.json"
jq -n --argjson rss "$(kb "$OIDC_PID" VmRSS)" --argjson hwm "$(kb "$OIDC_PID" VmHWM)" \
  '{after_load_rss_kb: $rss, peak_hwm_kb: $hwm}' >"$OUT/oidc-mem.json"
log "after load: mayfly VmRSS $(kb "$MAYFLY_PID" VmRSS) kB VmHWM $(kb "$MAYFLY_PID" VmHWM) kB;" \
  "oidc-provider VmRSS $(kb "$OIDC_PID" VmRSS) kB VmHWM $(kb "$OIDC_PID" VmHWM) kB"
stop "$MAYFLY_PID"
stop "$OIDC_PID"
stop "$FLOOR_PID"

# ---- mayfly on both cores, the load generator unpinned (sharing them) ------------------------
log "mayfly on both cores, load generator unpinned"
start_mayfly 0,1 both
sleep 1
loadgen mayfly2-warmup "$MAYFLY_PID" "$LOADGEN" run "${MAYFLY_ARGS[@]}" --requests 5000 --concurrency 64
for i in $(seq 1 "$BENCH_REPEAT"); do
  loadgen "mayfly2-closed-$i" "$MAYFLY_PID" "$LOADGEN" run "${MAYFLY_ARGS[@]}" \
    --requests "$BENCH_MAYFLY_REQUESTS" --concurrency 64 --duration "$BENCH_CLOSED_SECONDS"
done
jq -n --argjson rss "$(kb "$MAYFLY_PID" VmRSS)" --argjson hwm "$(kb "$MAYFLY_PID" VmHWM)" \
  '{after_load_rss_kb: $rss, peak_hwm_kb: $hwm}' >"$OUT/mayfly-mem-both.json"
stop "$MAYFLY_PID"

{
  echo "steal time during the run: $(( ($(steal_ticks) - STEAL0) / $(getconf CLK_TCK) )) s"
  if pgrep -x rustc >/dev/null || pgrep -x cc1 >/dev/null; then
    echo "WARNING: a compiler was running at the end of the run"
  fi
} | tee -a "$OUT/machine.txt" >&2

# ---- summary ---------------------------------------------------------------------------------
bash "$ROOT/bench/summarize.sh" "$OUT" | tee "$OUT/summary.md"
log "results in $OUT"
