"""End-to-end A/B of two block-kernel libraries on one real ``--quant keep`` bundle, against llama.cpp on the file.

The bundle is exported once with the current code (its ``kernels/`` library built from this checkout); a second
copy of it (hard links) gets a library built from ``--old-src`` (a ``kernels/c_src`` directory of another
revision, e.g. ``git archive REV kernels/c_src | tar -x -C /tmp/old``) with the same compiler flags. Each round
runs llama.cpp on the GGUF, the bundle, and the copy, one process per child (``resident_vs_llamacpp.run_child``:
greedy decode after the real code prompt, one ``--prompt``-token prefill); medians over ``--rounds``.

    python -m edgespool.benchmarks.keep_library_ab --old-src /tmp/old/kernels/c_src --threads 1 --rounds 3 \\
        --work /tmp/kab --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import resident_vs_llamacpp as rv


def old_copy(bundle: Path, dest: Path, old_src: Path) -> Path:
    """``bundle`` hard-linked into ``dest`` with its block library rebuilt from ``old_src/blockdot.c``."""
    if not dest.exists():
        shutil.copytree(bundle, dest, copy_function=os.link)
        rec = json.loads((bundle / "kernels" / "kernels.json").read_text())["block"]
        lib = dest / "kernels" / rec["file"]
        lib.unlink()  # a new inode: the original bundle's library stays as it is
        subprocess.run([rec.get("cc", "gcc"), *rec["flags"], "-o", str(lib), str(old_src / "blockdot.c"), "-lm"],
                       check=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="a fetched GGUF model (`edgespool fetch`)")
    ap.add_argument("--old-src", type=Path, required=True, help="kernels/c_src of the revision to compare against")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--work", type=Path, default=Path("/tmp/keep_library_ab"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if not (a.old_src / "blockdot.c").exists():
        raise SystemExit(f"--old-src {a.old_src}: no blockdot.c there")
    gg = sorted((Path.home() / ".cache/edgespool/assets" / a.model).glob("*.gguf"))
    if not gg:
        raise SystemExit(f"{a.model}: run `edgespool fetch {a.model}` first")
    import gguf

    new = rv._export_once(gg[0], a.work / a.model / "bundle_keep", "keep")
    old = old_copy(new, a.work / a.model / "bundle_keep_old_lib", a.old_src)
    vocab = len(gguf.GGUFReader(str(gg[0])).fields["tokenizer.ggml.tokens"].data)
    child = argparse.Namespace(runs=1, short=8, decode=a.decode, prompt=a.prompt, profile=None)
    systems = [("llama.cpp file", gg[0], "llama.cpp file"), ("edgespool keep", new, "keep, this library"),
               ("edgespool keep", old, "keep, --old-src library")]
    out: list[dict] = []
    for r in range(a.rounds):
        for system, path, label in systems:
            load = rv._load()
            res = rv.run_child(system, path, a.threads, child, vocab)
            res.update(label=label, load_before=load, round=r)
            out.append(res)
            print(f"round {r} {label:24s} decode {res['decode_med']:6.1f} prefill {res['prefill_med']:6.1f} "
                  f"(load {load})", file=sys.stderr)
    ref = [x for x in out if x["label"] == "llama.cpp file"]
    for _, _, label in systems:
        rs = [x for x in out if x["label"] == label]
        dec, pre = (float(np.median([x[k] for x in rs])) for k in ("decode_med", "prefill_med"))
        rdec = dec / float(np.median([x["decode_med"] for x in ref]))
        rpre = pre / float(np.median([x["prefill_med"] for x in ref]))
        toks, want = rs[-1]["tokens"], ref[-1]["tokens"]
        same = next((i for i, (p, q) in enumerate(zip(toks, want)) if p != q), min(len(toks), len(want)))
        print(f"{label:24s} decode {dec:6.1f} tok/s ({rdec:.2f}x)  prefill {pre:6.1f} ({rpre:.2f}x)  "
              f"greedy tokens = llama.cpp's: first {same} of {len(want)}  {rs[-1].get('kernels', '')}")
    if a.json:
        a.json.write_text(json.dumps({"threads": a.threads, "model": a.model, "results": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
