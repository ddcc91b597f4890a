"""Per-kernel benchmark of the quantised linear kernels: achieved GB/s of weight bytes vs measured memory bandwidth.

For each (scheme, shape) it times, in one run on the same threads:

* ``tvm``: the TVM kernel through :class:`edgespool.kernels.tvm_backend.TvmKernels` (zero-copy numpy buffers);
* ``numpy``: the reference :func:`edgespool.kernels.quant.linear` (dequantise, then BLAS);
* ``ort``: ONNX Runtime's kernel with the weights as *constant initializers pre-packed at session creation*
  (int4: ``MatMulNBits``; int8: ``DynamicQuantizeLinear`` + ``MatMulInteger``, the dynamic-quant pattern). This is
  the peer's best case, not something edgespool can use for streamed weights (see FACTS.md).

"hot" repeats one weight matrix (it may sit in the 32 MiB L3); "cold" rotates through enough copies that every
call reads DRAM. Memory bandwidth is measured here: a large numpy sum (1 thread) and the same split over threads.

    python -m edgespool.benchmarks.kernel_bench [--shapes 4096x4096,11008x4096] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

from edgespool.kernels import quant

L3_BYTES = 32 << 20


def measure_bandwidth(nbytes: int = 512 << 20, threads: int | None = None) -> dict[str, float]:
    """Read bandwidth (GB/s): ``max`` of a float32 array (a SIMD, memory-bound reduction; a float64 ``sum`` is
    compute-bound at ~18 GB/s here) on 1 thread and split over ``threads`` threads; plus a copy (read + write)."""
    threads = threads or len(os.sched_getaffinity(0))
    a = np.ones(nbytes // 4, np.float32)
    a.max()

    def best(fn, reps=5):
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
        return min(t)

    one = nbytes / best(a.max) / 1e9
    parts = np.array_split(a, threads)

    def multi():
        th = [threading.Thread(target=p.max) for p in parts]
        for t in th:
            t.start()
        for t in th:
            t.join()
    many = nbytes / best(multi) / 1e9
    b = np.empty_like(a)
    copy = 2 * nbytes / best(lambda: np.copyto(b, a)) / 1e9
    return {"read_1thread_GBps": round(one, 1), f"read_{threads}threads_GBps": round(many, 1),
            "copy_rw_GBps": round(copy, 1), "threads": threads}


def _time(fn, iters: int, warm: int = 3) -> float:
    for _ in range(warm):
        fn(0)
    ts = []
    for i in range(iters):
        t0 = time.perf_counter()
        fn(i)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def ort_session(q: quant.QTensor, threads: int):
    """ONNX Runtime session computing x @ W.T with W as a constant (pre-packed) initializer."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    out_f, in_f = q.shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_f])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_f])
    if q.scheme == "int4":
        g = q.group_size
        codes = (quant.unpack_int4(q.data, g).astype(np.int16) + 8).astype(np.uint8)  # [out, in] 0..15
        pairs = codes.reshape(out_f, in_f // g, g // 2, 2)
        packed = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)  # MatMulNBits: consecutive pairs
        inits = [numpy_helper.from_array(packed, "B"),
                 numpy_helper.from_array(q.scale.astype(np.float32).reshape(-1), "S")]
        node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=in_f, N=out_f,
                                bits=4, block_size=g)
        nodes = [node]
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    elif q.scheme == "int8":
        inits = [numpy_helper.from_array(np.ascontiguousarray(q.data.T), "Wt"),
                 numpy_helper.from_array(q.scale.astype(np.float32), "ws")]
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
                 helper.make_node("MatMulInteger", ["xq", "Wt", "xz"], ["acc"]),
                 helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["accf", "xs"], ["t"]),
                 helper.make_node("Mul", ["t", "ws"], ["y"])]
        opsets = [helper.make_opsetid("", 17)]
    else:
        return None
    model = helper.make_model(helper.make_graph(nodes, "lin", [x], [y], inits), opset_imports=opsets)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def bench(shapes: list[tuple[int, int]], schemes: list[str], iters: int, with_ort: bool, with_numpy: bool,
          threads: int) -> list[dict]:
    from edgespool.kernels.tvm_backend import TvmKernels
    from edgespool.kernels.tvm_build import LinearSpec

    rows = []
    rng = np.random.default_rng(0)
    from edgespool.kernels.tvm_build import has_vnni, q8_supported
    from edgespool.targets import get_target

    specs = [LinearSpec(s, o, i, 32 if s == "int4" else 0) for s in schemes for o, i in shapes]
    q8 = has_vnni(get_target("host").tvm_target)
    q8_specs = [LinearSpec(s.scheme, s.out_features, s.in_features, s.group_size, act="q8") for s in specs
                if q8 and q8_supported(s.scheme, s.in_features, s.group_size)]
    t0 = time.perf_counter()
    kern = TvmKernels.for_host(specs)
    kern_q8 = TvmKernels.for_host(q8_specs) if q8_specs else None
    compile_s = time.perf_counter() - t0
    for spec in specs:
        o, i = spec.out_features, spec.in_features
        w = quant.quantize(rng.standard_normal((o, i)).astype(np.float32), spec.scheme, 32)
        ncopy = max(2, -(-3 * L3_BYTES // w.nbytes))  # >= 3x L3 in total: every call misses the cache
        copies = [w] + [quant.QTensor(w.scheme, w.shape, w.data.copy(), None if w.scale is None else w.scale.copy(),
                                      w.group_size) for _ in range(ncopy - 1)]
        x = rng.standard_normal((1, i)).astype(np.float32)
        ref = quant.linear(x, w)
        got = kern.linear(x, w)
        err = float(np.abs(got - ref).max() / np.abs(ref).max())
        row = {"scheme": spec.scheme, "shape": [o, i], "weight_bytes": w.nbytes, "tvm_rel_err": err}
        row["tvm_hot_ms"] = _time(lambda k: kern.linear(x, w), iters) * 1e3
        row["tvm_cold_ms"] = _time(lambda k: kern.linear(x, copies[k % ncopy]), iters) * 1e3
        if kern_q8 is not None and q8_supported(spec.scheme, i, spec.group_size):
            yq = kern_q8.linear(x, w)
            row["tvm_q8_rel_err"] = float(np.abs(yq - ref).max() / np.abs(ref).max())
            row["tvm_q8_hot_ms"] = _time(lambda k: kern_q8.linear(x, w), iters) * 1e3
            row["tvm_q8_cold_ms"] = _time(lambda k: kern_q8.linear(x, copies[k % ncopy]), iters) * 1e3
        if with_numpy:
            row["numpy_ms"] = _time(lambda k: quant.linear(x, copies[k % ncopy]), max(3, iters // 10)) * 1e3
        if with_ort:
            sess = ort_session(w, threads)
            if sess is not None:
                yo = sess.run(None, {"x": x})[0]
                row["ort_rel_err"] = float(np.abs(yo - ref).max() / np.abs(ref).max())
                row["ort_const_ms"] = _time(lambda k: sess.run(None, {"x": x}), iters) * 1e3
        for k in ("tvm_hot", "tvm_cold", "tvm_q8_hot", "tvm_q8_cold", "numpy", "ort_const"):
            if f"{k}_ms" in row:
                row[f"{k}_GBps"] = round(w.nbytes / (row[f"{k}_ms"] * 1e-3) / 1e9, 1)
                row[f"{k}_ms"] = round(row[f"{k}_ms"], 4)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    rows.append({"tvm_compile_seconds_all": round(compile_s, 2), "kernels": len(specs)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="quantised linear kernel benchmark")
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008", help="OUTxIN,... weight shapes")
    ap.add_argument("--schemes", default="int8,int4,f16")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--no-numpy", action="store_true")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    threads = len(os.sched_getaffinity(0))
    bw = measure_bandwidth(threads=threads)
    print(json.dumps({"machine": platform.processor() or platform.machine(), **bw}))
    rows = bench(shapes, a.schemes.split(","), a.iters, not a.no_ort, not a.no_numpy, threads)
    peak = max(v for k, v in bw.items() if k.startswith("read_"))
    print(f"\nmeasured read bandwidth: {bw}  (threads={threads})")
    hdr = ("| scheme | shape | MB | TVM hot ms (GB/s) | TVM cold ms (GB/s, % of read bw) | TVM q8 hot / cold ms "
           "(cold GB/s) | numpy ref ms | ORT const ms (GB/s) |")
    print(hdr)
    print("|" + "---|" * 8)
    for r in rows:
        if "scheme" not in r:
            continue
        cold_pct = 100 * r["tvm_cold_GBps"] / peak
        print(f"| {r['scheme']} | {r['shape'][0]}x{r['shape'][1]} | {r['weight_bytes'] / 1e6:.1f} | "
              f"{r['tvm_hot_ms']:.3f} ({r['tvm_hot_GBps']}) | {r['tvm_cold_ms']:.3f} ({r['tvm_cold_GBps']}, "
              f"{cold_pct:.0f}%) | " +
              (f"{r['tvm_q8_hot_ms']:.3f} / {r['tvm_q8_cold_ms']:.3f} ({r['tvm_q8_cold_GBps']})"
               if "tvm_q8_hot_ms" in r else "-") +
              f" | {r.get('numpy_ms', float('nan')):.2f} | {r.get('ort_const_ms', float('nan')):.3f} "
              f"({r.get('ort_const_GBps', '-')}) |")
    print(rows[-1])
    if a.json:
        a.json.write_text(json.dumps({"bandwidth": bw, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
