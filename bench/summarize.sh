#!/usr/bin/env bash
# Prints a Markdown summary of one bench/run.sh results directory: bench/summarize.sh DIR
set -euo pipefail
DIR=${1:?usage: bench/summarize.sh RESULTS_DIR}
cd "$DIR"

# med PREFIX FIELD: FIELD of the run with the median tokens/s among PREFIX-<n>.json.
med() {
  local files=("$1"-[0-9]*.json)
  [ -e "${files[0]}" ] || { echo null; return; }
  jq -s "sort_by(.tokens_per_s) | .[(length - 1) / 2 | floor] | $2" "${files[@]}"
}
all() { # PREFIX FIELD: every run's value, comma-separated
  local files=("$1"-[0-9]*.json)
  [ -e "${files[0]}" ] || { echo -; return; }
  jq -rs "map($2) | join(\", \")" "${files[@]}"
}
get() { if [ -e "$1" ]; then jq -r "$2" "$1"; else echo null; fi; }
num() { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "null" || v == "") print "-"; else printf f, v }'; }
mb() { awk -v k="$1" 'BEGIN { if (k == "null" || k == "") print "-"; else printf "%.1f MB", k / 1024 }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "null"; else print v[int((NR + 1) / 2)] }'; }

# Ratios within each round (the host's speed drifts between rounds), then their median.
paired() { # A-PREFIX A-FIELD B-PREFIX B-FIELD
  for f in "$1"-[0-9]*.json; do
    [ -e "$f" ] || continue
    local i=${f##*-}
    i=${i%.json}
    [ -e "$3-$i.json" ] || continue
    awk -v a="$(jq "$2" "$f")" -v b="$(jq "$4" "$3-$i.json")" 'BEGIN { if (b > 0) print a / b }'
  done
}
# paired_ceiling PREFIX: per round, PREFIX's tokens/s over the crypto ceiling of that round:
# the mean of the measurements before and after mayfly's closed-loop run where both exist.
paired_ceiling() {
  for f in "$1"-[0-9]*.json; do
    [ -e "$f" ] || continue
    local i=${f##*-}
    i=${i%.json}
    [ -e "ceiling-$i.json" ] || continue
    local pre post
    pre=$(jq .ceiling_ops_per_s "ceiling-$i.json")
    post=$(get "ceiling-post-$i.json" .ceiling_ops_per_s)
    awk -v a="$(jq .tokens_per_s "$f")" -v pre="$pre" -v post="$post" \
      'BEGIN { c = (post == "null") ? pre : (pre + post) / 2; if (c > 0) print a / c }'
  done
}
M_TPS=$(med mayfly-closed .tokens_per_s)
O_TPS=$(med oidc-closed .tokens_per_s)
M2_TPS=$(med mayfly2-closed .tokens_per_s)
CEIL=$(for f in ceiling-[0-9]*.json ceiling-post-[0-9]*.json; do [ ! -e "$f" ] || jq .ceiling_ops_per_s "$f"; done | median)
R_OIDC=$(paired mayfly-closed .tokens_per_s oidc-closed .tokens_per_s | median)
R_CEIL=$(paired_ceiling mayfly-closed | median)
R_OIDC_ALL=$(paired mayfly-closed .tokens_per_s oidc-closed .tokens_per_s | awk '{printf "%s%.1fx", (NR > 1 ? ", " : ""), $1}')
R_CEIL_ALL=$(paired_ceiling mayfly-closed | awk '{printf "%s%.0f%%", (NR > 1 ? ", " : ""), 100 * $1}')

open_str() { # FILE
  [ -e "$1" ] || { echo -; return; }
  jq -r '"\(.target_rate | floor)/s: p50 \(.latency_ms.p50_ms * 100 | round / 100), p90 \(.latency_ms.p90_ms * 100 | round / 100), p99 \(.latency_ms.p99_ms * 100 | round / 100), max \(.latency_ms.max_ms * 100 | round / 100)"' "$1"
}

echo "## Results ($(basename "$DIR"))"
echo
sed 's/^/    /' machine.txt
echo
echo "| | mayfly | oidc-provider | mayfly vs oidc-provider |"
echo "|---|---|---|---|"
echo "| tokens/s, one server core, closed loop, $(all mayfly-closed .concurrency | cut -d, -f1) connections (median of rounds) | $(num "$M_TPS" %.0f) | $(num "$O_TPS" %.0f) | $(num "$R_OIDC" %.1fx) (median of per-round ratios) |"
echo "| ... each round | $(all mayfly-closed '.tokens_per_s | round') | $(all oidc-closed '.tokens_per_s | round') | ${R_OIDC_ALL:--} |"
R_LOW=$(paired mayfly-low .tokens_per_s oidc-low .tokens_per_s | median)
R_LOW_CEIL=$(paired_ceiling mayfly-low | median)
R_SLICE=$(paired slice-mayfly .tokens_per_s slice-oidc .tokens_per_s | median)
R_SLICE_F=$(paired slice-mayfly .tokens_per_s slice-floor .tokens_per_s | median)
if [ "$R_SLICE" != null ]; then
  echo "| ... paired slices of $(all slice-mayfly .elapsed_s | cut -d, -f1 | awk '{printf "%.0f", $1}') s, ABC CBA order (median; each slice's ratio) | $(num "$(med slice-mayfly .tokens_per_s)" %.0f) | $(num "$(med slice-oidc .tokens_per_s)" %.0f) | $(num "$R_SLICE" %.1fx) ($(paired slice-mayfly .tokens_per_s slice-oidc .tokens_per_s | awk '{printf "%s%.1fx", (NR > 1 ? ", " : ""), $1}')) |"
fi
echo "| ... with $(all mayfly-low .concurrency | cut -d, -f1) connections, 8 s per round (median; each round) | $(num "$(med mayfly-low .tokens_per_s)" %.0f) ($(all mayfly-low '.tokens_per_s | round')); $(awk -v r="$R_LOW_CEIL" 'BEGIN { if (r == "null" || r == "") print "-"; else printf "%.0f%%", 100 * r }') of the ceiling | $(num "$(med oidc-low .tokens_per_s)" %.0f) ($(all oidc-low '.tokens_per_s | round')) | $(num "$R_LOW" %.1fx) |"
echo "| ... p50 / p99 latency (ms), closed loop | $(num "$(med mayfly-closed .latency_ms.p50_ms)" %.2f) / $(num "$(med mayfly-closed .latency_ms.p99_ms)" %.2f) | $(num "$(med oidc-closed .latency_ms.p50_ms)" %.2f) / $(num "$(med oidc-closed .latency_ms.p99_ms)" %.2f) | |"
cpu_str() { # PREFIX
  med "$1" '"server \(((.cpu.server // 0) * 100 | round / 100)), load generator \(((.cpu.client // 0) * 100 | round / 100)), other \(((.cpu.other // 0) * 100 | round / 100))"' | tr -d '"'
}
echo "| ... CPU use in cores (server, load generator, rest of machine) | $(cpu_str mayfly-closed) | $(cpu_str oidc-closed) | |"
echo "| open loop at half the median peak: latency (ms) from the scheduled send time | $(open_str mayfly-open-half.json) | $(open_str oidc-open-half.json) | |"
echo "| crypto ceiling, one core (ES256 verify + EdDSA sign), median of rounds | $(num "$CEIL" %.0f) ops/s | | mayfly at $(awk -v r="$R_CEIL" 'BEGIN { if (r == "null") print "-"; else printf "%.0f%%", 100 * r }') of it (per round: ${R_CEIL_ALL:--}) |"
F_TPS=$(med floor-closed .tokens_per_s)
if [ "$F_TPS" != null ]; then
  R_F_CEIL=$(paired_ceiling floor-closed | median)
  R_F_OIDC=$(paired floor-closed .tokens_per_s oidc-closed .tokens_per_s | median)
  R_M_F=$(paired mayfly-closed .tokens_per_s floor-closed .tokens_per_s | median)
  echo "| HTTP + crypto floor (\`mayfly-floor\`: same stack, no state), one core, same connections (median; each round) | $(num "$F_TPS" %.0f) ($(all floor-closed '.tokens_per_s | round')); $(awk -v r="$R_F_CEIL" 'BEGIN { if (r == "null") print "-"; else printf "%.0f%%", 100 * r }') of the ceiling | | floor $(num "$R_F_OIDC" %.1fx) oidc-provider; mayfly at $(awk -v r="$R_M_F" 'BEGIN { if (r == "null") print "-"; else printf "%.0f%%", 100 * r }') of the floor (per round: $(paired mayfly-closed .tokens_per_s floor-closed .tokens_per_s | awk '{printf "%s%.0f%%", (NR > 1 ? ", " : ""), 100 * $1}')) |"
  if [ "$R_SLICE_F" != null ]; then
    echo "| ... floor in the paired slices (median; mayfly's share of the floor in each slice) | $(num "$(med slice-floor .tokens_per_s)" %.0f) | | floor $(num "$(paired slice-floor .tokens_per_s slice-oidc .tokens_per_s | median)" %.1fx) oidc-provider; mayfly at $(awk -v r="$R_SLICE_F" 'BEGIN { printf "%.0f%%", 100 * r }') of the floor ($(paired slice-mayfly .tokens_per_s slice-floor .tokens_per_s | awk '{printf "%s%.0f%%", (NR > 1 ? ", " : ""), 100 * $1}')) |"
  fi
fi
echo "| tokens/s, mayfly on both cores, load generator sharing them | $(num "$M2_TPS" %.0f) (each: $(all mayfly2-closed '.tokens_per_s | round')) | | |"
echo "| ... CPU use in cores | $(cpu_str mayfly2-closed) | | |"
echo "| RSS idle (VmRSS) | $(mb "$(get mem-idle.json .mayfly_idle_rss_kb)") | $(mb "$(get mem-idle.json .oidc_idle_rss_kb)") | |"
echo "| RSS peak under load (VmHWM), one core | $(mb "$(get mayfly-mem-pinned.json .peak_hwm_kb)") | $(mb "$(get oidc-mem.json .peak_hwm_kb)") | |"
echo "| RSS peak under load (VmHWM), both cores | $(mb "$(get mayfly-mem-both.json .peak_hwm_kb)") | | |"
echo
echo "Targets: mayfly >= 5x oidc-provider tokens/s: $(num "$R_OIDC" %.1fx) (paired slices: $(num "$R_SLICE" %.1fx));" \
  "p99 < 10 ms at half peak: $(num "$(get mayfly-open-half.json .latency_ms.p99_ms)" %.2f) ms;" \
  ">= 60% of the crypto ceiling: $(awk -v r="$R_CEIL" 'BEGIN { if (r == "null") print "-"; else printf "%.0f%%", 100 * r }');" \
  "idle RSS < 60 MB: $(mb "$(get mem-idle.json .mayfly_idle_rss_kb)");" \
  "peak RSS < 200 MB: $(mb "$(get mayfly-mem-pinned.json .peak_hwm_kb)") (one core) / $(mb "$(get mayfly-mem-both.json .peak_hwm_kb)") (both)."
echo
echo "Ceiling rounds (ops/s: verify+sign, verify only, sign only, raw P-256 verify):"
for f in ceiling-[0-9]*.json ceiling-post-[0-9]*.json; do
  [ ! -e "$f" ] || jq -r '"    \(input_filename): \(.ceiling_ops_per_s), \(.es256_verify_jsonwebtoken_per_s), \(.eddsa_token_sign_per_s), \(.p256_verify_raw_aws_lc_per_s)"' "$f"
done
exit 0
