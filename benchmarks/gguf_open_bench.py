"""Opening a GGUF (header + vocabulary): edgespool's GGUFReaderLite vs gguf-py's GGUFReader, each in a fresh
process, interleaved, medians of open time and peak RSS (VmHWM, the interpreter with numpy + gguf imported included).

    python -m edgespool.benchmarks.gguf_open_bench --real qwen2.5-coder-0.5b --real smollm2-135m --runs 5 [--json]

The real files come from the asset cache (``edgespool fetch NAME``); ``--file PATH`` takes any GGUF."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

_MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    import numpy, gguf
    from edgespool.exporters.gguf_reader import GGUFReaderLite

    def peak_mb():  # VmHWM: this process image's peak RSS (ru_maxrss would carry the parent's across exec)
        try:
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    base = peak_mb()
    t = time.perf_counter()
    r = gguf.GGUFReader(sys.argv[1]) if sys.argv[2] == "gguf-py" else GGUFReaderLite(sys.argv[1])
    dt = time.perf_counter() - t
    print(json.dumps({"open_s": dt, "base_mb": base, "peak_mb": peak_mb(), "tensors": len(r.tensors),
                      "fields": len(r.fields)}))
""")

READERS = ("lite", "gguf-py")


def measure_open(path: Path, which: str = "lite") -> dict:
    """Open time (s) and peak RSS (MB) of one reader (``lite`` or ``gguf-py``) on ``path``, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path), which], capture_output=True, text=True,
                         check=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    return json.loads(out.stdout)


def bench(path: Path, runs: int) -> dict:
    """``runs`` interleaved opens by each reader; medians and ranges per reader."""
    got: dict[str, list[dict]] = {w: [] for w in READERS}
    for _ in range(runs):
        for w in READERS:
            got[w].append(measure_open(path, w))
    out = {"file": str(path), "bytes": path.stat().st_size, "runs": runs}
    for w, ms in got.items():
        t = [m["open_s"] for m in ms]
        p = [m["peak_mb"] for m in ms]
        out[w] = {"open_s_median": statistics.median(t), "open_s_range": [min(t), max(t)],
                  "peak_mb_median": statistics.median(p), "base_mb": ms[0]["base_mb"], "tensors": ms[0]["tensors"]}
    out["open_speedup"] = out["gguf-py"]["open_s_median"] / out["lite"]["open_s_median"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", action="append", default=[], help="an asset name (edgespool fetch NAME)")
    ap.add_argument("--file", action="append", default=[], type=Path, help="a GGUF file")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    a = ap.parse_args(argv)
    from ..apps.assets import fetch

    paths = [Path(fetch(n)) for n in a.real] + list(a.file)
    if not paths:
        ap.error("give --real NAME or --file PATH")
    rows = [bench(p, a.runs) for p in paths]
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| file | gguf-py GGUFReader | GGUFReaderLite | open speed-up |\n|---|---|---|---|")
    for r in rows:
        g, lt = r["gguf-py"], r["lite"]
        print(f"| {Path(r['file']).name} ({r['bytes'] / 1e6:.0f} MB) | {g['open_s_median']:.2f} s "
              f"({g['open_s_range'][0]:.2f}-{g['open_s_range'][1]:.2f}), {g['peak_mb_median']:.0f} MB | "
              f"{lt['open_s_median']:.3f} s ({lt['open_s_range'][0]:.3f}-{lt['open_s_range'][1]:.3f}), "
              f"{lt['peak_mb_median']:.0f} MB | {r['open_speedup']:.0f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
