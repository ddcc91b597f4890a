"""Thread scaling of the C block kernels (kernels/c_src/blockdot.c) on a model's linear shapes: one decode step's
GEMVs (every linear of every layer + the head, weights rotating through memory, so they come from DRAM like a
real decode) and one prefill chunk (GEMM of ``--prompt`` rows), per weight format and thread count.

Standalone on purpose (numpy + a C compiler, no edgespool import, no TVM): it runs where edgespool is not
installed, e.g. the GPU machine's 16-core CPU. Weights are random blocks with sane f16 scales (speed does not
depend on the values).

    python benchmarks/block_kernel_scaling.py --model qwen2.5-coder-1.5b --threads 1,2,4,8,16 --json out.json
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parent.parent / "kernels" / "c_src" / "blockdot.c"
BLOCKS = {"q8_0": (0, 32, 34, [0]), "q4_0": (1, 32, 18, [0]), "q4_k": (4, 256, 144, [0, 2]),
          "q6_k": (6, 256, 210, [208]), "q5_0": (3, 32, 22, [0]), "q3_k": (10, 256, 110, [108]),
          "q2_k": (11, 256, 84, [80, 82])}
MODELS = {  # hidden, ffn, layers, q heads, kv heads, head dim, vocab
    "qwen2.5-coder-0.5b": (896, 4864, 24, 14, 2, 64, 151936),
    "qwen2.5-coder-1.5b": (1536, 8960, 28, 12, 2, 128, 151936),
    "smollm2-135m": (576, 1536, 30, 9, 3, 64, 49152),
}


def build(march: str, cflags: str = "") -> Path:
    out = Path(tempfile.mkdtemp()) / "blockdot.so"
    subprocess.run(["gcc", "-O3", "-fPIC", "-shared", "-pthread", march, *cflags.split(), "-o", str(out), str(SRC),
                    "-lm"], check=True)
    return out


def rand_weight(rng: np.random.Generator, fmt: str, rows: int, n: int) -> np.ndarray:
    _, bv, bb, f16 = BLOCKS[fmt]
    raw = rng.integers(0, 256, (rows, n // bv, bb), dtype=np.uint8)
    for p in f16:
        raw[:, :, p:p + 2] = np.full((rows, n // bv), 0.01, np.float16).view(np.uint8).reshape(rows, n // bv, 2)
    return raw.reshape(rows, -1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", choices=list(MODELS))
    ap.add_argument("--formats", default="q8_0,q4_0,q4_k")
    ap.add_argument("--threads", default="1,2,4,8,16")
    ap.add_argument("--prompt", type=int, default=128, help="rows of the prefill GEMM")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--march", default="-march=native")
    ap.add_argument("--cflags", default="", help="extra compiler flags, e.g. -DES_ROW_TILE_BYTES=1 (A/B builds)")
    ap.add_argument("--packed", action="store_true",
                    help="repack every format this build packs (es_pack_kind) into the x16 layout (c_src/blockpack.h) "
                         "and time es_linear_packed")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    lib = ctypes.CDLL(str(build(a.march, a.cflags)))
    lib.es_pool_new.restype, lib.es_pool_new.argtypes = ctypes.c_void_p, [ctypes.c_int]
    lib.es_pool_free.argtypes = [ctypes.c_void_p]
    lib.es_act_bytes.restype, lib.es_act_bytes.argtypes = ctypes.c_long, [ctypes.c_int, ctypes.c_int]
    vp, lg, it = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    lib.es_linear.argtypes = [vp, it, vp, lg, vp, lg, it, it, vp, it, vp, vp, it]
    lib.es_isa.restype = ctypes.c_char_p
    lib.es_packed_bytes.restype, lib.es_packed_bytes.argtypes = lg, [it, it, it]
    lib.es_pack.argtypes = [it, vp, lg, vp, lg, it, it, vp]
    lib.es_pack_kind.restype, lib.es_pack_kind.argtypes = it, [it]
    lib.es_linear_packed.restype = it
    lib.es_linear_packed.argtypes = [vp, it, vp, it, it, vp, it, vp, vp, it]
    H, F, L, nh, nkv, hd, V = MODELS[a.model]
    shapes = [(nh * hd, H), (nkv * hd, H), (nkv * hd, H), (H, nh * hd), (F, H), (F, H), (H, F)]
    rng = np.random.default_rng(0)
    res = {"model": a.model, "isa": lib.es_isa().decode(), "cpus": os.cpu_count(), "machine": platform.processor(),
           "rows": []}
    for fmt in a.formats.split(","):
        bv = BLOCKS[fmt][1]
        ok = [(o, i) for o, i in shapes if i % bv == 0]
        # one decode step: every layer's linears (distinct copies, so weights come from DRAM) + the head
        ws = [(rand_weight(rng, fmt, o, i), o, i) for _ in range(L) for o, i in ok]
        if H % bv == 0:
            ws.append((rand_weight(rng, fmt, V, H), V, H))
        packed = a.packed and bool(lib.es_pack_kind(BLOCKS[fmt][0]))
        if packed:  # the stored blocks replaced by their x16 form (one copy, as the runtime keeps them)
            code = BLOCKS[fmt][0]
            pk = []
            for w, o, i in ws:
                out = np.empty(lib.es_packed_bytes(code, o, i), np.uint8)
                lib.es_pack(code, w.ctypes.data, w.shape[1], None, 0, o, i, out.ctypes.data)
                pk.append((out, o, i))
            ws = pk
        nbytes = sum(w.nbytes for w, _, _ in ws)
        for t in [int(v) for v in a.threads.split(",")]:
            pool = lib.es_pool_new(t)
            scratch = np.empty(lib.es_act_bytes(max(H, F), a.prompt) // 8 + 16, np.float64)

            bufs = {(m, o, i): (np.ones((m, i), np.float32), np.empty((m, o), np.float32))
                    for m in (1, a.prompt) for _, o, i in ws}

            def run(m: int, sel: list, pool=pool, scratch=scratch, t=t, bufs=bufs, fmt=fmt) -> float:
                t0 = time.perf_counter()
                for w, o, i in sel:
                    x, y = bufs[(m, o, i)]
                    if packed:
                        lib.es_linear_packed(pool, BLOCKS[fmt][0], w.ctypes.data, o, i, x.ctypes.data, m,
                                             y.ctypes.data, scratch.ctypes.data, t)
                    else:
                        lib.es_linear(pool, BLOCKS[fmt][0], w.ctypes.data, w.shape[1], None, 0, o, i, x.ctypes.data,
                                      m, y.ctypes.data, scratch.ctypes.data, t)
                return time.perf_counter() - t0

            run(1, ws)
            dec = min(run(1, ws) for _ in range(a.reps))
            layer = ws[: len(ok)]  # one layer's linears, prefill rows
            pre = min(run(a.prompt, layer) for _ in range(a.reps)) * L
            lib.es_pool_free(pool)
            row = {"format": fmt + (" x16" if packed else ""), "threads": t, "decode_step_ms": 1e3 * dec,
                   "decode_GBps": nbytes / dec / 1e9, "weights_MB": nbytes / 1e6,
                   "stored_MB": sum(o * (i // bv) * BLOCKS[fmt][2] for _, o, i in ws) / 1e6,
                   "prefill_tok_s_linears": a.prompt / pre}
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
