"""One-token decode on the GPU, kernel by kernel: the fused kernels of offload/gpu_fused.py against the 12-kernel
layer of offload/gpu_graph.py, on random int8 weights of a real model's shapes (Qwen2.5-Coder-1.5B by default).

Each configuration is a recorded CUDA graph (a whole run of ``--layers`` layers, or one kernel repeated 100 times)
timed with CUDA events; rounds alternate fused and unfused (interleaved), medians over rounds. It also reports
the largest difference between the two runs' outputs (same inputs), which only float summation order should cause.

    python -m edgespool.benchmarks.gpu_kernel_bench --json-out k.json          # needs CuPy and a CUDA GPU
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np


def _graph_ms(cp: Any, stream: Any, fn: Any, reps: int) -> float:
    """Milliseconds of one call of ``fn`` (which launches on ``stream``), from a graph of ``reps`` calls."""
    with stream:
        stream.begin_capture()
        try:
            for _ in range(reps):
                fn()
        finally:
            g = stream.end_capture()
        g.launch(stream=stream)
        stream.synchronize()
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record(stream)
        g.launch(stream=stream)
        b.record(stream)
        b.synchronize()
    return cp.cuda.get_elapsed_time(a, b) / reps


def build(cp: Any, cfg: Any, layers: int, C: int, seed: int = 0) -> tuple[dict, dict]:
    """Random int8 weights (per-row scales), norms, q/k/v biases and filled KV caches for ``layers`` layers."""
    from edgespool.offload.gpu_ops import GpuTensor
    from edgespool.runtime.bundle.names import layer_prefix

    cp.random.seed(seed)
    H, I, D, nh, nkv = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    f32 = cp.float32

    def mat(n: int, k: int) -> GpuTensor:
        data = cp.random.randint(-127, 128, (n, k), dtype=cp.int32).astype(cp.int8)
        return GpuTensor("int8", (n, k), data, (cp.random.uniform(0.5, 1.5, n) / (40.0 * k ** 0.5)).astype(f32))

    def vec(n: int, lo: float = 0.8, hi: float = 1.2) -> GpuTensor:
        return GpuTensor("f32", (n,), cp.random.uniform(lo, hi, n).astype(f32))

    weights, kv = {}, {}
    for i in range(layers):
        p = layer_prefix(i)
        weights[f"layers.{i}"] = {p + "attn_norm": vec(H), p + "ffn_norm": vec(H), p + "wq": mat(nh * D, H),
                                  p + "wk": mat(nkv * D, H), p + "wv": mat(nkv * D, H), p + "wo": mat(H, nh * D),
                                  p + "ffn.gate": mat(I, H), p + "ffn.up": mat(I, H), p + "ffn.down": mat(H, I),
                                  p + "bq": vec(nh * D, -0.1, 0.1), p + "bk": vec(nkv * D, -0.1, 0.1),
                                  p + "bv": vec(nkv * D, -0.1, 0.1)}
        kv[i] = (cp.random.standard_normal((nkv, C, D)).astype(f32), cp.random.standard_normal((nkv, C, D)).astype(f32))
    return weights, kv


def main(argv: list[str] | None = None) -> int:
    from edgespool.benchmarks.gpu_split_bench import synth_config
    from edgespool.offload.gpu_fused import FusedDecodeKernels
    from edgespool.offload.gpu_graph import DecodeGraphs
    from edgespool.offload.gpu_ops import GpuOps, gpu_status
    from edgespool.runtime.bundle.names import layer_prefix

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--context", type=int, default=2048, help="KV cache capacity (max positions)")
    ap.add_argument("--positions", default="80,1000", help="token positions to time at (comma list)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json-out", type=Path, default=None)
    a = ap.parse_args(argv)
    cp, why = gpu_status()
    if cp is None:
        raise SystemExit(f"gpu_kernel_bench: {why}")
    cfg = synth_config(num_layers=a.layers)
    ops, fz = GpuOps(cp), FusedDecodeKernels(cp)
    stream = cp.cuda.Stream(non_blocking=True)
    weights, kv = build(cp, cfg, a.layers, a.context)
    H, D = cfg.hidden_size, cfg.head_dim
    x0 = np.random.default_rng(1).standard_normal((1, H)).astype(np.float32)
    ang = np.random.default_rng(2).uniform(0, 6.28, D // 2).astype(np.float32)
    rope = (np.cos(np.concatenate([ang, ang]))[None], np.sin(np.concatenate([ang, ang]))[None])
    graphs = {f: DecodeGraphs(cp, ops, cfg, stream, a.context, [True] * a.layers, fused=f) for f in (True, False)}
    out: dict[str, Any] = {"model": "Qwen2.5-Coder-1.5B shapes, random int8 weights", "layers": a.layers,
                           "device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "positions": {}}
    for pos in (int(p) for p in a.positions.split(",")):
        res: dict[str, list[float]] = {"fused": [], "unfused": []}
        outs = {}
        for r in range(a.rounds):
            for f in (True, False):
                g = graphs[f]
                y, _ = g.launch(0, x0, pos, rope, weights, kv)  # records the graph the first time
                stream.synchronize()  # asnumpy reads on the null stream, which does not wait for this one
                outs[f] = cp.asnumpy(y).copy()
                stream.synchronize()
                a_, b_ = cp.cuda.Event(), cp.cuda.Event()
                a_.record(stream)
                for _ in range(20):  # the hidden state stays on the device (no copy); the position is 4 bytes
                    g.launch(0, g.x, pos, None, weights, kv)
                b_.record(stream)
                b_.synchronize()
                res["fused" if f else "unfused"].append(cp.cuda.get_elapsed_time(a_, b_) / 20)
        diff = float(np.abs(outs[True] - outs[False]).max() / max(1e-30, np.abs(outs[False]).max()))
        row: dict[str, Any] = {k: statistics.median(v) for k, v in res.items()}
        row["per_layer_ms"] = {k: v / a.layers for k, v in row.items()}
        row["max_rel_diff"] = diff
        row["speedup"] = row["unfused"] / row["fused"]
        # kernel by kernel (layer 0's weights), graphs of 100 launches each
        p, w = layer_prefix(0), weights["layers.0"]
        Kc, Vc = kv[0]
        g = graphs[True]
        g.pos.set(np.array([pos], np.int32))
        sc = D ** -0.5
        kern = {
            "rmsnorm": lambda: ops.rmsnorm_into(g.x, w[p + "attn_norm"].data, g.h, cfg.rms_norm_eps),
            "gemv q+k+v (3 launches)": lambda: [ops.gemv_into(g.h, w[p + n], w[p + b].data, y, False)
                                                for n, b, y in (("wq", "bq", g.q), ("wk", "bk", g.k),
                                                                ("wv", "bv", g.v))],
            "fused norm+q+k+v": lambda: fz.norm_qkv(g.x, w[p + "attn_norm"].data, cfg.rms_norm_eps,
                                                    [(w[p + "wq"], w[p + "bq"].data, g.q),
                                                     (w[p + "wk"], w[p + "bk"].data, g.k),
                                                     (w[p + "wv"], w[p + "bv"].data, g.v)]),
            "attention (old, 4 warps)": lambda: g.k_attn(
                (cfg.num_heads,), (128,), (g.q, Kc, Vc, g.o, g.pos, np.int32(cfg.num_heads),
                                           np.int32(cfg.num_kv_heads), np.int32(a.context), np.int32(D),
                                           np.int32(0), np.float32(sc), np.float32(0)), shared_mem=g.shared),
            "attention (fused, 8 warps)": lambda: fz.attention(g.q, Kc, Vc, g.o, g.pos, cfg.num_heads,
                                                               cfg.num_kv_heads, a.context, D, 0, sc, 0.0),
            "gemv o + residual": lambda: ops.gemv_into(g.o, w[p + "wo"], None, g.x, True),
            "gemv gate+up (2) + act": lambda: (ops.gemv_into(g.h, w[p + "ffn.gate"], None, g.g, False),
                                               ops.gemv_into(g.h, w[p + "ffn.up"], None, g.u, False),
                                               ops.act_mul_into(g.g, g.u, g.a, "silu")),
            "fused norm+gate+up+act": lambda: fz.norm_gateup(g.x, w[p + "ffn_norm"].data, cfg.rms_norm_eps,
                                                             w[p + "ffn.gate"], w[p + "ffn.up"], g.a, "silu"),
            "gemv down + residual": lambda: ops.gemv_into(g.a, w[p + "ffn.down"], None, g.x, True),
        }
        row["kernel_us"] = {}
        for name, fn in kern.items():
            ts = []
            for _ in range(3):
                g.x.set(x0)
                ts.append(_graph_ms(cp, stream, fn, 100) * 1e3)
            row["kernel_us"][name] = statistics.median(ts)
        wbytes = sum(int(t.data.nbytes) for n, t in w.items() if t.scheme == "int8")
        row["layer_weight_bytes"] = wbytes
        row["hbm_bound_us_at_4TBps"] = wbytes / 4e12 * 1e6
        out["positions"][str(pos)] = row
        print(json.dumps({"position": pos, **row}), flush=True)
    if a.json_out:
        a.json_out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
