"""Export and load at a board's scale, on real GGUFs, beside copying the file and beside llama.cpp's load.

Per model (assets of :mod:`edgespool.apps.assets`), each measurement in its own child process, runs interleaved:

* ``copy``: ``shutil.copyfile`` of the GGUF (the floor for an export that keeps the file's bytes);
* ``export``: ``edgespool export GGUF --quant keep --no-kernels`` (wall time, peak RSS of the child = VmHWM);
* ``load``: ``edgespool.load(bundle)`` and then the first forward of one token (time to the first logits);
* ``llama``: ``llama_cpp.Llama(gguf)`` (the peer's best configuration here: benchmarks/llamacpp_peer.py) and its
  first ``eval`` of one token.

    python -m edgespool.benchmarks.export_load_bench --models qwen2.5-coder-0.5b,qwen2.5-coder-1.5b --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edgespool.benchmarks.child_json import emit, run_child


def child(kind: str, gguf: str, work: str) -> dict:
    from edgespool.units import peak_rss_bytes

    out: dict = {"kind": kind}
    if kind == "copy":
        dst = Path(work) / "copy.gguf"
        t = time.perf_counter()
        shutil.copyfile(gguf, dst)
        os.sync()
        out["seconds"] = time.perf_counter() - t
        dst.unlink()
    elif kind == "export":
        from edgespool.exporters.compress import QuantPolicy
        from edgespool.exporters.export import export_model, open_source

        t = time.perf_counter()
        src = open_source(gguf)
        export_model(src, Path(work) / "bundle", policy=QuantPolicy(quant="keep"), overwrite=True, onnx=False,
                     kernels=False, progress=False)
        src.close()
        out["seconds"] = time.perf_counter() - t
    elif kind == "load":
        import edgespool

        t = time.perf_counter()
        m = edgespool.load(Path(work) / "bundle")
        out["seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        m.logits([1])
        out["first_token_s"] = time.perf_counter() - t
    elif kind == "llama":
        from edgespool.benchmarks.llamacpp_peer import open_llama

        t = time.perf_counter()
        llm, out["config"] = open_llama(gguf, n_ctx=512, verbose=False)
        out["seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        llm.eval([1])
        out["first_token_s"] = time.perf_counter() - t
    out["peak_rss_bytes"] = peak_rss_bytes()
    return out


def _run(kind: str, gguf: str, work: Path) -> dict:
    return {"kind": kind, **run_child("edgespool.benchmarks.export_load_bench",
                                      ["--child", kind, "--gguf", gguf, "--work-dir", str(work)])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--gguf", help=argparse.SUPPRESS)
    ap.add_argument("--work-dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.gguf, a.work_dir)))
        return 0
    from edgespool.apps.assets import fetch
    from edgespool.benchmarks.llamacpp_peer import decide_extra_bufts

    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "runs": a.runs, "models": {}}
    for name in a.models.split(","):
        gguf = str(fetch(name))
        decide_extra_bufts(gguf)
        with tempfile.TemporaryDirectory(dir="/tmp") as td:
            rows: dict[str, list[dict]] = {k: [] for k in ("copy", "export", "load", "llama")}
            for _ in range(a.runs):
                for k in rows:
                    rows[k].append(_run(k, gguf, Path(td)))
        summ = {}
        for k, rs in rows.items():
            ok = [r for r in rs if "error" not in r]
            summ[k] = {f: statistics.median(r[f] for r in ok) for f in ("seconds", "first_token_s", "peak_rss_bytes")
                       if ok and f in ok[0]}
            summ[k]["runs"] = rs
        summ["load_over_llama"] = summ["load"]["seconds"] / summ["llama"]["seconds"] if summ["llama"].get(
            "seconds") else None
        summ["export_over_copy"] = summ["export"]["seconds"] / summ["copy"]["seconds"]
        summ["gguf_bytes"] = os.path.getsize(gguf)
        res["models"][name] = summ
        print(name, json.dumps({k: {f: v for f, v in s.items() if f != "runs"} if isinstance(s, dict) else s
                                for k, s in summ.items()}), file=sys.stderr)
    emit(res, a.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
