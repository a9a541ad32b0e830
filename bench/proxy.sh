#!/usr/bin/env bash
# Legacy translation proxy benchmark: requests/s and latency through `mayfly proxy`
# against calling the same upstream directly, with wrk on loopback, in the same run. Two proxies
# of the same build and config run side by side: `proxy` checks revocation by introspection
# (proxy.revocation = "introspection"), `proxy-statuslist` offline against the issuer's Token
# Status List (proxy.revocation = "status_list"). Each run also reports the introspection calls
# the token server answered during it (its mayfly_request_duration_seconds_count for the
# introspect endpoint, read before and after).
#
#   bench/proxy.sh        # about 2 minutes (release build first); figures on stdout
#
# Knobs (environment; BENCH_ because mayfly refuses unknown MAYFLY_* variables):
#   BENCH_SECONDS (10): length of each wrk run
#   BENCH_CONNS (32): connections of the throughput runs (latency runs use 1)
#   BENCH_REPEAT (3): interleaved rounds (direct, proxy, direct, proxy); medians are reported
#   BENCH_SKIP_BUILD=1: use the binaries already in target/release
#   BENCH_BIN_DIR=DIR: take mayfly and mayfly-proxybench from DIR instead (A/B of two builds;
#     implies BENCH_SKIP_BUILD)
#   BENCH_PERF=PREFIX: record CPU profiles (perf record, DWARF call graphs) of the proxy and
#     of nginx during their last throughput runs into PREFIX.proxy and PREFIX.nginx; read one
#     with `perf report -i PREFIX.proxy --no-children` (needs `apt-get install -y linux-perf`)
#   BENCH_STRACE=PREFIX: count the system calls (strace -c -f) of the proxy and of nginx
#     during their last throughput runs into PREFIX.proxy and PREFIX.nginx (slows those runs
#     a lot: read the counts per request, not the rates; needs `apt-get install -y strace`)
#   BENCH_UPSTREAM_DELAY_MS (0): the upstream waits this long before each answer (no CPU), like
#     a remote API's service time; 0 is the harshest case for the proxy/direct ratio
#
# Pinning (taskset): the proxy (either one; only one is loaded at a time) alone on core 0 (its tokio runtime then runs one worker); wrk,
# the upstream (mayfly-proxybench, one thread) and the token server on core 1. The direct runs
# use the same wrk and upstream on core 1, so the difference is what the proxy adds when it has
# a core of its own, as a sidecar would. Each call through the proxy is a full call: token
# checked (signature verification cached per token and JWKS generation), revocation answer
# cached for revocation_cache (5 s, then one introspection at the server), the key injected,
# the response scrubbed, an audit event committed to the SQLite store (off the response path).
#
# The same calls through nginx (`apt-get install -y nginx-light`; skipped if absent), pinned the
# same way, one worker, upstream keep-alive, injecting the same key and checking nothing: the
# floor for any HTTP reverse proxy on this layout, against which mayfly's token check and audit
# record can be seen apart from the extra hop itself. And through `mayfly-proxybench proxy`, the
# floor of a proxy built on hyper as mayfly is: the same server, client and runtime, forwarding
# with the key added and doing nothing else.
#
# Needs wrk (`apt-get install -y wrk`). Loopback only; every run is bounded in time; everything
# this script starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNS:-32}
REPEAT=${BENCH_REPEAT:-3}
AUD="https://legacy.bench.test"
KEY="sk_bench_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"

command -v wrk >/dev/null || { echo "bench/proxy.sh needs wrk: apt-get install -y wrk" >&2; exit 1; }
if [ -z "${BENCH_SKIP_BUILD:-}" ] && [ -z "${BENCH_BIN_DIR:-}" ]; then
  cargo build --release -q -p mayfly -p mayfly-proxybench
fi
BIN="${BENCH_BIN_DIR:-$ROOT/target/release}"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# wait_for FILE PATTERN: the first URL after PATTERN in FILE (60 s at most).
wait_for() {
  local i
  for i in $(seq 1 600); do
    if grep -q "$2" "$1" 2>/dev/null; then
      grep -o "$2http://[0-9.:]*" "$1" | head -1 | sed "s|^$2||"
      return 0
    fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1:" >&2
  cat "$1" >&2
  return 1
}

export MAYFLY_MASTER_KEY
MAYFLY_MASTER_KEY=$(head -c 32 /dev/urandom | base64)

BENCH_UPSTREAM_KEY="$KEY" taskset -c 1 "$BIN/mayfly-proxybench" 127.0.0.1:0 2>"$WORK/upstream.log" &
PIDS+=($!)
UPSTREAM=$(wait_for "$WORK/upstream.log" "upstream listening on ")

"$BIN/mayfly" keygen --alg ES256 --kid wl --out "$WORK/wl" >/dev/null 2>&1
"$BIN/mayfly" keygen --alg EdDSA --kid proxy --out "$WORK/proxy" >/dev/null 2>&1
cat >"$WORK/mayfly.toml" <<EOF
listen = "127.0.0.1:0"
data_dir = "$WORK/data"
[audit]
output = "off"
[tokens]
max_ttl = "1h"
[[clients]]
id = "wl"
jwks_file = "$WORK/wl.jwks.json"
audiences = ["$AUD"]
scopes = ["read"]
[[clients]]
id = "proxy"
jwks_file = "$WORK/proxy.jwks.json"
audiences = ["$AUD"]
[proxy]
listen = "127.0.0.1:0"
client_id = "proxy"
key_file = "$WORK/proxy.private.jwk.json"
[[proxy.routes]]
name = "bench"
path_prefix = "/bench/"
upstream = "$UPSTREAM"
audience = "$AUD"
scopes = ["read"]
inject = { header = "X-Api-Key", value = "{key}" }
EOF

MAYFLY_LOG=warn taskset -c 1 "$BIN/mayfly" server --config "$WORK/mayfly.toml" 2>"$WORK/server.log" &
PIDS+=($!)
ISSUER=$(wait_for "$WORK/server.log" "listening on ")

BENCH_KEY="$KEY" "$BIN/mayfly" debt add --config "$WORK/mayfly.toml" --name bench \
  --owner bench --expires "$(date -u -d '+30 days' +%F)" --route bench --key-env BENCH_KEY >/dev/null
TOKEN=$("$BIN/mayfly" token get --issuer "$ISSUER" --client-id wl --key "$WORK/wl.private.jwk.json" \
  --audience "$AUD" --scope read)

MAYFLY_LOG=warn MAYFLY_PROXY_ISSUER="$ISSUER" taskset -c 0 "$BIN/mayfly" proxy --config "$WORK/mayfly.toml" \
  2>"$WORK/proxy.log" &
PIDS+=($!)
PROXY=$(wait_for "$WORK/proxy.log" "proxy listening on ")

# Both paths answer 200 before anything is measured; without the token the proxy refuses.
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $KEY" "$UPSTREAM/x")" = 200 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $TOKEN" "$PROXY/bench/x")" = 200 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' "$PROXY/bench/x")" = 401 ]

PROXY_PID=${PIDS[2]}

# The same proxy checking revocation offline against the status list (no client of its own).
MAYFLY_LOG=warn MAYFLY_PROXY_ISSUER="$ISSUER" MAYFLY_PROXY_REVOCATION=status_list \
  taskset -c 0 "$BIN/mayfly" proxy --config "$WORK/mayfly.toml" 2>"$WORK/proxy-sl.log" &
SL_PID=$!
PIDS+=("$SL_PID")
SLPROXY=$(wait_for "$WORK/proxy-sl.log" "proxy listening on ")
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $TOKEN" "$SLPROXY/bench/x")" = 200 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' "$SLPROXY/bench/x")" = 401 ]

# The floor of a hyper-based proxy: the same stack as mayfly proxy (hyper-util's auto server and
# legacy pooled client, a tokio runtime) injecting the same key, and nothing else.
BENCH_UPSTREAM_KEY="$KEY" taskset -c 0 "$BIN/mayfly-proxybench" proxy 127.0.0.1:0 "${UPSTREAM#http://}" \
  2>"$WORK/floor.log" &
FLOOR_PID=$!
PIDS+=("$FLOOR_PID")
FLOOR=$(wait_for "$WORK/floor.log" "floor proxy listening on ")
[ "$(curl -s -o /dev/null -w '%{http_code}' "$FLOOR/bench/x")" = 200 ]

NGINX_PID=
if command -v nginx >/dev/null; then
  mkdir -p "$WORK/nginx"
  NGINX_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream legacy { server ${UPSTREAM#http://}; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /bench/ {
      proxy_pass http://legacy;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "";
      proxy_set_header X-Api-Key "$KEY";
    }
  }
}
EOF
  taskset -c 0 nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" 2>"$WORK/nginx/stderr.log" &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/bench/x" && break
    sleep 0.1
  done
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGINX_PORT/bench/x")" = 200 ]
else
  echo "# nginx not installed: its rows are skipped (apt-get install -y nginx-light)" >&2
fi
# cpu_ticks PID: user + system CPU time of a process, in clock ticks; user_ticks: user only
# (steadier between runs: the system part follows how often the other core sleeps).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
user_ticks() { awk '{ print $14 }' "/proc/$1/stat"; }
TICK_HZ=$(getconf CLK_TCK)
# introspections: how many introspection requests the token server has answered so far.
introspections() {
  curl -s "$ISSUER/metrics" |
    awk '/^mayfly_request_duration_seconds_count\{endpoint="introspect"\}/ { n = $2 } END { print n + 0 }'
}

# run NAME CONNS URL HEADER [PID]: one wrk run; prints "NAME CONNS req/s p50_ms p99_ms
# proxy_cpu_us_per_request proxy_user_cpu_us_per_request introspections" (process PID's CPU
# time, then its user CPU time alone, over the requests it served during the run, for runs
# through a proxy; 0 for direct ones; then the introspection calls the token server answered
# during the run).
run() {
  local out t0 t1 u0 u1 i0 i1 pid=${5:-$PROXY_PID}
  local perf=
  if [ -n "${BENCH_PERF:-}" ] && [ "$1" != direct ] && [ "$2" = "$CONNS" ]; then
    perf record -q -F 1999 --call-graph dwarf,16384 -p "$pid" -o "$BENCH_PERF.$1" -- sleep "$SECONDS_PER_RUN" 2>/dev/null &
    perf=$!
  elif [ -n "${BENCH_STRACE:-}" ] && [ "$1" != direct ] && [ "$2" = "$CONNS" ]; then
    timeout -s INT "$SECONDS_PER_RUN" strace -c -f -p "$pid" -o "$BENCH_STRACE.$1" 2>/dev/null &
    perf=$!
  fi
  i0=$(introspections)
  t0=$(cpu_ticks "$pid")
  u0=$(user_ticks "$pid")
  out=$(taskset -c 1 wrk -t 1 -c "$2" -d "${SECONDS_PER_RUN}s" --latency -H "$4" "$3")
  t1=$(cpu_ticks "$pid")
  u1=$(user_ticks "$pid")
  i1=$(introspections)
  if [ -n "$perf" ]; then wait "$perf" || true; fi
  if grep -q "Non-2xx" <<<"$out"; then
    echo "$1: non-2xx responses:" >&2
    echo "$out" >&2
    exit 1
  fi
  awk -v name="$1" -v conns="$2" -v ticks=$((t1 - t0)) -v uticks=$((u1 - u0)) -v hz="$TICK_HZ" -v intro=$((i1 - i0)) '
    function ms(v) {
      if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
      if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
      if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
      return v
    }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    / requests in / { reqs = $1 }
    END {
      cpu = (name != "direct" && reqs > 0) ? 1e6 * ticks / hz / reqs : 0
      user = (name != "direct" && reqs > 0) ? 1e6 * uticks / hz / reqs : 0
      printf "%s %s %.0f %.3f %.3f %.1f %.1f %d\n", name, conns, rps, p50, p99, cpu, user, intro
    }' <<<"$out"
}

echo "# mayfly proxy benchmark: $(nproc) cores, $(uname -r), wrk ${SECONDS_PER_RUN}s runs, $REPEAT rounds"
echo "# proxy (and nginx) on core 0; wrk, upstream and token server on core 1"
RESULTS="$WORK/results.txt"
: >"$RESULTS"
for i in $(seq 1 "$REPEAT"); do
  run direct 1 "$UPSTREAM/x" "x-api-key: $KEY" >>"$RESULTS"
  run proxy 1 "$PROXY/bench/x" "authorization: Bearer $TOKEN" >>"$RESULTS"
  run direct "$CONNS" "$UPSTREAM/x" "x-api-key: $KEY" >>"$RESULTS"
  run proxy "$CONNS" "$PROXY/bench/x" "authorization: Bearer $TOKEN" >>"$RESULTS"
  run proxy-statuslist 1 "$SLPROXY/bench/x" "authorization: Bearer $TOKEN" "$SL_PID" >>"$RESULTS"
  run proxy-statuslist "$CONNS" "$SLPROXY/bench/x" "authorization: Bearer $TOKEN" "$SL_PID" >>"$RESULTS"
  run hyper-floor 1 "$FLOOR/bench/x" "authorization: Bearer $TOKEN" "$FLOOR_PID" >>"$RESULTS"
  run hyper-floor "$CONNS" "$FLOOR/bench/x" "authorization: Bearer $TOKEN" "$FLOOR_PID" >>"$RESULTS"
  if [ -n "$NGINX_PID" ]; then
    run nginx 1 "http://127.0.0.1:$NGINX_PORT/bench/x" "authorization: Bearer $TOKEN" "$NGINX_PID" >>"$RESULTS"
    run nginx "$CONNS" "http://127.0.0.1:$NGINX_PORT/bench/x" "authorization: Bearer $TOKEN" "$NGINX_PID" >>"$RESULTS"
  fi
done

echo "# every run: mode connections requests/s p50_ms p99_ms proxy_cpu_us_per_request proxy_user_cpu_us_per_request introspections"
cat "$RESULTS"
# Medians per (mode, connections).
med() { # MODE CONNS FIELD
  awk -v m="$1" -v c="$2" -v f="$3" '$1 == m && $2 == c { print $f }' "$RESULTS" | sort -g |
    awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
echo
# total MODE CONNS FIELD: the sum over that mode's runs.
total() { awk -v m="$1" -v c="$2" -v f="$3" '$1 == m && $2 == c { s += $f } END { print s + 0 }' "$RESULTS"; }
echo "| path | connections | requests/s | p50 ms | p99 ms | proxy CPU µs/request | of which user | introspections (all runs) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for c in 1 "$CONNS"; do
  for m in direct proxy proxy-statuslist hyper-floor ${NGINX_PID:+nginx}; do
    echo "| $m | $c | $(med $m "$c" 3) | $(med $m "$c" 4) | $(med $m "$c" 5) | $(med $m "$c" 6) | $(med $m "$c" 7) | $(total $m "$c" 8) |"
  done
done
ADDED=$(awk -v a="$(med proxy 1 4)" -v b="$(med direct 1 4)" 'BEGIN { printf "%.3f", a - b }')
RATIO=$(awk -v a="$(med proxy "$CONNS" 3)" -v b="$(med direct "$CONNS" 3)" 'BEGIN { printf "%.0f", 100 * a / b }')
echo
echo "added p50 latency (1 connection): $ADDED ms (target < 0.3 ms)"
echo "throughput through the proxy ($CONNS connections): $RATIO% of direct (target >= 70%)"
SRATIO=$(awk -v a="$(med proxy-statuslist "$CONNS" 3)" -v b="$(med proxy "$CONNS" 3)" 'BEGIN { printf "%.0f", 100 * a / b }')
echo "status-list revocation ($CONNS connections): $(med proxy-statuslist "$CONNS" 3) requests/s, $SRATIO% of introspection mode's; introspections during its runs: $(( $(total proxy-statuslist 1 8) + $(total proxy-statuslist "$CONNS" 8) )) (introspection mode: $(( $(total proxy 1 8) + $(total proxy "$CONNS" 8) )))"
FRATIO=$(awk -v a="$(med hyper-floor "$CONNS" 3)" -v b="$(med direct "$CONNS" 3)" 'BEGIN { printf "%.0f", 100 * a / b }')
FMRATIO=$(awk -v a="$(med proxy "$CONNS" 3)" -v b="$(med hyper-floor "$CONNS" 3)" 'BEGIN { printf "%.0f", 100 * a / b }')
echo "hyper floor (the same stack, forwarding only), same layout: $FRATIO% of direct; mayfly proxy at $FMRATIO% of it"
if [ -n "$NGINX_PID" ]; then
  NRATIO=$(awk -v a="$(med nginx "$CONNS" 3)" -v b="$(med direct "$CONNS" 3)" 'BEGIN { printf "%.0f", 100 * a / b }')
  NADDED=$(awk -v a="$(med nginx 1 4)" -v b="$(med direct 1 4)" 'BEGIN { printf "%.3f", a - b }')
  MRATIO=$(awk -v a="$(med proxy "$CONNS" 3)" -v b="$(med nginx "$CONNS" 3)" 'BEGIN { printf "%.0f", 100 * a / b }')
  echo "nginx (no token check, no audit), same layout: $NRATIO% of direct, added p50 $NADDED ms; mayfly proxy at $MRATIO% of nginx's throughput"
fi
