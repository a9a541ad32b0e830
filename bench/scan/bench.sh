#!/usr/bin/env bash
# Throughput benchmark: mayfly scan vs detect-secrets vs secretlint.
#
#   python3 bench/scan/gen_tree.py --out /tmp/scan-tree --size-gb 1.0      # once
#   MAYFLY=target/release/mayfly bench/scan/bench.sh /tmp/scan-tree
#
# Builds nothing. Runs, each under /usr/bin/time -v (wall time, CPU time, peak RSS):
#   mayfly scan --no-ignore --format json TREE            on the full tree
#   mayfly scan --no-ignore --format json SUBSET          \
#   detect-secrets scan --all-files .   (cwd SUBSET)       } same subset: apples to apples
#   secretlint "SUBSET/**/*" --no-gitignore --format compact --output FILE
# The peers take ~1 s/MB (detect-secrets), so by default they run on a fixed deterministic subset
# of the tree (gen_tree.py --subset: files ordered by sha1 of their path, none larger than a
# quarter of the subset, hard-linked into TREE.subset-<GB>gb/). mayfly runs on both.
#
# Environment:
#   MAYFLY          mayfly binary (required; any command taking `scan --no-ignore --format json DIR`)
#   PEER_SUBSET_GB  subset size for the peers, 10^9 bytes (default 0.1; "full" = peers on the whole tree)
#   PEERS           comma list (default detect-secrets,secretlint; "" = mayfly only)
#   MAYFLY_RUNS     timed mayfly runs per target, median reported (default 3)
#   PEER_RUNS       timed runs per peer (default 1)
#   CACHE           warm (default): the tree is read once before timing, every run hits the page cache
#                   cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before each run (root only;
#                   falls back to warm with a note when that is not allowed)
#   RESULTS_DIR     default bench/scan/results/<UTC timestamp>
# Output: RESULTS_DIR/{summary.md,summary.json,time-*.txt,out-*,env.txt}; summary.md is printed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tree="${1:?usage: MAYFLY=path/to/mayfly bench/scan/bench.sh TREE}"
tree="$(cd "$tree" && pwd)"
: "${MAYFLY:?set MAYFLY to the mayfly binary (release build)}"
if [[ "$MAYFLY" == */* ]]; then MAYFLY="$(cd "$(dirname "$MAYFLY")" && pwd)/$(basename "$MAYFLY")"; fi
PEER_SUBSET_GB="${PEER_SUBSET_GB:-0.1}"
PEERS="${PEERS-detect-secrets,secretlint}"
MAYFLY_RUNS="${MAYFLY_RUNS:-3}"
PEER_RUNS="${PEER_RUNS:-1}"
CACHE="${CACHE:-warm}"
res="${RESULTS_DIR:-$here/results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$res"
TIME=/usr/bin/time
[[ -x "$TIME" ]] || { echo "bench.sh: needs GNU time at /usr/bin/time (apt-get install time)" >&2; exit 2; }

if [[ -n "$PEERS" ]]; then "$here/setup.sh" >&2; fi

# --- subset -----------------------------------------------------------------------------------
if [[ -n "$PEERS" && "$PEER_SUBSET_GB" != "full" ]]; then
  subset="${tree}.subset-${PEER_SUBSET_GB}gb"
  want="$(python3 -c 'import json,sys; print(json.dumps({"tree": sys.argv[1], "size_gb": float(sys.argv[2])}, sort_keys=True))' "$tree" "$PEER_SUBSET_GB")"
  have="$(python3 -c 'import json,sys
try:
    m = json.load(open(sys.argv[1])); print(json.dumps({"tree": m["tree"], "size_gb": m["size_gb"]}, sort_keys=True))
except Exception:
    print("")' "${subset}.manifest.json")"
  if [[ "$want" != "$have" || ! -d "$subset" ]]; then
    python3 "$here/gen_tree.py" --subset "$tree" --size-gb "$PEER_SUBSET_GB" --out "$subset"
  fi
else
  subset="$tree"
fi

# --- cache ------------------------------------------------------------------------------------
cache_note="warm page cache (tree read once before timing)"
drop() { :; }
if [[ "$CACHE" == cold ]]; then
  if (sync && echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then
    cache_note="cold page cache (drop_caches before each run)"
    drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
  else
    cache_note="warm page cache (CACHE=cold requested but drop_caches is not writable here)"
    CACHE=warm
  fi
fi
if [[ "$CACHE" == warm ]]; then
  find "$tree" "$subset" -type f -print0 | xargs -0 cat > /dev/null
fi

{
  echo "date_utc=$(date -u +%FT%TZ)"
  echo "host=$(uname -srm)"
  echo "cpus=$(nproc)"
  echo "mem=$(free -g | awk '/^Mem:/{print $2" GiB"}')"
  echo "loadavg_at_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "cache=$cache_note"
  echo "tree=$tree"
  echo "subset=$subset"
  echo "mayfly=$MAYFLY"
  echo "mayfly_version=$("$MAYFLY" --version 2>&1 | head -1 || true)"
  if [[ -n "$PEERS" ]]; then
    echo "detect_secrets_version=$("$here/.venv/bin/detect-secrets" --version)"
    echo "secretlint_version=$("$here/node_modules/.bin/secretlint" --version)"
  fi
} > "$res/env.txt"

# --- runs -------------------------------------------------------------------------------------
# run TOOL TARGETNAME DIR N
run() {
  local tool="$1" target="$2" dir="$3" n="$4" i
  for ((i = 1; i <= n; i++)); do
    local tag="$tool.$target.$i" rc=0
    drop
    echo "bench.sh: $tag ..." >&2
    case "$tool" in
      mayfly)
        "$TIME" -v -o "$res/time-$tag.txt" "$MAYFLY" scan --no-ignore --format json "$dir" > "$res/out-$tag.json" 2> "$res/err-$tag.txt" || rc=$? ;;
      detect-secrets)
        (cd "$dir" && "$TIME" -v -o "$res/time-$tag.txt" "$here/.venv/bin/detect-secrets" scan --all-files . > "$res/out-$tag.json" 2> "$res/err-$tag.txt") || rc=$? ;;
      secretlint)
        "$TIME" -v -o "$res/time-$tag.txt" "$here/node_modules/.bin/secretlint" "$dir/**/*" --no-gitignore --no-color \
          --format compact --secretlintrc "$here/.secretlintrc.json" --output "$res/out-$tag.txt" > /dev/null 2> "$res/err-$tag.txt" || rc=$? ;;
    esac
    echo "$rc" > "$res/rc-$tag.txt"
    # 0 = clean, 1 = findings; anything else is a failure of the tool
    if ((rc > 1)); then echo "bench.sh: $tag exited $rc (see $res/err-$tag.txt)" >&2; fi
  done
}

run mayfly full "$tree" "$MAYFLY_RUNS"
if [[ -n "$PEERS" ]]; then
  if [[ "$subset" != "$tree" ]]; then run mayfly subset "$subset" "$MAYFLY_RUNS"; fi
  IFS=, read -ra peers <<< "$PEERS"
  for p in "${peers[@]}"; do run "$p" "$([[ "$subset" == "$tree" ]] && echo full || echo subset)" "$subset" "$PEER_RUNS"; done
fi

# --- summary ----------------------------------------------------------------------------------
python3 - "$res" "$tree" "$subset" <<'PY'
import json, os, re, statistics, sys, glob
res, tree, subset = sys.argv[1:4]

def size(d):
    files = total = 0
    for dp, _, fns in os.walk(d):
        for fn in fns:
            files += 1
            total += os.path.getsize(os.path.join(dp, fn))
    return files, total

sizes = {"full": size(tree)}
sizes["subset"] = sizes["full"] if subset == tree else size(subset)
env = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(res, "env.txt")) if "=" in l)

def parse_time(p):
    t = open(p).read()
    def g(pat):
        m = re.search(pat, t)
        return m.group(1) if m else None
    wall = g(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)")
    parts = [float(x) for x in wall.split(":")]
    secs = parts[-1] + 60 * parts[-2] + (3600 * parts[-3] if len(parts) == 3 else 0)
    return {"wall_s": secs, "user_s": float(g(r"User time \(seconds\): (\S+)")), "sys_s": float(g(r"System time \(seconds\): (\S+)")),
            "max_rss_kb": int(g(r"Maximum resident set size \(kbytes\): (\d+)")), "exit": int(g(r"Exit status: (\d+)") or 0)}

rows = {}
for p in sorted(glob.glob(os.path.join(res, "time-*.txt"))):
    tool, target, i = os.path.basename(p)[5:-4].rsplit(".", 2)
    rows.setdefault((tool, target), []).append(parse_time(p))

def findings(tool, target):
    outs = sorted(glob.glob(os.path.join(res, f"out-{tool}.{target}.*")))
    if not outs:
        return None
    try:
        if tool == "mayfly":
            return len(json.load(open(outs[0])).get("findings", []))
        if tool == "detect-secrets":
            return sum(len(v) for v in json.load(open(outs[0]))["results"].values())
        return sum(1 for l in open(outs[0]) if re.search(r": line \d+, col \d+, ", l))
    except Exception:
        return None

summary = {"env": env, "sizes": {k: {"files": f, "bytes": b} for k, (f, b) in sizes.items()}, "results": []}
for (tool, target), runs in sorted(rows.items(), key=lambda kv: (kv[0][1] != "full", kv[0][0] != "mayfly", kv[0][0])):
    files, nbytes = sizes[target]
    wall = statistics.median(r["wall_s"] for r in runs)
    rss = max(r["max_rss_kb"] for r in runs)
    cpu = statistics.median(r["user_s"] + r["sys_s"] for r in runs)
    failed = [r["exit"] for r in runs if r["exit"] > 1]
    summary["results"].append({"tool": tool, "target": target, "runs": len(runs), "files": files, "bytes": nbytes,
                               "wall_s": wall, "cpu_s": cpu, "mb_per_s": nbytes / 1e6 / wall if wall else None,
                               "files_per_s": files / wall if wall else None, "peak_rss_mib": rss / 1024,
                               "findings": findings(tool, target), "failed_exit_codes": failed, "all_runs": runs})

def get(tool, target):
    for r in summary["results"]:
        if r["tool"] == tool and r["target"] == target:
            return r

ratios = {}
ms = get("mayfly", "subset") or get("mayfly", "full")
mf = get("mayfly", "full")
for peer in ("detect-secrets", "secretlint"):
    p = get(peer, "subset") or get(peer, "full")
    if p and ms and p["mb_per_s"]:
        ratios[f"mayfly/{peer} (same files)"] = ms["mb_per_s"] / p["mb_per_s"]
        if mf and mf is not ms:
            ratios[f"mayfly full tree / {peer} subset"] = mf["mb_per_s"] / p["mb_per_s"]
summary["ratios"] = ratios

md = []
md.append(f"Machine: {env.get('host')}, {env.get('cpus')} cpus, {env.get('mem')}; load at start {env.get('loadavg_at_start')}; {env.get('cache')}.")
md.append(f"Tree: {sizes['full'][0]} files, {sizes['full'][1] / 1e6:.0f} MB" +
          (f"; peer subset: {sizes['subset'][0]} files, {sizes['subset'][1] / 1e6:.0f} MB." if subset != tree else "."))
md.append(f"Versions: {env.get('mayfly_version')}; detect-secrets {env.get('detect_secrets_version', '–')}; secretlint {env.get('secretlint_version', '–')}.")
md.append("")
md.append("| tool | target | files | MB | runs | wall s (median) | MB/s | files/s | CPU s | peak RSS MiB | findings |")
md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in summary["results"]:
    flag = " (FAILED: exit " + ",".join(map(str, r["failed_exit_codes"])) + ")" if r["failed_exit_codes"] else ""
    md.append(f"| {r['tool']}{flag} | {r['target']} | {r['files']} | {r['bytes'] / 1e6:.1f} | {r['runs']} | {r['wall_s']:.2f} | "
              f"{r['mb_per_s']:.1f} | {r['files_per_s']:.0f} | {r['cpu_s']:.1f} | {r['peak_rss_mib']:.0f} | "
              f"{'–' if r['findings'] is None else r['findings']} |")
if ratios:
    md.append("")
    md.append("Throughput ratios (MB/s): " + "; ".join(f"{k} = {v:.1f}x" for k, v in ratios.items()))
md.append("")
md.append("MB = 10^6 bytes on disk (.gz files counted compressed); peak RSS = largest single process (GNU time).")
open(os.path.join(res, "summary.md"), "w").write("\n".join(md) + "\n")
json.dump(summary, open(os.path.join(res, "summary.json"), "w"), indent=1)
print("\n".join(md))
PY
echo "bench.sh: results in $res" >&2
