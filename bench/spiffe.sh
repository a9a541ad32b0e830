#!/usr/bin/env bash
# SPIFFE benchmarks: FetchJWTSVID from `mayfly agent`'s cache through the third-party
# `spiffe` crate client, and X.509-SVID signings per second at the server over the agent API's
# mutual TLS, against the in-process signing ceiling. See docs/PERFORMANCE.md.
#
#   bench/spiffe.sh                 # about 3 minutes; results in bench/results/<UTC time>-spiffe/
#   bench/spiffe.sh --summarize DIR # print the Markdown summary of an earlier run again
#
# Knobs (environment; BENCH_ because mayfly refuses unknown MAYFLY_* variables):
#   BENCH_REPEAT (3): interleaved rounds (FetchJWTSVID x2, ceiling, X.509 on one core), then as
#     many X.509 runs with the server on both cores; medians are reported
#   BENCH_JWT_SECONDS (10) / BENCH_JWT_REQUESTS (200000): bound of each FetchJWTSVID run
#   BENCH_JWT_CONC (8): concurrent Workload API clients in the second FetchJWTSVID run
#   BENCH_X509_SECONDS (10) / BENCH_X509_REQUESTS (100000): bound of each signing run (one CSR
#     is made per request before the clock starts, about 40 µs each on the benchmark's core)
#   BENCH_X509_CONC (64): signings in flight (one mutual-TLS keep-alive connection each)
#   BENCH_CEILING_SECONDS (2): per ceiling measurement (two per round)
#   BENCH_SKIP_BUILD=1, OUT=DIR (default bench/results/<UTC time>-spiffe)
#
# Layout: the server and the agent on core 0, the benchmark client on core 1 ("per core"
# figures); after the rounds, the server restarted on both cores and signing runs with the
# client unpinned. Loopback and a unix socket only; every run is bounded in requests and time;
# everything this script starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# ---- summary (also: bench/spiffe.sh --summarize DIR) ----------------------------------------
summarize() { # DIR
  local dir=$1
  # med PREFIX KEY FIELD: FIELD of the run with the median KEY among DIR/PREFIX-<n>.json
  med() {
    local files=("$dir/$1"-[0-9]*.json)
    [ -e "${files[0]}" ] || { echo null; return; }
    jq -s "sort_by($2) | .[(length - 1) / 2 | floor] | $3" "${files[@]}"
  }
  all() { # PREFIX FIELD: every round's value, comma-separated
    local files=("$dir/$1"-[0-9]*.json)
    [ -e "${files[0]}" ] || { echo -; return; }
    jq -rs "map($2) | join(\", \")" "${files[@]}"
  }
  median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "null"; else print v[int((NR + 1) / 2)] }'; }
  num() { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "null" || v == "") print "-"; else printf f, v }'; }
  # Ratio of signings/s to the ceiling within each round (the host's speed drifts), then median.
  ratios() { # PREFIX
    for f in "$dir/$1"-[0-9]*.json; do
      [ -e "$f" ] || continue
      local i=${f##*-}
      i=${i%.json}
      [ -e "$dir/ceiling-$i.json" ] || continue
      awk -v a="$(jq .signings_per_s "$f")" -v b="$(jq .sign_svid_per_s "$dir/ceiling-$i.json")" \
        'BEGIN { if (b > 0) print a / b }'
    done
  }
  pct_all() { ratios "$1" | awk '{printf "%s%.0f%%", (NR > 1 ? ", " : ""), 100 * $1}'; }
  pct_med() { awk -v r="$(ratios "$1" | median)" 'BEGIN { if (r == "null" || r == "") print "-"; else printf "%.0f%%", 100 * r }'; }
  lat_us() { # PREFIX: p50 / p90 / p99 / max of the median run, µs
    med "$1" .calls_per_s '"\(.latency_us.p50_us | round) / \(.latency_us.p90_us | round) / \(.latency_us.p99_us | round) / \(.latency_us.max_us | round)"' | tr -d '"'
  }
  lat_ms() { # PREFIX: p50 / p99 / max of the median run, ms
    med "$1" .signings_per_s '"\(.latency_us.p50_us / 10 | round / 100) / \(.latency_us.p99_us / 10 | round / 100) / \(.latency_us.max_us / 10 | round / 100)"' | tr -d '"'
  }
  cpu() { # PREFIX KEY: CPU use of the median run
    med "$1" "$2" '"target \((.cpu.target // 0) * 100 | round / 100), client \((.cpu.client // 0) * 100 | round / 100), other \((.cpu.other // 0) * 100 | round / 100)"' | tr -d '"'
  }
  local ceil
  ceil=$(for f in "$dir"/ceiling-[0-9]*.json; do [ -e "$f" ] && jq .sign_svid_per_s "$f"; done | median)
  local ceil_parse
  ceil_parse=$(for f in "$dir"/ceiling-[0-9]*.json; do [ -e "$f" ] && jq .sign_svid_and_parse_per_s "$f"; done | median)

  echo "## SPIFFE results ($(basename "$dir"))"
  echo
  sed 's/^/    /' "$dir/machine.txt"
  echo
  echo "| | median of rounds | each round |"
  echo "|---|---|---|"
  echo "| **FetchJWTSVID, 1 client, sequential**: calls/s | **$(num "$(med jwt-seq .calls_per_s .calls_per_s)" %.0f)** | $(all jwt-seq '.calls_per_s | round') |"
  echo "| ... latency p50 / p90 / p99 / max (µs) | **$(lat_us jwt-seq)** | p99: $(all jwt-seq '.latency_us.p99_us | round') |"
  echo "| ... CPU in cores (target = agent) | $(cpu jwt-seq .calls_per_s) | |"
  echo "| **FetchJWTSVID, $(all jwt-conc .concurrency | cut -d, -f1) concurrent clients**: calls/s | **$(num "$(med jwt-conc .calls_per_s .calls_per_s)" %.0f)** | $(all jwt-conc '.calls_per_s | round') |"
  echo "| ... latency p50 / p90 / p99 / max (µs) | $(lat_us jwt-conc) | p99: $(all jwt-conc '.latency_us.p99_us | round') |"
  echo "| ... CPU in cores (target = agent) | $(cpu jwt-conc .calls_per_s) | |"
  echo "| FetchJWTSVID first call of a process (agent asks the server), µs | $(num "$(med jwt-seq .first_call_us .first_call_us)" %.0f) | $(all jwt-seq '.first_call_us | round') |"
  echo "| token changes during the runs (0 = every call from the cache) | $(all jwt-seq .token_changes), $(all jwt-conc .token_changes) | |"
  echo "| **X.509-SVID signings/s, server on one core**, $(all x509-one .concurrency | cut -d, -f1) in flight | **$(num "$(med x509-one .signings_per_s .signings_per_s)" %.0f)** | $(all x509-one '.signings_per_s | round') |"
  echo "| ... latency p50 / p99 / max (ms) | $(lat_ms x509-one) | p99: $(all x509-one '.latency_us.p99_us / 10 | round / 100') |"
  echo "| ... CPU in cores (target = server) | $(cpu x509-one .signings_per_s) | |"
  echo "| **signing ceiling, one core** (\`X509Ca::sign_svid\`), ops/s | **$(num "$ceil" %.0f)** | $(for f in "$dir"/ceiling-[0-9]*.json; do [ -e "$f" ] && jq '.sign_svid_per_s | round' "$f"; done | paste -sd, | sed 's/,/, /g') |"
  echo "| ... with the leaf parsed back (as the handler does), ops/s | $(num "$ceil_parse" %.0f) | |"
  echo "| **server on one core vs the ceiling** (per-round ratio) | **$(pct_med x509-one)** | $(pct_all x509-one) |"
  echo "| X.509-SVID signings/s, server on both cores, client unpinned | $(num "$(med x509-both .signings_per_s .signings_per_s)" %.0f) | $(all x509-both '.signings_per_s | round') |"
  echo "| ... latency p50 / p99 / max (ms) | $(lat_ms x509-both) | |"
  echo "| ... CPU in cores (target = server) | $(cpu x509-both .signings_per_s) | |"
  for f in "$dir"/idle-rss.json "$dir"/after-rss.json; do
    [ -e "$f" ] && echo "| $(basename "$f" .json) (VmRSS / VmHWM kB) | $(jq -r '"server \(.server_rss_kb) / \(.server_hwm_kb), agent \(.agent_rss_kb) / \(.agent_hwm_kb)"' "$f") | |"
  done
}

if [ "${1:-}" = "--summarize" ]; then
  summarize "${2:?usage: bench/spiffe.sh --summarize RESULTS_DIR}"
  exit 0
fi

BENCH_REPEAT=${BENCH_REPEAT:-3}
BENCH_JWT_SECONDS=${BENCH_JWT_SECONDS:-10}
BENCH_JWT_REQUESTS=${BENCH_JWT_REQUESTS:-200000}
BENCH_JWT_CONC=${BENCH_JWT_CONC:-8}
BENCH_X509_SECONDS=${BENCH_X509_SECONDS:-10}
BENCH_X509_REQUESTS=${BENCH_X509_REQUESTS:-100000}
BENCH_X509_CONC=${BENCH_X509_CONC:-64}
BENCH_CEILING_SECONDS=${BENCH_CEILING_SECONDS:-2}
CAP_SECONDS=120 # hard cap on any single benchmark process
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/bench/results/$STAMP-spiffe}
export RUST_BACKTRACE=0
# The benchmark key of the brief (the data directory is a fresh temporary one).
MASTER_KEY=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
TD=example.org

BENCH=$ROOT/target/release/mayfly-spiffebench
MAYFLY=$ROOT/target/release/mayfly
WORK=$(mktemp -d /tmp/mayfly-spiffebench.XXXXXX)
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

# forget PID: it has been waited for; never signal it again (its number may be reused).
forget() {
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

log() { printf '[spiffe-bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [ "$(nproc)" -lt 2 ]; then
  log "needs 2 cores (server and agent on core 0, benchmark client on core 1); found $(nproc)"
  exit 1
fi
for tool in jq taskset; do
  command -v "$tool" >/dev/null || { log "needs $tool"; exit 1; }
done

# ---- build -------------------------------------------------------------------------------
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  log "cargo build --release -p mayfly -p mayfly-spiffebench"
  cargo build --release -p mayfly -p mayfly-spiffebench
fi
for b in "$MAYFLY" "$BENCH"; do
  [ -x "$b" ] || { log "missing $b (run without BENCH_SKIP_BUILD)"; exit 1; }
done

compiler_running() { pgrep -x rustc >/dev/null || pgrep -x cc1 >/dev/null || pgrep -x cargo >/dev/null; }
if compiler_running; then
  log "WARNING: a compiler is running on this machine; figures will be low and noisy"
fi

# ---- machine and versions ------------------------------------------------------------------
lock_version() { awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock; }
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p')"
  echo "cores: $(nproc) ($(lscpu | sed -n 's/^Thread(s) per core: *//p') thread(s) per core; $(lscpu | sed -n 's/^Hypervisor vendor: *//p') guest)"
  echo "memory: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
  echo "kernel: $(uname -r)"
  echo "rustc: $(rustc --version)"
  echo "crates: spiffe $(lock_version spiffe) (client), rcgen $(lock_version rcgen), aws-lc-rs $(lock_version aws-lc-rs), rustls $(lock_version rustls), tonic $(lock_version tonic), reqwest $(lock_version reqwest)"
  echo "mayfly: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' (+ uncommitted changes in crates/)')"
  echo "layout: server and agent on core 0, benchmark client on core 1; x509-both: server restarted on cores 0-1, client unpinned"
  echo "knobs: BENCH_REPEAT=$BENCH_REPEAT BENCH_JWT_SECONDS=$BENCH_JWT_SECONDS BENCH_JWT_REQUESTS=$BENCH_JWT_REQUESTS BENCH_JWT_CONC=$BENCH_JWT_CONC BENCH_X509_SECONDS=$BENCH_X509_SECONDS BENCH_X509_REQUESTS=$BENCH_X509_REQUESTS BENCH_X509_CONC=$BENCH_X509_CONC BENCH_CEILING_SECONDS=$BENCH_CEILING_SECONDS"
  if compiler_running; then echo "WARNING: a compiler was running at the start of the run"; fi
} | tee "$OUT/machine.txt" >&2

# ---- helpers -------------------------------------------------------------------------------
# Only the master key from here: no MAYFLY_* from the caller's environment.
UNSET=()
for v in $(compgen -e | grep '^MAYFLY_' || true); do UNSET+=(-u "$v"); done
mf() { env "${UNSET[@]}" MAYFLY_MASTER_KEY="$MASTER_KEY" "$MAYFLY" "$@"; }
kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
rss_json() { # FILE
  jq -n --argjson sr "$(kb "$SERVER_PID" VmRSS)" --argjson sh "$(kb "$SERVER_PID" VmHWM)" \
    --argjson ar "$(kb "$AGENT_PID" VmRSS)" --argjson ah "$(kb "$AGENT_PID" VmHWM)" \
    '{server_rss_kb: $sr, server_hwm_kb: $sh, agent_rss_kb: $ar, agent_hwm_kb: $ah}' >"$1"
}
alive() { # PID NAME
  if ! kill -0 "$1" 2>/dev/null; then
    log "$2 exited unexpectedly; its stderr:"
    cat "$OUT/$2.stderr" >&2 || true
    exit 1
  fi
}

# bench NAME CPU-LIST|- ARGS...: one benchmark process, report to $OUT/NAME.json.
bench() {
  local name=$1 cpus=$2
  shift 2
  local pin=()
  [ "$cpus" = - ] || pin=(taskset -c "$cpus")
  # In the background and waited for, so that an interrupt stops it at once (cleanup kills it).
  timeout "$CAP_SECONDS" "${pin[@]}" "$BENCH" "$@" --label "$name" >"$OUT/$name.json" 2>"$OUT/$name.log" &
  local pid=$!
  PIDS+=("$pid")
  local rc=0
  wait "$pid" || rc=$?
  forget "$pid"
  if [ "$rc" -ne 0 ]; then
    log "run $name FAILED (errors or timeout): see $OUT/$name.json and $OUT/$name.log"
    cat "$OUT/$name.log" >&2
    exit 1
  fi
  tail -n 1 "$OUT/$name.log" >&2
  jq -c 'select(.cpu) | .cpu' "$OUT/$name.json" >&2
}

# ---- server ----------------------------------------------------------------------------------
mkdir -p "$WORK/data"
cat >"$WORK/mayfly.toml" <<EOF
listen = "127.0.0.1:0"
data_dir = "$WORK/data"
trust_domain = "$TD"

[audit]
# The JSON-lines copy is off; the hash-chained audit log in the store is always on.
output = "off"

[spiffe]
agent_listen = "127.0.0.1:0"
EOF
cp "$WORK/mayfly.toml" "$OUT/mayfly.toml"

# start_server CPU-LIST NAME: sets SERVER_PID, HTTP_URL and AGENT_API (both listeners on port 0;
# the addresses come from the server's stderr). The server sizes its runtime to the cores it may
# use at start, so moving it to more cores needs a restart, not taskset -p.
SERVER_PID= HTTP_URL= AGENT_API=
start_server() {
  log "mayfly server on cores $1"
  env "${UNSET[@]}" MAYFLY_MASTER_KEY="$MASTER_KEY" taskset -c "$1" "$MAYFLY" server --config "$WORK/mayfly.toml" \
    >"$OUT/$2.stdout" 2>"$OUT/$2.stderr" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  HTTP_URL= AGENT_API=
  for _ in $(seq 1 200); do
    alive "$SERVER_PID" "$2"
    HTTP_URL=$(sed -n 's/.*listening on \(http:\/\/[^ ]*\).*/\1/p' "$OUT/$2.stderr" | head -n 1)
    AGENT_API=$(sed -n 's/.*agent API on \(https:\/\/[^ ]*\).*/\1/p' "$OUT/$2.stderr" | head -n 1)
    [ -n "$HTTP_URL" ] && [ -n "$AGENT_API" ] && break
    sleep 0.1
  done
  if [ -z "$HTTP_URL" ] || [ -z "$AGENT_API" ]; then
    log "the server did not print its addresses; its stderr:"
    cat "$OUT/$2.stderr" >&2
    exit 1
  fi
  log "server: $HTTP_URL, agent API $AGENT_API"
}
stop() { # PID
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget "$1"
}
start_server 0 server

# ---- registration: the agent's workload entry, and the signer's ----------------------------
mf bundle show -c "$WORK/mayfly.toml" >"$WORK/bundle.pem" 2>>"$OUT/setup.log"
mf agent token create -c "$WORK/mayfly.toml" --agent-name node-1 >"$WORK/agent.token" 2>>"$OUT/setup.log"
mf entry add -c "$WORK/mayfly.toml" --spiffe-id "spiffe://$TD/bench" \
  --parent "spiffe://$TD/mayfly/agent/node-1" --selector "unix:uid:$(id -u)" >>"$OUT/setup.log" 2>&1
# The signing benchmark attests as its own agent (a second node): the running agent keeps its
# SVID, and the signed entry belongs to the benchmark's agent identity only.
mf entry add -c "$WORK/mayfly.toml" --spiffe-id "spiffe://$TD/bench-x509" \
  --parent "spiffe://$TD/mayfly/agent/bench-signer" --selector "unix:uid:$(id -u)" >>"$OUT/setup.log" 2>&1

# ---- agent -----------------------------------------------------------------------------------
SOCK=$WORK/agent/public.sock
mkdir -p "$WORK/agent"
log "mayfly agent on core 0, Workload API on $SOCK"
env "${UNSET[@]}" MAYFLY_MASTER_KEY="$MASTER_KEY" taskset -c 0 "$MAYFLY" agent --server "$AGENT_API" --issuer "$HTTP_URL" \
  --trust-domain "$TD" --trust-bundle "$WORK/bundle.pem" --join-token-file "$WORK/agent.token" \
  --socket "$SOCK" >"$OUT/agent.stdout" 2>"$OUT/agent.stderr" &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
for _ in $(seq 1 200); do
  alive "$AGENT_PID" agent
  [ -S "$SOCK" ] && grep -q 'serving the Workload API' "$OUT/agent.stderr" && break
  sleep 0.1
done
[ -S "$SOCK" ] || { log "the agent did not open $SOCK"; cat "$OUT/agent.stderr" >&2; exit 1; }
sleep 1
rss_json "$OUT/idle-rss.json"

steal_ticks() { awk '/^cpu / {print $9}' /proc/stat; }
STEAL0=$(steal_ticks)

# sign NAME CPU-LIST|-: one signing run against the current server. Join tokens are single use:
# one per run (the same agent name attests again, superseding the previous run's SVID).
sign() {
  mf agent token create -c "$WORK/mayfly.toml" --agent-name bench-signer >"$WORK/signer.token" 2>>"$OUT/setup.log"
  bench "$1" "$2" x509 --server "$AGENT_API" --issuer "$HTTP_URL" --trust-domain "$TD" \
    --trust-bundle "$WORK/bundle.pem" --join-token-file "$WORK/signer.token" \
    --spiffe-id "spiffe://$TD/bench-x509" --concurrency "$BENCH_X509_CONC" \
    --requests "$BENCH_X509_REQUESTS" --duration "$BENCH_X509_SECONDS" --target-pid "$SERVER_PID"
}

# ---- rounds ----------------------------------------------------------------------------------
# The host's speed drifts, so each round measures the ceiling right before the signing run it
# is compared with. The agent idles on core 0 during the signing runs (a sync every 5 s).
for i in $(seq 1 "$BENCH_REPEAT"); do
  log "round $i/$BENCH_REPEAT"
  alive "$SERVER_PID" server
  alive "$AGENT_PID" agent

  # Every FetchJWTSVID run is a new process: its first call goes through the server, the rest
  # come from the agent's cache.
  bench "jwt-seq-$i" 1 jwt --socket "$SOCK" --audience bench-aud --concurrency 1 \
    --requests "$BENCH_JWT_REQUESTS" --duration "$BENCH_JWT_SECONDS" --target-pid "$AGENT_PID"
  bench "jwt-conc-$i" 1 jwt --socket "$SOCK" --audience bench-aud --concurrency "$BENCH_JWT_CONC" \
    --requests "$BENCH_JWT_REQUESTS" --duration "$BENCH_JWT_SECONDS" --target-pid "$AGENT_PID"

  bench "ceiling-$i" 0 ceiling --seconds "$BENCH_CEILING_SECONDS"

  sign "x509-one-$i" 1
done

alive "$SERVER_PID" server
alive "$AGENT_PID" agent
rss_json "$OUT/after-rss.json"

# ---- the server on both cores, the client unpinned (sharing them) ------------------------------
# Same data directory (the signer's entry is there); the agent is done and stopped.
stop "$AGENT_PID"
stop "$SERVER_PID"
start_server 0,1 server-both
sleep 1
for i in $(seq 1 "$BENCH_REPEAT"); do
  sign "x509-both-$i" -
done
stop "$SERVER_PID"
{
  echo "steal time during the run: $(( ($(steal_ticks) - STEAL0) / $(getconf CLK_TCK) )) s"
  if compiler_running; then
    echo "WARNING: a compiler was running at the end of the run"
  fi
} | tee -a "$OUT/machine.txt" >&2

# ---- summary ---------------------------------------------------------------------------------
summarize "$OUT" | tee "$OUT/summary.md"
log "results in $OUT"
