"""Launch the TVM-generated CUDA linear kernels with CuPy (no TVM on the GPU machine).

:func:`edgespool.kernels.tvm_build.cuda_artifacts` writes, per kernel, the CUDA C source TVM emits, a fatbin
compiled by nvcc for the target arch, and a launch record (kernel name, parameter order, grid, block). Here CuPy
loads the fatbin (``cupy.RawModule(path=...)``) or, when there is none for this GPU (sm_53: CUDA 13 dropped it),
compiles the source with NVRTC, and launches it on device arrays. Only numpy and cupy are needed.
:class:`CudaEntry` (the loading) is shared with the attention kernels (:mod:`.cuda_attention`).

``python -m edgespool.kernels.cuda_launch DIR`` checks every cache entry under DIR (``*/meta.json``) on random
int8/int4 data against the numpy reference of :mod:`edgespool.kernels.quant` and prints max error and timing.
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
from .quant import linear as ref_linear
from .quant import quantize
from .tvm_build import LinearSpec


class CudaEntry:
    """One compile-cache entry (``meta.json`` + ``kernel.fatbin`` and/or ``kernel.cu``) loaded with CuPy: the fatbin
    when it was built for this GPU's arch, else the CUDA source compiled by NVRTC for this GPU (a Jetson Nano's
    sm_53 entries carry the source only: nvcc 13 dropped sm_53). Subclasses say how to read the spec."""

    @staticmethod
    def spec_from_dict(d: dict[str, Any]) -> Any:
        raise NotImplementedError

    def __init__(self, entry_dir: str | Path):
        import cupy as cp

        d = Path(entry_dir)
        self.meta: dict[str, Any] = json.loads((d / "meta.json").read_text())
        self.spec = self.spec_from_dict(self.meta["spec"])
        self.launch: dict[str, Any] = self.meta["launch"]
        cc = cp.cuda.Device().compute_capability
        here = f"sm_{cc[0]}{cc[1:]}"
        if "kernel.fatbin" in self.meta["files"] and self.launch["arch"] == here:
            self.module = cp.RawModule(path=str(d / "kernel.fatbin"))
            self.loaded_from = "fatbin"
        else:
            self.module = cp.RawModule(code=(d / "kernel.cu").read_text(), options=(f"--gpu-architecture={here}",))
            self.loaded_from = "nvrtc"


class CudaLinear(CudaEntry):
    """One compiled linear kernel on the GPU: ``__call__(x, w, scale)`` on cupy arrays returns cupy ``y``."""

    spec_from_dict = staticmethod(LinearSpec.from_dict)

    def __init__(self, entry_dir: str | Path):
        super().__init__(entry_dir)
        self.kernel = self.module.get_function(self.launch["kernel"])

    def __call__(self, x, w, scale=None, y=None):
        import cupy as cp

        s = self.spec
        if s.batch == "gemv":
            if x.shape != (1, s.in_features):
                raise TargetError(f"{s.name} takes x [1, {s.in_features}], got {tuple(x.shape)}")
            yshape: tuple = (1, s.out_features)
            mb = None
        else:
            if x.ndim != 3 or x.shape[1:] != (s.row_tile, s.in_features):
                raise TargetError(f"{s.name} takes x [mb, {s.row_tile}, {s.in_features}], got {tuple(x.shape)}")
            mb = int(x.shape[0])
            yshape = (mb, s.row_tile, s.out_features)
        if y is None:
            y = cp.empty(yshape, dtype=cp.float32)
        arrays = {"x": x, "w": w, "scale": scale, "y": y}
        args = []
        for p in self.launch["params"]:
            if p["pointer"]:
                a = arrays.get(p["name"])
                if a is None:
                    raise TargetError(f"{s.name}: missing argument {p['name']}")
                args.append(a)
            else:
                args.append(np.int32(mb if p["name"] == "mb" else 0))
        self.kernel(tuple(self.launch["grid"]), tuple(self.launch["block"]), tuple(args))
        return y


def check_entry(entry_dir: Path, iters: int = 50) -> dict[str, Any]:
    """Run one cache entry on random data; max abs error vs the numpy reference (relative to max |y|), timing."""
    import cupy as cp

    k = CudaLinear(entry_dir)
    s = k.spec
    rng = np.random.default_rng(0)
    wf = rng.standard_normal((s.out_features, s.in_features)).astype(np.float32)
    q = quantize(wf, s.scheme, s.group_size or 32)
    m = 1 if s.batch == "gemv" else 4 * s.row_tile
    x = rng.standard_normal((m, s.in_features)).astype(np.float32)
    ref = ref_linear(x, q)
    xg = cp.asarray(x if s.batch == "gemv" else x.reshape(m // s.row_tile, s.row_tile, s.in_features))
    wg = cp.asarray(q.data)
    sg = cp.asarray(q.scale) if q.scale is not None else None
    y = k(xg, wg, sg)
    cp.cuda.Device().synchronize()
    got = cp.asnumpy(y).reshape(m, s.out_features)
    err = float(np.abs(got - ref).max())
    rel = err / float(np.abs(ref).max())
    start, end = cp.cuda.Event(), cp.cuda.Event()
    for _ in range(5):
        k(xg, wg, sg, y)
    start.record()
    for _ in range(iters):
        k(xg, wg, sg, y)
    end.record()
    end.synchronize()
    ms = cp.cuda.get_elapsed_time(start, end) / iters
    opts = k.meta.get("options", {}).get("cuda")
    return {"kernel": s.name, "cuda_schedule": opts, "loaded_from": k.loaded_from, "rows": m,
            "max_abs_err": err, "rel_err": rel,
            "ms": ms, "weight_GBps": q.nbytes / (ms * 1e-3) / 1e9}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", type=Path, help="directory of kernel cache entries (each with meta.json)")
    ap.add_argument("--tol", type=float, default=1e-4, help="max relative error accepted")
    args = ap.parse_args(argv)
    bad = 0
    entries = sorted(p.parent for p in args.dir.glob("*/meta.json"))
    if not entries:
        print(f"no kernel entries under {args.dir}", file=sys.stderr)
        return 2
    t0 = time.time()
    for d in entries:
        r = check_entry(d)
        ok = r["rel_err"] <= args.tol
        bad += not ok
        print(json.dumps({**r, "ok": ok}))
    print(json.dumps({"entries": len(entries), "failed": bad, "seconds": round(time.time() - t0, 2)}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
