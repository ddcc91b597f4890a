"""Dovetail mode's parts for spec_bench (issue 16): the draft on the GPU, verification on the CPU, measured with
SIMULATED models (random int8 weights with the real Qwen2.5-Coder-0.5B / 1.5B configs); ``python
benchmarks/spec_bench.py dovetail ...`` runs :func:`dovetail`."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

QWEN05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
               num_kv_heads=2, head_dim=64, tie_word_embeddings=True)


def _median_s(fn, reps: int) -> float:
    import statistics

    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def dovetail(argv: list[str]) -> None:
    """Dovetail mode's parts, measured on a machine with a GPU (SIMULATED models: random int8 weights with the real
    Qwen2.5-Coder-0.5B / 1.5B configs and vocabulary, since the real GGUFs cannot travel to the GPU machine; speed
    depends on shapes, not values): the draft's per-token time on the GPU (split executor, all of it placed by
    the planner under --gpu-budget) and on the CPU, the target's CPU verification pass for T = 1..k+1 tokens at a
    context of --context positions, and one end-to-end Dovetail generation (its acceptance is a random pair's:
    near zero, not a figure to quote). tok/s at a given acceptance is then COMPOSED from these measured parts by
    :func:`compose` (``E(k) / (k * draft_s + verify_s(k + 1))``)."""
    ap = argparse.ArgumentParser(prog="spec_bench.py dovetail")
    ap.add_argument("--work", required=True)
    ap.add_argument("--json-out", required=True)
    ap.add_argument("--gpu-budget", default="4GiB")
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--kmax", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--kernels", action="store_true", help="export with the C block kernels (CPU side)")
    ap.add_argument("--tiny", action="store_true", help="smoke test: tiny configs instead of the Qwen ones")
    a = ap.parse_args(argv)
    tiny = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                head_dim=32) if a.tiny else {}
    from edgespool.benchmarks.gpu_split_bench import export_synth
    from edgespool.runtime.api import load

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"simulated": "random int8 weights, real Qwen2.5-Coder configs", "context": a.context,
                 "threads": len(os.sched_getaffinity(0)), "gpu_budget": a.gpu_budget}

    def save() -> None:
        Path(a.json_out).write_text(json.dumps(res, indent=1, default=str))

    t0 = time.perf_counter()
    tb = export_synth(work / "t15", "int8", seed=0, kernels=a.kernels, **tiny)
    db = export_synth(work / "d05", "int8", seed=1, kernels=a.kernels, **(tiny or QWEN05B))
    res["export_s"] = time.perf_counter() - t0
    save()
    ctx = [int(x) for x in np.random.default_rng(0).integers(3, 500, a.context)]

    def per_token(m) -> float:  # one decode token of the draft after a context of a.context positions
        eng = m.engine
        cache = eng.new_cache(a.context + a.reps * 8 + 8)
        eng.forward(ctx, cache, last_only=True)
        eng.forward([7], cache, last_only=True)  # warm-up (NVRTC, cuBLAS handles)
        return _median_s(lambda: eng.forward([7], cache, last_only=True), a.reps * 4)

    with load(db, gpu_memory=a.gpu_budget, gpu_context=a.context + 64) as g:
        res["draft_gpu_fallback"] = g.gpu_fallback
        if g.gpu_fallback is None:
            res["draft_placement"] = g.source.placement.summary()
        res["draft_gpu_token_s" if g.gpu_fallback is None else "draft_planner_cpu_token_s"] = per_token(g)
        save()
    try:  # every draft group on the GPU whatever the planner chose (the executor's speed, not the planner's)
        from edgespool.offload.gpu_split import split_with_placement
        from edgespool.runtime.api import Model
        from edgespool.runtime.decoder.weights import ResidentWeights
        from edgespool.schedulers.placement_plan import (
            GroupPlacement,
            LinkModel,
            Placement,
        )
        from edgespool.units import parse_bytes

        with load(db) as c:
            n = c.bundle.config.num_layers
            groups = tuple(GroupPlacement(g, "head" if g == "head" else "layer", "gpu", 0, 0, 0.0, 0.0, 0.0,
                                          "forced") for g in [f"layers.{i}" for i in range(n)] + ["head"])
            B = parse_bytes(a.gpu_budget, "--gpu-budget")
            pl = Placement(B, B, 0, 0, 0, groups, 0, 0, 0.0, 0.0, LinkModel(50e9, 5e-6))
            split = split_with_placement(c.bundle, ResidentWeights(c.bundle), pl, a.context + 64)
            fm = Model(c.bundle, split, c.tokenizer, c.kernels)
            res["draft_gpu_all_token_s"] = per_token(fm)
            fm.close()
    except Exception as e:  # noqa: BLE001 - recorded, the other parts still run
        res["draft_gpu_all_error"] = f"{type(e).__name__}: {e}"
    save()
    with load(db) as c:
        c.source.load_all()
        res["draft_cpu_token_s"] = per_token(c)
        res["draft_kernels"] = c.kernels.description
        save()
    with load(tb) as m:
        m.source.load_all()
        eng = m.engine
        cache = eng.new_cache(a.context + a.kmax + 8)
        eng.forward(ctx, cache, last_only=True)
        base = cache.length
        verify = {}
        for T in range(1, a.kmax + 2):
            def step() -> None:
                eng.forward([7] * T, cache)
                cache.truncate(base)
            step()
            verify[T] = _median_s(step, a.reps)
        res["verify_cpu_s"] = verify
        res["target_kernels"] = m.kernels.description
        save()
    ids = ctx[:64]
    for name, kw in (("dovetail", {"draft_gpu_memory": a.gpu_budget}), ("cpu-draft", {})):
        with load(tb, draft=db, draft_tokens=4, **kw) as m:
            m.source.load_all()
            m.draft.preload()
            list(m.generate_ids(ids, 4, stop=[]))
            m.reset()
            list(m.generate_ids(ids, 32, stop=[]))
            res[f"e2e_{name}"] = {"decode_tok_s": m.stats.decode_tok_s, "speculative": m.stats.speculative,
                                  "draft_gpu_fallback": m.draft.gpu_fallback}
        save()
    res["compose"] = compose(res, [0.5, 0.6, 0.7, 0.8, 0.9])
    save()
    print(json.dumps(res, indent=1, default=str))


def compose(res: dict, acceptances: list[float], kmax: int = 8) -> dict:
    """tok/s COMPOSED from measured parts (not a measured run): for each acceptance ``a`` and draft place, the best
    k of ``E(k) / (k * draft_s + verify_s(k + 1))``, ``E(k) = (1 - a^(k+1)) / (1 - a)`` (i.i.d. acceptance), against
    plain CPU decoding ``1 / verify_s(1)``."""
    v = {int(k): float(x) for k, x in res["verify_cpu_s"].items()}
    out: dict = {"plain_cpu_tok_s": 1 / v[1]}
    for place in ("gpu", "gpu_all", "cpu"):
        d = res.get(f"draft_{place}_token_s")
        if d is None:
            continue
        for acc in acceptances:
            best = max(((1 - acc ** (k + 1)) / (1 - acc) / (k * d + v[k + 1]), k) for k in range(1, kmax + 1)
                       if k + 1 in v)
            out[f"{place}@{acc}"] = {"tok_s": best[0], "k": best[1], "x_plain": best[0] * v[1]}
    return out
