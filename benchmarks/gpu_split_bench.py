"""CPU/GPU split execution under a GPU memory cap (docs/GPU.md): decode / prefill tok/s, bytes over the link per
token, GPU memory peak, predicted vs measured time per token, at caps of 25 / 50 / 100 % of the model, against the
CPU-only run of the same bundle (and, with --hf-peer, transformers + accelerate ``device_map`` offload of the same
random weights).

The model is SIMULATED: random weights with the real architecture of a config (default Qwen2.5-Coder-1.5B's: qwen2,
28 layers, d 1536, 12/2 heads, FFN 8960, vocab 151936), because the real GGUF (1.1 GB) cannot travel to the GPU
machine; speed depends on shapes, not on the values.

    python -m edgespool.benchmarks.gpu_split_bench --out DIR [--layers 28] [--quant int8] [--json-out r.json]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

QWEN15B = dict(arch="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
               num_heads=12, num_kv_heads=2, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6,
               max_position_embeddings=32768, attention_bias=True, tie_word_embeddings=False,
               bos_token_id=1, eos_token_ids=(2,))


def synth_config(**overrides: Any):
    """A qwen2 ModelConfig (Qwen2.5-Coder-1.5B's shapes unless overridden)."""
    from edgespool.runtime.bundle.config import ModelConfig

    d = {**QWEN15B, **overrides}
    return ModelConfig(**d)


def export_synth(out: Path, quant: str = "int8", seed: int = 0, kernels: bool = False, **overrides: Any) -> Path:
    """Export a random-weight model of ``synth_config(**overrides)`` (demo tokenizer, 512 tokens; the vocabulary
    size of the config is kept for the embedding and head) into ``out``; returns the bundle path."""
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.synth import SyntheticModel, train_demo_tokenizer

    if (out / "manifest.json").is_file():  # exported by an earlier run of the same command
        return out
    src = SyntheticModel(synth_config(**overrides), train_demo_tokenizer(), seed)
    return export_model(src, out, policy=QuantPolicy(quant=quant), onnx=False, kernels=kernels,
                        progress=False).path


def _gen(model: Any, prompt: list[int], n: int) -> dict[str, Any]:
    model.reset()  # no kept KV cache: every run processes its whole prompt
    toks = list(model.generate_ids(prompt, n, stop=[]))
    st = model.stats
    return {"tokens": toks, "prefill_tok_s": st.prefill_tok_s, "decode_tok_s": st.decode_tok_s}


def run_edgespool(bundle: Path, cap: int | None, prompt: list[int], n: int, reps: int,
                  graphs: bool = True, profile: bool = False, fused: bool = True,
                  zero_copy: bool | None = None, moe: bool = False) -> dict[str, Any]:
    """Load (cap None: CPU only), warm up, then ``reps`` generations; medians. ``graphs=False``: decode steps
    through the eager GPU path instead of the recorded CUDA graphs (the A/B of offload/gpu_graph.py);
    ``fused=False``: graphs of 12 kernels a layer instead of the fused 6 (the A/B of offload/gpu_fused.py);
    ``moe``: MoE layers on the GPU too (``load(gpu_moe=True)``), routed experts where the plan puts them."""
    from edgespool import load

    # the GPU KV cache sized to the run (as llama-bench sizes its context to -p + -n)
    m = load(bundle) if cap is None else load(bundle, gpu_memory=cap, gpu_context=len(prompt) + n + 16,
                                              gpu_zero_copy=zero_copy, gpu_moe=moe)
    try:
        src = m.source
        if getattr(src, "device_layers", None) is not None:
            src.device_layers.graphs_enabled = graphs
            src.device_layers.use_fused_kernels(fused)
        m.source.load_all() if hasattr(m.source, "load_all") and cap is None else None
        # warm-up with the measured prompt, as llama-bench warms up with its -p prompt: first reads, NVRTC compile,
        # cuBLAS handles, and the prompt chunk's CUDA graph recorded (offload/gpu_prefill_graph.py)
        _gen(m, prompt, 2)
        dev = getattr(src, "device_layers", None)
        if dev is not None:
            dev.h2d_bytes = dev.d2h_bytes = 0
        runs = [_gen(m, prompt, n) for _ in range(reps)]
        res: dict[str, Any] = {"cap_bytes": cap, "tokens": runs[0]["tokens"],
                               "prefill_tok_s": float(np.median([r["prefill_tok_s"] for r in runs])),
                               "decode_tok_s": float(np.median([r["decode_tok_s"] for r in runs])),
                               "gpu_fallback": m.gpu_fallback}
        if dev is not None:
            pl = src.placement
            steps = reps * (1 + (n - 1))  # forward passes: one prefill (chunked) + n-1 decode steps each
            res.update(placement=pl.summary(), predicted_token_ms=pl.predicted_token_s * 1e3,
                       measured_token_ms=1e3 / res["decode_tok_s"] if res["decode_tok_s"] else None,
                       graphs=dev.graphs is not None and dev.graphs_enabled,
                       graph_launches=0 if dev.graphs is None else dev.graphs.launches,
                       fused_layers=0 if dev.graphs is None else dev.graphs.fused_layers,
                       planned_h2d_bytes_per_token=pl.h2d_bytes_per_token,
                       gpu_layers=sum(g.where == "gpu" for g in pl.groups),
                       streamed_layers=sum(g.where == "stream" for g in pl.groups),
                       cpu_layers=sum(g.where == "cpu" for g in pl.groups), **dev.stats(),
                       measured_h2d_bytes_per_step=dev.h2d_bytes / steps)
        try:  # the per-place timing is a diagnostic: a failure there is reported in the row, not fatal to the run
            res["per_layer"] = per_layer_times(m, prompt)
        except Exception as e:  # noqa: BLE001
            res["per_layer"] = {"error": f"{type(e).__name__}: {e}"}
        if profile:
            res["profile"] = profile_decode(m, prompt)
        res["threads"] = {"kernels": getattr(m.kernels.backend, "threads", None),
                          "affinity": len(os.sched_getaffinity(0)), "omp": os.environ.get("OMP_NUM_THREADS")}
        return res
    finally:
        m.close()


def per_layer_times(m: Any, prompt: list[int], steps: int = 8) -> dict[str, Any]:
    """Predicted vs measured time of one decode token per place (gpu / stream / cpu), over ``steps`` decode
    steps after the prompt: GPU layers timed by synchronising around ``GpuLayers.layer`` (per token, over the
    run's layers: a CUDA-graph run spends its time in its first layer's call); CPU layers timed directly, from the
    engine's ``get(layers.i)`` to its ``release(layers.i)`` (the whole layer step as the engine runs it), median
    over layers and steps; the head and the whole step too. Works for a CPU-only model (no ``device_layers``)."""
    src, eng = m.source, m.engine
    dev = getattr(src, "device_layers", None)
    cache = eng.new_cache(len(prompt) + steps + 2)
    eng.forward(prompt, cache, last_only=True)
    spent: dict[str, list[float]] = {}
    cpu_layer: list[float] = []
    opened: dict[str, float] = {}
    get0, rel0 = src.get, src.release

    def get(g):
        opened[g] = time.perf_counter()
        return get0(g)

    def release(g):
        rel0(g)
        if g.startswith("layers.") and g in opened:
            cpu_layer.append(time.perf_counter() - opened.pop(g))

    src.get, src.release = get, release
    if dev is not None:
        import cupy as cp

        orig = dev.layer

        def timed(i, x, pos, rope, c=None):
            cp.cuda.Device().synchronize()
            t0 = time.perf_counter()
            y = orig(i, x, pos, rope, c)
            cp.cuda.Device().synchronize()
            spent.setdefault(dev.where[f"layers.{i}"], []).append(time.perf_counter() - t0)
            return y

        dev.layer = timed
    totals = []
    try:
        for _ in range(steps):
            t0 = time.perf_counter()
            eng.forward([1], cache, last_only=True)
            totals.append(time.perf_counter() - t0)
    finally:
        del src.get, src.release
        if dev is not None:
            dev.layer = orig
    out: dict[str, Any] = {"step_ms": float(np.median(totals)) * 1e3}
    if dev is None:
        out["cpu"] = {"layers": m.config.num_layers, "measured_ms": float(np.median(cpu_layer)) * 1e3}
        return out
    pl = src.placement
    for where in ("gpu", "stream", "cpu"):
        gs = [g for g in pl.groups if g.where == where and g.kind == "layer"]
        if not gs:
            continue
        pred = float(np.mean([g.predicted_s for g in gs])) * 1e3
        if where == "cpu":
            meas = float(np.median(cpu_layer)) * 1e3 if cpu_layer else float("nan")
        else:
            meas = sum(spent.get(where, [float("nan")])) / steps / len(gs) * 1e3
        out[where] = {"layers": len(gs), "predicted_ms": pred, "measured_ms": meas}
    return out


def profile_decode(m: Any, prompt: list[int], steps: int = 8, top: int = 18) -> str:
    """cProfile of ``steps`` decode steps (after the prompt): the functions with the most own time (where a CPU
    layer's time goes beyond its products)."""
    import cProfile
    import io
    import pstats

    eng = m.engine
    cache = eng.new_cache(len(prompt) + steps + 2)
    eng.forward(prompt, cache, last_only=True)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(steps):
        eng.forward([1], cache, last_only=True)
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def run_hf_peer(model_dir: Path, cap: int, prompt: list[int], n: int) -> dict[str, Any]:
    """transformers + accelerate: ``device_map="auto"`` with ``max_memory={0: cap, "cpu": ...}`` (bf16 weights, the
    offloaded layers moved to the GPU per forward by accelerate's hooks); greedy, medians of 2 runs."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="auto",
                                             max_memory={0: cap, "cpu": 100 << 30})
    ids = torch.tensor([prompt], device=m.get_input_embeddings().weight.device)  # where device_map put the embedding
    res = []
    for _ in range(2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        m(ids)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        out = m.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        res.append((len(prompt) / (t1 - t0), n / max(1e-9, (t2 - t1) - (t1 - t0))))
    peak = torch.cuda.max_memory_allocated()
    del m
    torch.cuda.empty_cache()
    return {"cap_bytes": cap, "prefill_tok_s": float(np.median([r[0] for r in res])),
            "decode_tok_s": float(np.median([r[1] for r in res])), "gpu_peak_bytes": int(peak),
            "tokens": out[0, len(prompt):].tolist()}


def export_from(src_path: Path, out: Path, quant: str = "int8", kernels: bool = True) -> Path:
    """Export a GGUF / HF checkpoint with edgespool (``quant``; C block kernels for this CPU when ``kernels``)."""
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model, open_source

    if (out / "manifest.json").is_file():
        return out
    return export_model(open_source(src_path), out, policy=QuantPolicy(quant=quant), onnx=False, kernels=kernels,
                        progress=False).path


def gguf_gpu_bytes(gguf_path: Path) -> tuple[int, dict[int, int], int, int, dict[int, int]]:
    """(n_layer, bytes of each block's tensors, output (+ norm) bytes, file size, bytes of each block's
    routed-expert tensors ``ffn_*_exps``) of a GGUF: what llama.cpp puts on the GPU for ``-ngl N`` (the last N
    blocks; the output layer too once N > n_layer), and what ``--n-cpu-moe N`` keeps of the first N on the CPU."""
    from gguf import GGUFReader

    r = GGUFReader(str(gguf_path))
    blocks: dict[int, int] = {}
    exps: dict[int, int] = {}
    out = 0
    for t in r.tensors:
        if t.name.startswith("blk."):
            i = int(t.name.split(".")[1])
            blocks[i] = blocks.get(i, 0) + int(t.n_bytes)
            if "_exps." in t.name:
                exps[i] = exps.get(i, 0) + int(t.n_bytes)
        elif t.name.startswith("output"):
            out += int(t.n_bytes)
    return len(blocks), blocks, out, gguf_path.stat().st_size, exps


def outside_weights_bytes(cfg: Any, context: int) -> int:
    """What edgespool's GPU arena holds beside weights for a ``context``-position run: the activation workspace
    (:func:`~edgespool.offload.gpu_split.gpu_workspace_bytes` for a prefill chunk) and an f32 KV cache of every
    layer; llama.cpp's -ngl caps in :func:`llamacpp_sweep` count neither."""
    from edgespool.offload.gpu_split import GPU_PREFILL_CHUNK, gpu_workspace_bytes

    kv = cfg.num_layers * 2 * cfg.num_kv_heads * context * cfg.head_dim * 4
    return gpu_workspace_bytes(cfg, GPU_PREFILL_CHUNK, context) + kv


def _llama_bench(cmd: list[str]) -> list[dict[str, Any]]:
    import subprocess

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    if r.returncode != 0:
        raise RuntimeError(f"llama-bench failed: {r.stderr[-1500:]}")
    return json.loads(r.stdout)


def llamacpp_sweep(bench_bin: Path, gguf_path: Path, caps: list[float], p: int, n: int, reps: int,
                   threads: int, moe: bool = False) -> list[dict[str, Any]]:
    """llama-bench over an -ngl sweep (f16 KV, its defaults otherwise); for each cap (a fraction of the GGUF's
    size) its best configuration whose GPU weights (the offloaded blocks + output) fit the cap. ``moe``: also
    every block on the GPU with the routed experts of the first N blocks on the CPU (``-ngl 99 --n-cpu-moe N``,
    N = n_layer being ``-ot exps=CPU``), llama.cpp's MoE configurations."""
    nl, blocks, out_b, size, file_exps = gguf_gpu_bytes(gguf_path)
    ngls = sorted({0, *(max(0, min(nl + 1, k)) for k in range(0, nl + 2, max(1, nl // 8))), nl, nl + 1})
    base = [str(bench_bin), "-m", str(gguf_path), "-p", str(p), "-n", str(n), "-r", str(reps), "-t", str(threads),
            "-o", "json"]
    cmd = base + ["-ngl", ",".join(map(str, ngls))]
    by: dict[tuple[int, int], dict[str, float]] = {}
    runs = [(cmd, _llama_bench(cmd))]
    exps = file_exps if moe else {}
    if exps:
        ncs = sorted({*range(0, nl + 1, max(1, nl // 6)), nl})
        cmd2 = base + ["-ngl", "99", "-ncmoe", ",".join(map(str, ncs))]
        runs.append((cmd2, _llama_bench(cmd2)))
    for _, rows in runs:
        for row in rows:
            k = (min(int(row["n_gpu_layers"]), nl + 1), int(row.get("n_cpu_moe", 0) or 0))
            kind = "prefill" if row.get("n_prompt", 0) else "decode"
            by.setdefault(k, {})[kind] = float(row["avg_ts"])

    def gpu_bytes(k: int, ncmoe: int) -> int:
        return (sum(blocks[i] - (exps.get(i, 0) if i < ncmoe else 0) for i in range(max(0, nl - k), nl))
                + (out_b if k > nl else 0))

    sweep = [{"ngl": k, "n_cpu_moe": c, "gpu_weight_bytes": gpu_bytes(k, c), **v} for (k, c), v in sorted(by.items())]
    best = []
    for f in caps:
        fit = [s for s in sweep if s["gpu_weight_bytes"] <= f * size and "decode" in s]
        b = max(fit, key=lambda s: s["decode"]) if fit else None
        best.append({"config": f"llama.cpp cap {f:.0%}", "cap_bytes": int(f * size), "best": b})
    return [{"sweep": sweep, "file_bytes": size, "command": " ; ".join(" ".join(c) for c, _ in runs)}, *best]


def hf_peer_main(a: Any) -> int:
    """The peer: a random-initialised transformers Qwen2 of the same config (f32), saved once, then loaded with
    ``device_map="auto"`` in bf16 under each cap, a fraction of ITS OWN bf16 size (not of the int8 bundle's: the
    peer is not starved)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    d = a.out / "hf"
    c = QWEN15B
    if not (d / "config.json").is_file():
        cfg = Qwen2Config(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                          intermediate_size=c["intermediate_size"], num_hidden_layers=a.layers,
                          num_attention_heads=c["num_heads"], num_key_value_heads=c["num_kv_heads"],
                          rms_norm_eps=c["rms_norm_eps"], rope_theta=c["rope_theta"], tie_word_embeddings=False,
                          max_position_embeddings=c["max_position_embeddings"])
        torch.manual_seed(0)
        Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d)
    if a.hf_save_only:
        return 0
    size = sum(p.stat().st_size for p in d.glob("*.safetensors"))
    prompt = [int(t) for t in np.random.default_rng(1).integers(3, 500, a.prompt_tokens)]
    for f in (float(x) for x in a.caps.split(",")):
        r = {"config": f"hf+accelerate cap {f:.0%}", **run_hf_peer(d, int(size * f), prompt, a.n)}
        r.pop("tokens")
        print(json.dumps(r), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the bundle")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--quant", default="int8")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--caps", default="0.25,0.5,1.0", help="GPU caps as fractions of the bundle's weights")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--kernels", action="store_true", help="compile the C block kernels at export (CPU side)")
    ap.add_argument("--hf-peer", action="store_true", help="only the transformers + accelerate peer (random "
                    "weights of the same config, bf16), at the same caps")
    ap.add_argument("--gguf", type=Path, default=None, help="export the edgespool bundle from this GGUF (int8)")
    ap.add_argument("--llama-bench", type=Path, default=None, help="also run llama.cpp's llama-bench on --gguf")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--graph-ab", action="store_true", help="also run each cap with CUDA graphs off (eager)")
    ap.add_argument("--fused-ab", action="store_true", help="also run each cap with the unfused 12-kernel graphs")
    ap.add_argument("--llama-accounting", action="store_true", help="also run each cap counting the GPU weights "
                    "only, as the llama.cpp rows do (-ngl fits blocks + output in the cap; its KV cache and compute "
                    "buffers are outside it): the budget is the cap + this run's workspace + a full KV cache")
    ap.add_argument("--zero-copy", action="store_true", help="also run each cap with the GPU-resident weights "
                    "mapped from host memory (the unified-memory path; on a discrete GPU read over the bus)")
    ap.add_argument("--profile", action="store_true", help="cProfile 8 decode steps of every edgespool row")
    ap.add_argument("--moe", action="store_true", help="an MoE model: edgespool with MoE layers on the GPU "
                    "(load(gpu_moe=True)); llama.cpp also with -ngl 99 --n-cpu-moe N (N = all: -ot exps=CPU)")
    ap.add_argument("--hf-save-only", action="store_true", help="only write the random HF checkpoint (--out/hf)")
    a = ap.parse_args(argv)
    if a.hf_peer or a.hf_save_only:
        return hf_peer_main(a)
    t0 = time.time()
    if a.gguf is not None:
        b = export_from(a.gguf, a.out / "bundle", a.quant, kernels=a.kernels)
    else:
        b = export_synth(a.out / "bundle", a.quant, kernels=a.kernels, num_layers=a.layers)
    from edgespool.runtime.bundle.reader import Bundle

    size = Bundle(b).weights_nbytes
    cfg = Bundle(b).config
    print(json.dumps({"exported": str(b), "weights_bytes": size, "export_s": round(time.time() - t0, 1)}), flush=True)
    prompt = [int(t) for t in np.random.default_rng(1).integers(3, 500, a.prompt_tokens)]
    caps = [float(x) for x in a.caps.split(",")]
    peer = None
    if a.llama_bench is not None:
        peer = llamacpp_sweep(a.llama_bench, a.gguf, caps, a.prompt_tokens, a.n, a.reps, a.threads, a.moe)
        print(json.dumps(peer), flush=True)
    rows = [{"config": "cpu-only", **run_edgespool(b, None, prompt, a.n, a.reps, profile=a.profile)}]
    print(json.dumps({k: v for k, v in rows[0].items() if k not in ("tokens", "profile")}), flush=True)
    print(rows[0].get("profile", ""), flush=True)
    from edgespool.errors import BudgetError

    def refused(config: str, e: BudgetError) -> None:
        """A cap below the GPU minimum: a row that says so (the bench goes on)."""
        rows.append({"config": config, "error": str(e)})
        print(json.dumps(rows[-1]), flush=True)

    for f in caps:
        try:
            r = {"config": f"gpu cap {f:.0%}", **run_edgespool(b, int(size * f), prompt, a.n, a.reps,
                                                                profile=a.profile, moe=a.moe)}
        except BudgetError as e:
            refused(f"gpu cap {f:.0%}", e)
            continue
        r["tokens_match_cpu"] = r["tokens"] == rows[0]["tokens"]
        rows.append(r)
        print(json.dumps({k: v for k, v in r.items() if k not in ("tokens", "placement", "profile")}), flush=True)
        print(r.get("placement", ""), flush=True)
        print(r.get("profile", ""), flush=True)
        def variant(label: str, cap_bytes: int, show_placement: bool = False, note: dict | None = None,
                    **kw: Any) -> None:
            """One more row of this cap: ``run_edgespool(..., **kw)`` under ``cap_bytes``, checked against CPU-only."""
            try:
                e = {"config": f"gpu cap {f:.0%} {label}", **(note or {}),
                     **run_edgespool(b, cap_bytes, prompt, a.n, a.reps, moe=a.moe, **kw)}
            except BudgetError as err:
                refused(f"gpu cap {f:.0%} {label}", err)
                return
            e["tokens_match_cpu"] = e["tokens"] == rows[0]["tokens"]
            rows.append(e)
            print(json.dumps({k: v for k, v in e.items() if k not in ("tokens", "placement")}), flush=True)
            if show_placement:
                print(e.get("placement", ""), flush=True)

        if a.graph_ab:
            variant("eager", int(size * f), graphs=False)
        if a.llama_accounting:
            extra = outside_weights_bytes(cfg, a.prompt_tokens + a.n + 16)
            variant("weights-only", int(size * f) + extra, True, {"outside_cap_bytes": extra})
        if a.zero_copy:
            variant("zero-copy", int(size * f), zero_copy=True)
        if a.fused_ab:
            variant("unfused", int(size * f), fused=False)
    if peer is not None:  # llama.cpp once more after edgespool (interleaved: before and after), medians of both
        again = llamacpp_sweep(a.llama_bench, a.gguf, caps, a.prompt_tokens, a.n, a.reps, a.threads, a.moe)
        print(json.dumps(again), flush=True)
        rows.append({"config": "llama.cpp", "before": peer, "after": again})
    if a.json_out:
        a.json_out.write_text(json.dumps(rows, indent=1))
    print(f"{'config':14s} {'prefill':>9s} {'decode':>9s} {'pred ms':>8s} {'meas ms':>8s} {'h2d/step':>10s} "
          f"{'pool peak':>10s} match")
    for r in rows:
        if "prefill_tok_s" not in r:  # the llama.cpp row: printed as JSON above
            continue
        print(f"{r['config']:14s} {r['prefill_tok_s']:9.1f} {r['decode_tok_s']:9.1f} "
              f"{r.get('predicted_token_ms', 0):8.2f} {r.get('measured_token_ms', 0) or 0:8.2f} "
              f"{r.get('measured_h2d_bytes_per_step', 0):10.0f} {r.get('gpu_pool_peak_bytes', 0):10d} "
              f"{r.get('tokens_match_cpu', '')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
