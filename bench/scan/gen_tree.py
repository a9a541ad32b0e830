#!/usr/bin/env python3
"""Throughput tree for `mayfly scan` benchmarks.

    python3 bench/scan/gen_tree.py --out TREE --size-gb 1.0 [--seed N]
    python3 bench/scan/gen_tree.py --subset TREE --size-gb 0.1 --out SUBSET

Tree mode builds a tree of about --size-gb * 10^9 bytes from REAL text present on this machine
(Python standard libraries under ~/.pyenv and /usr/lib/python3*, C headers in /usr/include,
/usr/share/doc, Node packages under /usr/lib/node_modules and the repo's node_modules, crate
sources under ~/.cargo/registry/src and the repo's vendor/), copied deterministically (sorted walk,
seeded choices) into replicas src/rNNN/..., plus large files:

    big/ci-build.log          20 % of the budget: CI log with long lines (some 4-64 KB)
    big/bundle.min.js          5 % of the budget: minified JS on a single line
    big/logs/build-N.log.gz    3 gzipped logs (bytes counted compressed, as on disk)

About one small file in 400, and the big log every ~2 MB, gets a fake secret appended (values from
corpus.py's generators), so a scanner has something to report. Writes TREE.manifest.json beside the
tree (files, bytes, sources, secrets planted).

Subset mode picks a fixed, deterministic subset of an existing tree for the slow peers: files
ordered by sha1 of their relative path, each no larger than a quarter of the budget (so the huge
files are left out), taken until --size-gb is reached, hard-linked (copied across devices) into
--out with the same relative paths. Same tree + same size = same subset.

Standard library only.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402  (secret generators)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT_EXT = {".py", ".pyi", ".rs", ".c", ".h", ".hpp", ".cc", ".cpp", ".js", ".mjs", ".cjs", ".ts", ".go", ".java", ".rb",
            ".md", ".rst", ".txt", ".json", ".toml", ".yaml", ".yml", ".sh", ".html", ".css", ".xml", ".cfg", ".ini",
            ".in", ".mk", ".cmake", ".el", ".pl", ".tcl", ".lua", ".sql", ".csv", ".tsv", ".svg", ".map", ".d.ts"}
MIN_FILE, MAX_FILE = 64, 1 << 20


def roots():
    home = os.path.expanduser("~")
    cands = [(os.path.join(home, ".cargo", "registry", "src"), "cargo"), (os.path.join(REPO, "vendor"), "vendor"),
             (os.path.join(REPO, "interop", "node", "node_modules"), "node-interop"),
             (os.path.join(REPO, "bench", "scan", "node_modules"), "node-bench"), ("/usr/lib/node_modules", "node-global"),
             ("/usr/include", "include"), ("/usr/share/doc", "doc")]
    pyenv = os.path.join(home, ".pyenv", "versions")
    if os.path.isdir(pyenv):
        for v in sorted(os.listdir(pyenv)):
            lib = os.path.join(pyenv, v, "lib")
            if os.path.isdir(lib):
                cands.append((lib, f"py-{v}"))
    for d in sorted(os.listdir("/usr/lib")):
        if d.startswith("python3"):
            cands.append((os.path.join("/usr/lib", d), f"sys-{d}"))
    return [(p, label) for p, label in cands if os.path.isdir(p)]


def is_text(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"\0" not in head


def collect_pool(cap_bytes: int):
    """Sorted, deterministic list of (src_path, rel_dest, size); each root capped at 40 % of cap."""
    pool, total = [], 0
    rts = roots()
    per_root = max(cap_bytes * 2 // 5, 1)
    for root, label in rts:
        got = 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".git")]
            for fn in sorted(filenames):
                ext = os.path.splitext(fn)[1].lower()
                if ext not in TEXT_EXT and fn not in ("README", "LICENSE", "Makefile", "copyright", "changelog"):
                    continue
                p = os.path.join(dirpath, fn)
                try:
                    if os.path.islink(p):
                        continue
                    sz = os.path.getsize(p)
                except OSError:
                    continue
                if not MIN_FILE <= sz <= MAX_FILE or not is_text(p):
                    continue
                # "node_modules" path components are renamed: secretlint skips them by default,
                # and every tool should see the same files
                rel = os.path.relpath(p, root).replace("node_modules", "node_pkgs")
                pool.append((p, os.path.join(label, rel), sz))
                got += sz
                total += sz
                if got >= per_root or total >= cap_bytes:
                    break
            if got >= per_root or total >= cap_bytes:
                break
        if total >= cap_bytes:
            break
    return pool, [label for _, label in rts]


def secret_line(r: corpus.R) -> str:
    typ = r.choice(sorted(corpus.GEN))
    gen, names, _ = corpus.GEN[typ]
    return f"{corpus.upper(names[0])}={gen(r)}"


LOG_WORDS = corpus.WORDS + corpus.VERBS


def log_templates(r: corpus.R, n=3000):
    out = []
    for i in range(n):
        ts = f"2024-{r.i(1, 12):02d}-{r.i(1, 28):02d}T{r.i(0, 23):02d}:{r.i(0, 59):02d}:{r.i(0, 59):02d}.{r.i(0, 9999999):07d}Z"
        k = r.i(0, 9)
        if k < 6:
            out.append(corpus.f_log(r)[0])
        elif k == 6:
            out.append(f"{ts} {' '.join(r.choice(LOG_WORDS) for _ in range(r.i(10, 40)))}")
        elif k == 7:  # long JSON dump
            items = ",".join(f'{{"{r.choice(LOG_WORDS)}":{r.i(0, 99999)},"name":"{r.choice(LOG_WORDS)}-{r.i(0, 999)}"}}' for _ in range(r.i(100, 1500)))
            out.append(f"{ts} DEBUG response body: [{items}]")
        elif k == 8:  # long base64 artifact dump
            out.append(f"{ts} artifact chunk: {corpus.b64s(r.b(r.i(3000, 48000)))}")
        else:
            out.append(f"{ts} {' '.join(f'--{r.choice(LOG_WORDS)}={r.i(0, 9)}' for _ in range(r.i(50, 400)))}")
    return out


def write_log(path, size, r: corpus.R, secrets_every=2_000_000, compress=False):
    tpl = log_templates(r)
    written = raw = planted = 0
    next_secret = secrets_every // 2
    opener = (lambda p: gzip.open(p, "wb", compresslevel=6)) if compress else (lambda p: open(p, "wb"))
    with opener(path) as f:
        while raw < size:
            batch = r.r.choices(tpl, k=100)
            if raw >= next_secret:
                batch[r.i(0, len(batch) - 1)] = "2024-06-01T00:00:00.0000000Z env: " + secret_line(r)
                planted += 1
                next_secret += secrets_every
            data = ("\n".join(batch) + "\n").encode()[: size - raw + 1]
            f.write(data)
            raw += len(data)
    written = os.path.getsize(path)
    return written, raw, planted


def write_minjs(path, size, r: corpus.R):
    pieces = []
    for _ in range(48):
        parts = []
        n = 0
        while n < 256 * 1024:
            t = r.i(0, 4)
            if t == 0:
                s = f"var _0x{r.s(corpus.HEX, 6)}=['{r.s(corpus.ALNUM, 32)}','{r.s(corpus.ALNUM, 24)}'];"
            elif t == 1:
                s = f"function {r.s(corpus.LOWER, 2)}(e,t){{return e.{r.s(corpus.LOWER, 3)}(t)||{r.i(0, 999)}}}"
            elif t == 2:
                s = f"n.src=\"data:image/png;base64,{corpus.b64s(corpus.PNG + r.b(r.i(100, 1500)))}\";"
            elif t == 3:
                s = f"const {r.s(corpus.UPPER, 1)}{r.s(corpus.ALNUM, 20)}={{{r.choice(LOG_WORDS)}:!0,{r.choice(LOG_WORDS)}:\"{r.choice(LOG_WORDS)}\"}};"
            else:
                s = f"e.exports={{hash:\"{r.s(corpus.HEX, 40)}\",v:{r.i(0, 99)}}};"
            parts.append(s)
            n += len(s)
        pieces.append("".join(parts).encode())
    w = 0
    with open(path, "wb") as f:
        f.write(b"/*! bundle */")
        while w < size:
            p = r.choice(pieces)
            f.write(p)
            w += len(p)
        f.write(b"\n")
    return os.path.getsize(path)


def build_tree(out: str, size_gb: float, seed: int):
    budget = int(size_gb * 1e9)
    r = corpus.R(seed)
    if os.path.exists(out):
        if os.listdir(out) and not os.path.exists(out.rstrip("/") + ".manifest.json"):
            raise SystemExit(f"gen_tree.py: {out} exists and was not made by gen_tree.py; refusing to overwrite")
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "big", "logs"))
    manifest = {"generator": "bench/scan/gen_tree.py", "seed": seed, "size_gb": size_gb, "big": {}}
    # big files
    log_size = int(budget * 0.20)
    w, raw, planted = write_log(os.path.join(out, "big", "ci-build.log"), log_size, r)
    manifest["big"]["big/ci-build.log"] = {"bytes": w, "secrets": planted}
    secrets = planted
    w = write_minjs(os.path.join(out, "big", "bundle.min.js"), int(budget * 0.05), r)
    manifest["big"]["big/bundle.min.js"] = {"bytes": w}
    for i in range(3):
        p = os.path.join(out, "big", "logs", f"build-{i}.log.gz")
        w, raw, planted = write_log(p, int(budget * 0.04), r, secrets_every=max(int(budget * 0.04) // 3, 1), compress=True)
        manifest["big"][f"big/logs/build-{i}.log.gz"] = {"bytes": w, "uncompressed_bytes": raw, "secrets": planted}
        secrets += planted
    big_bytes = sum(v["bytes"] for v in manifest["big"].values())
    # small files from real text, replicated
    remaining = budget - big_bytes
    pool, labels = collect_pool(min(remaining, 400_000_000))
    if not pool:
        raise SystemExit("gen_tree.py: found no source text on this machine")
    manifest["sources"] = labels
    manifest["pool_files"] = len(pool)
    manifest["pool_bytes"] = sum(s for _, _, s in pool)
    written = 0
    replica = 0
    nfiles = 0
    planted_small = 0
    while written < remaining:
        order = list(range(len(pool)))
        if replica:
            random.Random(seed * 1000 + replica).shuffle(order)
        for i in order:
            if written >= remaining:
                break
            src, rel, sz = pool[i]
            dst = os.path.join(out, "src", f"r{replica:03d}", rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if int(hashlib.sha1(dst[len(out):].encode()).hexdigest()[:8], 16) % 400 == 0:
                with open(src, "rb") as f:
                    data = f.read()
                if not data.endswith(b"\n"):
                    data += b"\n"
                data += (secret_line(r) + "\n").encode()
                with open(dst, "wb") as f:
                    f.write(data)
                planted_small += 1
            else:
                shutil.copyfile(src, dst)
            written += os.path.getsize(dst)
            nfiles += 1
        replica += 1
    secrets += planted_small
    manifest.update(replicas=replica, secrets_planted=secrets)
    files, total = count(out)
    manifest.update(files=files, bytes=total)
    with open(out.rstrip("/") + ".manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def count(tree):
    files = total = 0
    for dirpath, _, filenames in os.walk(tree):
        for fn in filenames:
            files += 1
            total += os.path.getsize(os.path.join(dirpath, fn))
    return files, total


def build_subset(tree: str, size_gb: float, out: str):
    budget = int(size_gb * 1e9)
    entries = []
    for dirpath, _, filenames in os.walk(tree):
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            rel = os.path.relpath(p, tree)
            entries.append((hashlib.sha1(rel.encode()).hexdigest(), rel, os.path.getsize(p)))
    entries.sort()
    if os.path.exists(out):
        if os.listdir(out) and not os.path.exists(out.rstrip("/") + ".manifest.json"):
            raise SystemExit(f"gen_tree.py: {out} exists and was not made by gen_tree.py; refusing to overwrite")
        shutil.rmtree(out)
    os.makedirs(out)
    total = files = 0
    for _, rel, sz in entries:
        if sz > budget // 4 or total + sz > budget:
            continue
        dst = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.link(os.path.join(tree, rel), dst)
        except OSError:
            shutil.copyfile(os.path.join(tree, rel), dst)
        total += sz
        files += 1
        if total >= budget * 0.999:
            break
    manifest = {"generator": "bench/scan/gen_tree.py --subset", "tree": os.path.abspath(tree), "size_gb": size_gb,
                "files": files, "bytes": total}
    with open(out.rstrip("/") + ".manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--size-gb", type=float, default=1.0, help="target size in 10^9 bytes")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--subset", metavar="TREE", help="make a deterministic subset of TREE instead")
    a = ap.parse_args(argv)
    if a.subset:
        m = build_subset(a.subset, a.size_gb, a.out)
    else:
        m = build_tree(a.out, a.size_gb, a.seed)
    print(f"gen_tree: {a.out}: {m['files']} files, {m['bytes']} bytes"
          + (f", {m['secrets_planted']} secrets planted, sources: {', '.join(m['sources'])}" if "sources" in m else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
