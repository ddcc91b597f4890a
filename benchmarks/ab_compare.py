"""A/B: the same edgespool command from two source trees, interleaved, medians and ratios (for "a refactor changed no
figure" checks).

Each tree is a checkout whose root is the ``edgespool`` package; it runs as ``python -m edgespool ...`` with
``PYTHONPATH`` pointing at a folder holding an ``edgespool`` symlink to the tree, so the two trees share one venv.
The command must print JSON (``--json``); ``--fields`` picks the numbers compared (dotted paths).

    python -m edgespool.benchmarks.ab_compare --a /tmp/orig --b . --runs 3 \
        --fields decode_tok_s,prefill_tok_s,peak_rss_bytes -- demo --json --out {tmp}/demo
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _pkg_root(tree: Path, into: Path) -> Path:
    root = into / "pkg"
    root.mkdir(parents=True, exist_ok=True)
    link = root / "edgespool"
    if not link.exists():
        link.symlink_to(tree.resolve(), target_is_directory=True)
    return root


def _get(d: dict, path: str):
    for k in path.split("."):
        d = d[k]
    return d


def run_once(tree_root: Path, cmd: list[str], tmp: Path, side: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree_root)}
    argv = [sys.executable, "-m", "edgespool", *[c.replace("{tmp}", str(tmp)).replace("{side}", side) for c in cmd]]
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
    out = p.stdout
    return json.loads(out[out.index("{"):])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", type=Path, required=True, help="tree A (e.g. the commit before a refactor)")
    ap.add_argument("--b", type=Path, required=True, help="tree B")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fields", required=True, help="comma-separated dotted JSON paths")
    ap.add_argument("cmd", nargs=argparse.REMAINDER,
                    help="-- edgespool arguments ({tmp}: a per-tree temp dir, {side}: a or b)")
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    fields = a.fields.split(",")
    res: dict[str, dict[str, list[float]]] = {"a": {f: [] for f in fields}, "b": {f: [] for f in fields}}
    with tempfile.TemporaryDirectory() as td:
        roots = {k: _pkg_root(getattr(a, k), Path(td) / k) for k in ("a", "b")}
        tmps = {k: Path(td) / f"tmp-{k}" for k in ("a", "b")}
        for t in tmps.values():
            t.mkdir()
        for _ in range(a.runs):
            for k in ("a", "b"):  # interleaved
                out = run_once(roots[k], cmd, tmps[k], k)
                for f in fields:
                    res[k][f].append(float(_get(out, f)))
    summary = {f: {"a_median": statistics.median(res["a"][f]), "b_median": statistics.median(res["b"][f]),
                   "b_over_a": statistics.median(res["b"][f]) / statistics.median(res["a"][f])
                   if statistics.median(res["a"][f]) else None, "a": res["a"][f], "b": res["b"][f]}
               for f in fields}
    print(json.dumps({"cmd": cmd, "runs": a.runs, "a": str(a.a), "b": str(a.b), "fields": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
