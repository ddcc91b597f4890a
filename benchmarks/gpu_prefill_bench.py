"""GPU prefill at full offload (issue 17): prompt tok/s with every layer and the head on the GPU, three paths
interleaved, medians, at several prompt lengths: prompt chunks replayed from recorded CUDA graphs
(offload/gpu_prefill_graph.py; the default), the same tensor-core products issued eagerly from Python
(``EDGESPOOL_GPU_PREFILL_GRAPHS=0``), and dequantise + f32 SGEMM (``EDGESPOOL_GPU_F16_GEMM=0`` too: the path before
2026-12-07); each path's last-token logits against the SGEMM one's; with ``--products`` each 1.5B product's GPU time
(CUDA events) and Python issue time per call; a cProfile of one prefill through the graph and the eager path
(where a prefill's wall time goes: kernel launches from Python or waiting on the GPU).

The model is SIMULATED unless ``--bundle`` is given: random int8 weights with Qwen2.5-Coder-1.5B's shapes
(``gpu_split_bench.export_synth``); speed depends on shapes, not values.

    python -m edgespool.benchmarks.gpu_prefill_bench --out DIR [--bundle B | --gguf G] [--tokens 64,256,512]
        [--reps 5] [--products] [--json-out F]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path
from typing import Any

import numpy as np


PATHS = {  # label: (tensor-core products, recorded prefill graphs)
    "graphs": (True, True),  # the default: split-f16 tensor cores, prompt chunks replayed from CUDA graphs
    "eager": (True, False),  # the same products issued from Python one by one (before 2026-12-07, later)
    "f32_sgemm": (False, False),  # dequantise + f32 SGEMM, eager (before 2026-12-07)
}


def _set_path(dev: Any, label: str) -> None:
    dev.ops.f16_gemm, dev.prefill_graphs_enabled = PATHS[label]


def prefill_rows(m: Any, tokens: list[int], reps: int) -> list[dict[str, Any]]:
    """Per prompt length: every path of PATHS in turn ``reps`` times (after one warm-up pass each, which also
    records the graphs), medians, each path's last-token logits against the f32 SGEMM path's."""
    eng, dev = m.engine, m.source.device_layers
    rng = np.random.default_rng(1)
    rows = []
    for T in tokens:
        ids = [int(t) for t in rng.integers(3, 500, T)]
        times: dict[str, list[float]] = {k: [] for k in PATHS}
        logits: dict[str, np.ndarray] = {}
        for rep in range(reps + 1):
            for label in PATHS:
                _set_path(dev, label)
                cache = eng.new_cache(T + 2)
                t0 = time.perf_counter()
                lg = np.asarray(eng.prefill(np.asarray(ids), cache))  # chunked as a prompt; logits on the host
                dt = time.perf_counter() - t0
                if rep:
                    times[label].append(dt)
                logits[label] = lg
        _set_path(dev, "graphs")
        med = {k: float(np.median(v)) for k, v in times.items()}
        row: dict[str, Any] = {"tokens": T, **{f"{k}_tok_s": T / v for k, v in med.items()},
                               "graphs_vs_eager": med["eager"] / med["graphs"],
                               "eager_vs_f32_sgemm": med["f32_sgemm"] / med["eager"], "runs_s": times,
                               "logits_max_abs": float(np.abs(logits["f32_sgemm"]).max())}
        for k in ("graphs", "eager"):
            row[f"{k}_logits_max_abs_diff"] = float(np.abs(logits[k] - logits["f32_sgemm"]).max())
        pg = dev.prefill_graphs
        row["prefill_graph_launches"] = 0 if pg is None else pg.launches
        row["prefill_graph_note"] = "" if pg is None else pg.fail_reason
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "runs_s"}), flush=True)
    return rows


def product_rows(ops: Any, shapes: dict[str, tuple[int, int]], tokens: list[int], calls: int = 20) -> list[dict]:
    """GPU ms (CUDA events over ``calls`` back-to-back calls) and Python issue ms per call of each product, both
    paths, random int8 weights of each shape."""
    import cupy as cp

    from edgespool.kernels.quant import quantize

    rng = np.random.default_rng(0)
    rows = []
    for name, (N, K) in shapes.items():
        gw = ops.upload(quantize(rng.standard_normal((N, K)).astype(np.float32), "int8", 32))
        for T in tokens:
            x = cp.asarray(rng.standard_normal((T, K)).astype(np.float32))
            row: dict[str, Any] = {"product": name, "N": N, "K": K, "tokens": T}
            for on, label in ((True, "split_f16"), (False, "f32_sgemm")):
                ops.f16_gemm = on
                ops.linear(x, gw)
                cp.cuda.get_current_stream().synchronize()
                e0, e1 = cp.cuda.Event(), cp.cuda.Event()
                e0.record()
                t0 = time.perf_counter()
                for _ in range(calls):
                    ops.linear(x, gw)
                issue = (time.perf_counter() - t0) / calls
                e1.record()
                e1.synchronize()
                gpu = cp.cuda.get_elapsed_time(e0, e1) / calls
                row[label] = {"gpu_ms": gpu, "issue_ms": issue * 1e3,
                              "tflops": 2.0 * T * N * K / (gpu * 1e-3) / 1e12}
            ops.f16_gemm = True
            rows.append(row)
            print(json.dumps(row), flush=True)
        del gw
    return rows


def profile_prefill(m: Any, T: int, label: str, top: int = 16) -> str:
    """cProfile of one ``T``-token prefill through path ``label`` of PATHS (own time, the top functions)."""
    eng, dev = m.engine, m.source.device_layers
    _set_path(dev, label)
    ids = [int(t) for t in np.random.default_rng(2).integers(3, 500, T)]
    eng.prefill(np.asarray(ids), eng.new_cache(T + 2))
    pr = cProfile.Profile()
    pr.enable()
    eng.prefill(np.asarray(ids), eng.new_cache(T + 2))
    pr.disable()
    _set_path(dev, "graphs")
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the SIMULATED bundle")
    ap.add_argument("--bundle", type=Path, default=None, help="an exported bundle instead of the simulated one")
    ap.add_argument("--gguf", type=Path, default=None, help="export --out/bundle from this GGUF (int8, C kernels; "
                    "what gpu_split_bench --gguf exports, and reuses)")
    ap.add_argument("--tokens", default="64,256,512")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--products", action="store_true", help="also time each 1.5B product alone (CUDA events)")
    a = ap.parse_args(argv)
    from edgespool import load
    from edgespool.benchmarks.gpu_split_bench import export_from, export_synth
    from edgespool.runtime.bundle.reader import Bundle

    b = a.bundle or (export_from(a.gguf, a.out / "bundle") if a.gguf else export_synth(a.out / "bundle", "int8"))
    tokens = [int(t) for t in a.tokens.split(",")]
    size = Bundle(b).weights_nbytes
    m = load(b, gpu_memory=int(size * 1.5), gpu_context=max(tokens) + 16)
    try:
        dev = getattr(m.source, "device_layers", None)
        if dev is None or m.gpu_fallback:
            raise SystemExit(f"gpu_prefill_bench: no GPU execution ({m.gpu_fallback})")
        pl = m.source.placement
        where = sorted({g.where for g in pl.groups})
        print(json.dumps({"bundle": str(b), "weights_bytes": size, "placed": where}), flush=True)
        out: dict[str, Any] = {"bundle": str(b), "placed": where, "prefill": prefill_rows(m, tokens, a.reps)}
        c = m.config
        q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        shapes = {"wq/wo": (q, c.hidden_size), "wk/wv": (kv, c.hidden_size),
                  "gate/up": (c.intermediate_size, c.hidden_size), "down": (c.hidden_size, c.intermediate_size)}
        if a.products:
            out["products"] = product_rows(dev.ops, shapes, tokens)
        out["profile"] = {label: profile_prefill(m, tokens[0], label) for label in ("graphs", "eager")}
        for label, text in out["profile"].items():
            print(f"--- cProfile, one {tokens[0]}-token prefill, {label}\n{text}", flush=True)
    finally:
        m.close()
    if a.json_out is not None:
        a.json_out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
