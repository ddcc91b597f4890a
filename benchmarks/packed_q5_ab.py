"""In-process A/B of x16 packed Q5_0 kernels: this checkout's library vs one built from ``--old-src`` (and optionally
``--var-src``), all loaded in one process, the same random blocks packed by each, alternating rounds, medians.
Controls: q8_0 x16 and q4_0 x16 of this checkout's library. Qwen2.5-Coder-0.5B shapes, 1 thread. cold = one decode
step (every linear of 24 layers + the head, distinct weights: DRAM), hot = one 896x896 matrix repeated 200 times
(L2), prefill = one layer's linears x 128 rows. Standalone (numpy + gcc), like block_kernel_scaling.py.

    python benchmarks/packed_q5_ab.py --old-src /tmp/old/kernels/c_src [--var-src DIR] [--rounds 9]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

def main() -> None:
    """Build the libraries, pack, time, print one JSON row per case."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old-src", type=Path, required=True, help="kernels/c_src of the revision to compare against")
    ap.add_argument("--var-src", type=Path, help="a third kernels/c_src (a variant under test)")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    TMP = Path(tempfile.mkdtemp())
    HERE = Path(__file__).resolve().parent.parent / "kernels" / "c_src"

    def build(src: Path, name: str):
        """Load blockdot.c of ``src`` built for this CPU."""
        out = str(TMP / f"{name}.so")
        subprocess.run(["gcc", "-O3", "-fPIC", "-shared", "-pthread", "-march=native", "-o", out, str(src / "blockdot.c"),
                        "-lm"], check=True)
        lib = ctypes.CDLL(out)
        vp, lg, it = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
        lib.es_pool_new.restype, lib.es_pool_new.argtypes = vp, [it]
        lib.es_act_bytes.restype, lib.es_act_bytes.argtypes = lg, [it, it]
        lib.es_packed_bytes.restype, lib.es_packed_bytes.argtypes = lg, [it, it, it]
        lib.es_pack.argtypes = [it, vp, lg, vp, lg, it, it, vp]
        lib.es_linear_packed.restype = it
        lib.es_linear_packed.argtypes = [vp, it, vp, it, it, vp, it, vp, vp, it]
        return lib

    old = build(args.old_src, "old")
    new = build(HERE, "new")
    var = build(args.var_src, "var") if args.var_src else None
    H, F, L, V = 896, 4864, 24, 151936
    shapes = [(896, H), (128, H), (128, H), (H, 896), (F, H), (F, H), (H, F)]
    FMT = {"q5_0": (3, 22), "q8_0": (0, 34), "q4_0": (1, 18)}
    rng = np.random.default_rng(0)

    def rand(fmt, o, i):
        bb = FMT[fmt][1]
        raw = rng.integers(0, 256, (o, i // 32, bb), dtype=np.uint8)
        raw[:, :, 0:2] = np.full((o, i // 32), 0.01, np.float16).view(np.uint8).reshape(o, i // 32, 2)
        return raw.reshape(o, -1)

    def pack(lib, fmt, w, o, i):
        code = FMT[fmt][0]
        out = np.empty(lib.es_packed_bytes(code, o, i), np.uint8)
        lib.es_pack(code, w.ctypes.data, w.shape[1], None, 0, o, i, out.ctypes.data)
        return out

    cases = {}
    for fmt in ("q5_0", "q8_0", "q4_0"):
        stored = [(rand(fmt, o, i), o, i) for _ in range(L) for o, i in shapes] + [(rand(fmt, V, H), V, H)]
        libs = [("new", new)] + ([("old", old)] + ([("var", var)] if var else []) if fmt == "q5_0" else [])
        for name, lib in libs:
            cases[f"{fmt} {name}"] = (lib, FMT[fmt][0], [(pack(lib, fmt, w, o, i), o, i) for w, o, i in stored])
        del stored
    scratch = np.empty(new.es_act_bytes(F, 128) // 8 + 16, np.float64)
    pool = {id(lb): lb.es_pool_new(1) for lb in (new, old, var) if lb is not None}
    x1 = {i: np.ones((1, i), np.float32) for i in (H, F)}
    x128 = {i: rng.standard_normal((128, i)).astype(np.float32) for i in (H, F)}
    y = np.empty((128, V), np.float32)

    def run(case, kind):
        lib, code, ws = cases[case]
        p = pool[id(lib)]
        if kind == "cold":
            sel, xs, m, reps = ws, x1, 1, 1
        elif kind == "hot":
            sel, xs, m, reps = ws[:1], x1, 1, 200
        else:
            sel, xs, m, reps = ws[:7], x128, 128, 1
        t0 = time.perf_counter()
        for _ in range(reps):
            for w, o, i in sel:
                lib.es_linear_packed(p, code, w.ctypes.data, o, i, xs[i].ctypes.data, m, y.ctypes.data, scratch.ctypes.data, 1)
        return (time.perf_counter() - t0) / reps

    res = {c: {k: [] for k in ("cold", "hot", "prefill")} for c in cases}
    for c in cases:
        run(c, "cold")
    R = args.rounds
    for r in range(R):
        for c in cases:
            for k in ("cold", "hot", "prefill"):
                res[c][k].append(run(c, k))
    out = {"load": os.getloadavg(), "rounds": R, "rows": []}
    for c, (lib, code, ws) in cases.items():
        nb = sum(w.nbytes for w, _, _ in ws)
        cold, hot, pre = (float(np.median(res[c][k])) for k in ("cold", "hot", "prefill"))
        row = {"case": c, "MB": nb / 1e6, "decode_step_ms": 1e3 * cold, "decode_GBps": nb / cold / 1e9,
               "hot_896_us": 1e6 * hot, "hot_GBps": ws[0][0].nbytes / hot / 1e9, "prefill_tok_s_linears": 128 / (pre * L),
               "cold_all_ms": [round(1e3 * v, 2) for v in res[c]["cold"]]}
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"load_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
