#!/usr/bin/env python3
"""Score mayfly scan, detect-secrets and secretlint on a labelled corpus (bench/scan/corpus.py).

    MAYFLY=target/release/mayfly python3 bench/scan/eval.py CORPUS_DIR \
        [--tools mayfly,detect-secrets,secretlint] [--md FILE] [--json FILE] [--raw-dir DIR] \
        [--fail-under 0.95]

Scoring is by line. Findings are first deduplicated per tool by (file, line). A finding line that
falls inside a labelled positive's [line, end_line] is a hit on that positive; each positive is
counted once however many of its lines are reported (a PEM key reported on 3 lines is 1 true
positive). Every other finding line is a false positive, attributed to the labelled negative
kind covering that line, or to "unlabelled".

    recall    = positives hit / positives
    precision = positives hit / (positives hit + false-positive lines)

For mayfly, a hit whose rule id differs from the label's type still counts as a true positive for
the overall figures, and is also reported as type confusion; per-rule precision counts it wrong.

Peers are run from bench/scan/.venv and bench/scan/node_modules (see setup.sh). Standard library
only. Exit status: 0; 3 when --fail-under is given and mayfly's recall or precision is below it;
2 on usage errors (including --fail-under without a runnable MAYFLY).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
META_FILES = {"labels.json", "README"}
TOOLS = ("mayfly", "detect-secrets", "secretlint")


# --------------------------------------------------------------------------------------------
# Running the tools
# --------------------------------------------------------------------------------------------


def run(cmd, cwd=None, out_path=None, ok=(0, 1)):
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.monotonic() - t0
    if out_path:
        with open(out_path, "wb") as f:
            f.write(p.stdout)
        with open(out_path + ".stderr", "wb") as f:
            f.write(p.stderr)
    if p.returncode not in ok:
        sys.stderr.write(p.stderr.decode(errors="replace")[-3000:])
        raise RuntimeError(f"{cmd[0]} exited {p.returncode}")
    return p.stdout, dt, p.returncode


def version_of(cmd) -> str:
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        return p.stdout.decode(errors="replace").strip().splitlines()[0] if p.stdout else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def norm_path(p: str, corpus: str) -> str:
    """Path relative to the corpus root, with forward slashes."""
    if p is None:
        return ""
    p = str(p).replace("\\", "/")
    if p.startswith("file://"):
        p = p[7:]
    cabs = os.path.abspath(corpus).replace("\\", "/").rstrip("/") + "/"
    craw = corpus.replace("\\", "/").rstrip("/") + "/"
    for pre in (cabs, craw):
        if p.startswith(pre):
            return p[len(pre):]
    if os.path.isabs(p):
        return os.path.relpath(p, os.path.abspath(corpus)).replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    craw2 = craw[2:] if craw.startswith("./") else craw
    if p.startswith(craw2):
        return p[len(craw2):]
    return p


def _first(d: dict, *keys, default=None):
    for k in keys:
        if isinstance(d, dict) and d.get(k) is not None:
            return d[k]
    return default


def run_mayfly(binary, corpus, raw_dir):
    out, dt, rc = run([binary, "scan", "--no-ignore", "--format", "json", corpus],
                      out_path=os.path.join(raw_dir, "mayfly.json") if raw_dir else None, ok=(0, 1))
    doc = json.loads(out.decode() or "{}")
    items = doc.get("findings", []) if isinstance(doc, dict) else doc
    findings = []
    for f in items or []:
        loc = f.get("location") if isinstance(f.get("location"), dict) else {}
        path = _first(f, "path", "file", "filename", default=_first(loc, "path", "file"))
        line = _first(f, "line", "line_number", "start_line", default=_first(loc, "line", "start_line"))
        rule = _first(f, "rule", "rule_id", "ruleId", "id", default="?")
        if path is None or line is None:
            continue
        findings.append((norm_path(path, corpus), int(line), str(rule)))
    return findings, dt, {"exit_code": rc, "stats": doc.get("stats") if isinstance(doc, dict) else None}


def run_detect_secrets(corpus, raw_dir):
    exe = os.path.join(HERE, ".venv", "bin", "detect-secrets")
    # detect-secrets resolves paths against the working directory and drops files outside it,
    # so it is run from inside the corpus on ".".
    out, dt, rc = run([exe, "scan", "--all-files", "."], cwd=corpus,
                      out_path=os.path.join(raw_dir, "detect-secrets.json") if raw_dir else None, ok=(0,))
    doc = json.loads(out.decode())
    findings = []
    for fname, items in doc.get("results", {}).items():
        for it in items:
            findings.append((norm_path(fname, "."), int(it["line_number"]), it["type"]))
    return findings, dt, {"exit_code": rc}


def run_secretlint(corpus, raw_dir):
    exe = os.path.join(HERE, "node_modules", ".bin", "secretlint")
    rc_file = os.path.join(HERE, ".secretlintrc.json")
    tmp = tempfile.mkdtemp(prefix="secretlint-")
    try:
        out_file = os.path.join(tmp, "secretlint.json")
        # "DIR/**/*" matches dotfiles too (picomatch dot: true in secretlint); --no-gitignore to
        # scan everything, like mayfly's --no-ignore. Results go to a file (--output) since the
        # JSON formatter embeds each file's content.
        _, dt, rc = run([exe, os.path.join(os.path.abspath(corpus), "**", "*"), "--format", "json", "--no-gitignore",
                         "--secretlintrc", rc_file, "--no-color", "--output", out_file], cwd=tmp, ok=(0, 1))
        with open(out_file, encoding="utf-8") as f:
            doc = json.load(f)
        if raw_dir:
            slim = [{"filePath": d.get("filePath"), "messages": d.get("messages", [])} for d in doc]
            with open(os.path.join(raw_dir, "secretlint.json"), "w") as f:
                json.dump(slim, f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    findings = []
    for d in doc:
        path = norm_path(d.get("filePath", ""), corpus)
        for m in d.get("messages", []):
            line = ((m.get("loc") or {}).get("start") or {}).get("line")
            if line is None:
                continue
            end = ((m.get("loc") or {}).get("end") or {}).get("line") or line
            # a multi-line report (e.g. PrivateKeyJSON spans the whole JSON object) is matched
            # against any positive inside its range
            findings.append((path, int(line), m.get("messageId") or m.get("ruleId") or "?", int(end)))
    return findings, dt, {"exit_code": rc}


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


class Labels:
    def __init__(self, corpus):
        with open(os.path.join(corpus, "labels.json"), encoding="utf-8") as f:
            doc = json.load(f)
        self.pos = doc["positives"]
        self.neg = doc["negatives"]
        self.meta = doc.get("meta", {})
        self.pos_at = defaultdict(list)  # (file, line) -> [positive index]
        for i, p in enumerate(self.pos):
            for ln in range(p["line"], p.get("end_line", p["line"]) + 1):
                self.pos_at[(p["file"], ln)].append(i)
        self.neg_at = {}
        for n in self.neg:
            for ln in range(n["line"], n.get("end_line", n["line"]) + 1):
                self.neg_at[(n["file"], ln)] = n["kind"]
        self.types = sorted({p["type"] for p in self.pos})
        self.neg_kinds = Counter(n["kind"] for n in self.neg)


def score(labels: Labels, findings):
    lines = defaultdict(set)  # (file, line) -> {rule}
    ends = {}
    for f, ln, rule, *rest in findings:
        if f in META_FILES:
            continue
        lines[(f, ln)].add(rule)
        end = min(rest[0], ln + 500) if rest else ln
        ends[(f, ln)] = max(ends.get((f, ln), ln), end)
    hit = defaultdict(set)  # positive idx -> rules that hit it
    fp = Counter()
    fp_examples = defaultdict(list)
    rule_stats = defaultdict(Counter)  # rule -> correct / wrong_type / fp
    for key, rules in sorted(lines.items()):
        idxs = sorted({i for ln in range(key[1], ends[key] + 1) for i in labels.pos_at.get((key[0], ln), ())})
        if idxs:
            for i in idxs:
                hit[i] |= rules
            for r in rules:
                ok = any(labels.pos[i]["type"] == r for i in idxs)
                rule_stats[r]["correct" if ok else "wrong_type"] += 1
        else:
            kind = labels.neg_at.get(key, "unlabelled")
            fp[kind] += 1
            if len(fp_examples[kind]) < 5:
                fp_examples[kind].append(f"{key[0]}:{key[1]} ({', '.join(sorted(rules))})")
            for r in rules:
                rule_stats[r]["fp"] += 1
    tp = len(hit)
    nfp = sum(fp.values())
    npos = len(labels.pos)
    recall = tp / npos if npos else 0.0
    precision = tp / (tp + nfp) if tp + nfp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    per_type = {}
    for t in labels.types:
        idx = [i for i, p in enumerate(labels.pos) if p["type"] == t]
        found = [i for i in idx if i in hit]
        exact = [i for i in found if t in hit[i]]
        per_type[t] = {"positives": len(idx), "found": len(found), "exact_type": len(exact),
                       "recall": len(found) / len(idx) if idx else 0.0,
                       "missed": [f"{labels.pos[i]['file']}:{labels.pos[i]['line']}" for i in idx if i not in hit]}
    confusion = Counter()
    for i, rules in hit.items():
        t = labels.pos[i]["type"]
        if t not in rules:
            confusion[f"{t} -> {','.join(sorted(rules))}"] += 1
    per_rule = {r: {"findings": sum(c.values()), **c, "precision": c["correct"] / sum(c.values())} for r, c in rule_stats.items()}
    return {"findings_raw": len(findings), "finding_lines": len(lines), "tp": tp, "fp": nfp, "positives": npos,
            "recall": recall, "precision": precision, "f1": f1, "fp_by_kind": dict(fp), "fp_examples": dict(fp_examples),
            "per_type": per_type, "type_confusion": dict(confusion), "type_confused_hits": sum(confusion.values()),
            "per_rule": per_rule}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def pct(x):
    return "–" if x is None else f"{x:.3f}"


def markdown(res, labels: Labels, corpus: str) -> str:
    tools = [t for t in TOOLS if t in res["tools"]]
    R = res["tools"]
    out = []
    meta = labels.meta
    out.append(f"Corpus: `bench/scan/corpus.py --seed {meta.get('seed', '?')}` — {meta.get('files', '?')} files, "
               f"{meta.get('bytes', 0) / 1e6:.1f} MB, {len(labels.pos)} positives over {len(labels.types)} types, "
               f"{len(labels.neg)} labelled hard negatives. Run {res['when']} on `{res['host']}`.")
    out.append("")
    out.append("| tool | version | findings (lines) | TP | FP | recall | precision | F1 | wall s |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in tools:
        s = R[t]
        out.append(f"| {t} | {s['version']} | {s['finding_lines']} | {s['tp']} | {s['fp']} | {pct(s['recall'])} | "
                   f"{pct(s['precision'])} | {pct(s['f1'])} | {s['seconds']:.1f} |")
    out.append("")
    out.append("False positives by labelled negative kind (finding lines):")
    out.append("")
    kinds = sorted(set(labels.neg_kinds) | {k for t in tools for k in R[t]["fp_by_kind"]},
                   key=lambda k: (k == "unlabelled", k))
    out.append("| negative kind | labelled | " + " | ".join(tools) + " |")
    out.append("|---|---:|" + "---:|" * len(tools))
    for k in kinds:
        out.append(f"| {k} | {labels.neg_kinds.get(k, '–')} | " + " | ".join(str(R[t]["fp_by_kind"].get(k, 0)) for t in tools) + " |")
    out.append("")
    out.append("Recall per type" + (" (mayfly 'exact' = hit by the rule with the same id)" if "mayfly" in tools else "") + ":")
    out.append("")
    cols = []
    for t in tools:
        cols.append(t)
        if t == "mayfly":
            cols.append("mayfly exact")
    out.append("| type | positives | " + " | ".join(cols) + " |")
    out.append("|---|---:|" + "---:|" * len(cols))
    for ty in labels.types:
        row = []
        for t in tools:
            pt = R[t]["per_type"][ty]
            row.append(pct(pt["recall"]))
            if t == "mayfly":
                row.append(pct(pt["exact_type"] / pt["positives"]))
        out.append(f"| {ty} | {R[tools[0]]['per_type'][ty]['positives'] if tools else '?'} | " + " | ".join(row) + " |")
    if "mayfly" in tools:
        m = R["mayfly"]
        out.append("")
        out.append(f"mayfly precision per rule (type-confused hits: {m['type_confused_hits']}):")
        out.append("")
        out.append("| rule | finding lines | correct type | other type | FP | precision |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for r, c in sorted(m["per_rule"].items()):
            out.append(f"| {r} | {c['findings']} | {c.get('correct', 0)} | {c.get('wrong_type', 0)} | {c.get('fp', 0)} | {pct(c['precision'])} |")
        if m["type_confusion"]:
            out.append("")
            out.append("Type confusion (label -> mayfly rules): " + "; ".join(f"{k} ×{v}" for k, v in sorted(m["type_confusion"].items())))
    out.append("")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Score secret scanners on a labelled corpus.")
    ap.add_argument("corpus", help="directory written by corpus.py (holds labels.json)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma list of: " + ", ".join(TOOLS))
    ap.add_argument("--mayfly", default=os.environ.get("MAYFLY"), help="mayfly binary (default: $MAYFLY)")
    ap.add_argument("--md", help="write the Markdown report here (default: stdout)")
    ap.add_argument("--json", dest="json_out", help="write raw numbers here")
    ap.add_argument("--raw-dir", help="keep each tool's raw output here")
    ap.add_argument("--fail-under", type=float, help="exit 3 if mayfly's overall recall or precision is below this")
    a = ap.parse_args(argv)

    corpus = a.corpus.rstrip("/") or "/"
    if not os.path.isfile(os.path.join(corpus, "labels.json")):
        ap.error(f"{corpus}/labels.json not found; generate with bench/scan/corpus.py --out {corpus}")
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in TOOLS]
    if bad:
        ap.error(f"unknown tool(s): {bad}")
    mayfly = a.mayfly
    if "mayfly" in tools:
        if not mayfly or not (os.path.isfile(mayfly) or shutil.which(mayfly)):
            if a.fail_under is not None:
                ap.error("--fail-under needs a runnable mayfly: set MAYFLY or --mayfly")
            print("eval: MAYFLY not set or not found; scoring the peers only", file=sys.stderr)
            tools.remove("mayfly")
    if a.raw_dir:
        os.makedirs(a.raw_dir, exist_ok=True)

    labels = Labels(corpus)
    res = {"corpus": os.path.abspath(corpus), "corpus_meta": labels.meta, "positives": len(labels.pos),
           "negatives": len(labels.neg), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "host": f"{os.uname().sysname} {os.uname().machine}, {os.cpu_count()} cpus", "tools": {}}
    for t in tools:
        if t == "mayfly":
            findings, dt, extra = run_mayfly(mayfly, corpus, a.raw_dir)
            ver = version_of([mayfly, "--version"])
        elif t == "detect-secrets":
            findings, dt, extra = run_detect_secrets(corpus, a.raw_dir)
            ver = "detect-secrets " + version_of([os.path.join(HERE, ".venv", "bin", "detect-secrets"), "--version"])
        else:
            findings, dt, extra = run_secretlint(corpus, a.raw_dir)
            ver = "secretlint " + version_of([os.path.join(HERE, "node_modules", ".bin", "secretlint"), "--version"])
            pre = os.path.join(HERE, "node_modules", "@secretlint", "secretlint-rule-preset-recommend", "package.json")
            if os.path.exists(pre):
                with open(pre) as f:
                    ver += " + preset-recommend " + json.load(f)["version"]
        s = score(labels, findings)
        s.update({"version": ver, "seconds": dt, **extra})
        res["tools"][t] = s
        print(f"eval: {t}: recall {s['recall']:.3f} precision {s['precision']:.3f} "
              f"({s['tp']} TP, {s['fp']} FP lines) in {dt:.1f}s", file=sys.stderr)

    md = markdown(res, labels, corpus)
    if a.md:
        with open(a.md, "w") as f:
            f.write(md)
    else:
        print(md)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=1, sort_keys=True)
    if a.fail_under is not None and "mayfly" in res["tools"]:
        m = res["tools"]["mayfly"]
        if m["recall"] < a.fail_under or m["precision"] < a.fail_under:
            print(f"eval: FAIL mayfly recall {m['recall']:.3f} / precision {m['precision']:.3f} < {a.fail_under}", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
