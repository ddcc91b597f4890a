"""Launch the TVM-generated CUDA attention kernels (:mod:`.tvm_attention`) with CuPy, and check them on a GPU.

``CudaAttention(entry_dir)`` loads one compile-cache entry (``meta.json`` + ``kernel.fatbin`` and/or ``kernel.cu``):
the fatbin when it was built for this GPU's arch, else the CUDA source through NVRTC. ``decode`` / ``prefill``
take CuPy arrays in the KV cache's layout (``K``/``V`` ``[nkv, S, D]`` views with any row stride).

    python -m edgespool.kernels.cuda_attention DIR [DIR ...]

runs each entry on random data against the numpy reference (:func:`edgespool.kernels.attention.attention`) and
prints one JSON line per case (max abs error, time). Needs cupy; no TVM.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TargetError
from .cuda_launch import CudaEntry
from .tvm_attention import AttentionSpec


class CudaAttention(CudaEntry):
    """The decode and prefill kernels of one attention cache entry, launched with CuPy."""

    spec_from_dict = staticmethod(AttentionSpec.from_dict)

    def __init__(self, entry_dir: str | Path):
        super().__init__(entry_dir)
        self.kernels = {f: self.module.get_function(k["kernel"]) for f, k in self.launch["kernels"].items()}

    def _run(self, form: str, q, K, V, scale: float | None, T: int, past: int = 0, window: int = 0):
        import cupy as cp

        s = self.spec
        D = s.head_dim
        for name, a in (("K", K), ("V", V)):
            if a.dtype != cp.float32 or a.ndim != 3 or a.shape[0] != s.n_kv_heads or a.shape[2] != D \
                    or a.strides[2] != 4 or a.strides[1] != 4 * D:
                raise TargetError(f"{s.name}: {name} must be float32 [{s.n_kv_heads}, S, {D}] with contiguous rows, "
                                  f"got {a.dtype} {a.shape} strides {a.strides}")
        q = cp.ascontiguousarray(q, dtype=cp.float32)
        o = cp.empty((T, s.n_heads, D), cp.float32)
        vals = {"q": q, "K": K, "V": V, "o": o, "S": np.int32(K.shape[1]), "Tq": np.int32(T),
                "sk": np.int32(K.strides[0] // 4), "sv": np.int32(V.strides[0] // 4), "past": np.int32(past),
                "window": np.int32(window), "scale": np.float32(D ** -0.5 if scale is None else scale)}
        spec = self.launch["kernels"][form]
        args = tuple(vals[p["name"]] for p in spec["params"])
        grid = tuple(T if g == "T" else g for g in spec["grid"])
        self.kernels[form](grid, tuple(spec["block"]), args)
        return o

    def decode(self, q, K, V, scale: float | None = None):
        """``q [1, nh, D]`` attending to every key of ``K``/``V`` -> ``o [1, nh, D]``."""
        return self._run("decode", q, K, V, scale, 1)

    def prefill(self, q, K, V, past: int, window: int = 0, scale: float | None = None):
        """``q [T, nh, D]``; row ``t`` sees keys ``max(0, past+t+1-window)..past+t`` -> ``o [T, nh, D]``."""
        return self._run("prefill", q, K, V, scale, int(q.shape[0]), past, window)


def check_entry(entry_dir: Path, iters: int = 20) -> list[dict[str, Any]]:
    """Decode and prefill of one entry on random data (K/V as views of a larger cache) vs the numpy reference."""
    import cupy as cp

    from .attention import attention

    k = CudaAttention(entry_dir)
    s = k.spec
    rng = np.random.default_rng(0)
    cache = 2100
    kc = rng.standard_normal((s.n_kv_heads, cache, s.head_dim)).astype(np.float32)
    vc = rng.standard_normal((s.n_kv_heads, cache, s.head_dim)).astype(np.float32)
    kg, vg = cp.asarray(kc), cp.asarray(vc)
    out = []
    for form, T, S, window in (("decode", 1, 1, 0), ("decode", 1, 100, 0), ("decode", 1, 2048, 0),
                               ("prefill", 7, 7, 0), ("prefill", 33, 90, 0), ("prefill", 128, 128, 0),
                               ("prefill", 40, 300, 17)):
        q = rng.standard_normal((T, s.n_heads, s.head_dim)).astype(np.float32)
        ref = attention(q, kc[:, :S], vc[:, :S], np.arange(S - T, S), np.arange(S), window or None)
        qg = cp.asarray(q)

        def run():
            if form == "decode":
                return k.decode(qg, kg[:, :S], vg[:, :S])
            return k.prefill(qg, kg[:, :S], vg[:, :S], S - T, window)

        got = cp.asnumpy(run())
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(iters):
            run()
        end.record()
        end.synchronize()
        out.append({"kernel": s.name, "form": form, "T": T, "S": S, "window": window, "loaded_from": k.loaded_from,
                    "max_abs_err": float(np.abs(got - ref).max()),
                    "us": cp.cuda.get_elapsed_time(start, end) / iters * 1e3})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="attention compile-cache entries (meta.json + kernel.cu)")
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs error accepted")
    a = ap.parse_args(argv)
    bad = 0
    t0 = time.time()
    for d in a.dirs:
        for r in check_entry(d):
            r["ok"] = r["max_abs_err"] <= a.tol
            bad += not r["ok"]
            print(json.dumps(r), flush=True)
    print(json.dumps({"entries": len(a.dirs), "failed": bad, "seconds": round(time.time() - t0, 2)}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
