#!/usr/bin/env bash
# Accuracy run: generate the labelled corpus, then score mayfly, detect-secrets and secretlint on it.
#
#   MAYFLY=target/release/mayfly bench/scan/eval.sh [--seed N] [eval.py options...]
#
# Writes bench/scan/results/<UTC timestamp>-eval/{corpus/,report.md,report.json,raw/} and prints the
# Markdown report. Without MAYFLY only the peers are scored. Installs the peers first (setup.sh,
# a no-op when already installed). Extra options go to eval.py (e.g. --fail-under 0.95,
# --tools mayfly). Exit status is eval.py's.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seed=7
args=()
while (($#)); do
  case "$1" in
    --seed) seed="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
"$here/setup.sh" >&2
out="$here/results/$(date -u +%Y%m%dT%H%M%SZ)-eval"
mkdir -p "$out"
python3 "$here/corpus.py" --out "$out/corpus" --seed "$seed"
if [[ -n "${MAYFLY:-}" ]]; then MAYFLY="$(cd "$(dirname "$MAYFLY")" && pwd)/$(basename "$MAYFLY")"; export MAYFLY; fi
set +e
python3 "$here/eval.py" "$out/corpus" --md "$out/report.md" --json "$out/report.json" --raw-dir "$out/raw" "${args[@]}"
rc=$?
set -e
[[ -f "$out/report.md" ]] && cat "$out/report.md"
echo "eval.sh: results in $out" >&2
exit "$rc"
