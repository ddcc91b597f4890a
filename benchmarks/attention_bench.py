"""TVM-compiled attention vs the numpy reference: per call (decode at several context lengths, prefill) and in the
engine (resident decode tok/s of a bundle at several context lengths).

    python -m edgespool.benchmarks.attention_bench --json out.json
    python -m edgespool.benchmarks.attention_bench --bundle /tmp/rvl/bundle_int8 --contexts 128,512,2048

Kernel part: ``KernelTable.attention`` (the engine's entry point, Python dispatch included) of the numpy-only
table vs a table with the TVM kernel (``TvmAttention.table()``), on K/V views of a KV cache of 4096 positions;
best of ``--repeats`` means of ``--iters`` calls. Engine part: the bundle is loaded with its linear kernels
(``edgespool.load``); a prompt of ``context - 8`` random tokens is timed once with and once without the attention
kernel (prefill), then ``--decode`` greedy steps are timed from the same cache state with and without the kernel,
alternating, ``--runs`` times (median): two engines over the same weights, one with the model's kernel table minus
any compiled attention, one with the TVM attention kernel added to it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# (label, head_dim, n_heads, n_kv_heads)
SHAPES = [("hidden1024 16h/4kv", 64, 16, 4), ("hidden2048 32h/8kv", 64, 32, 8), ("hidden2048 16h/4kv d128", 128, 16, 4)]


def _time(f, iters: int, repeats: int) -> float:
    f()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            f()
        best = min(best, (time.perf_counter() - t0) / iters)
    return best


def kernel_bench(contexts: list[int], prefill: list[int], iters: int, repeats: int) -> list[dict]:
    from ..kernels.attention import attention
    from ..kernels.table import REFERENCE
    from ..kernels.tvm_attention import AttentionSpec
    from ..kernels.tvm_backend import TvmAttention

    rows = []
    for label, D, nh, nkv in SHAPES:
        ta = TvmAttention.for_host([AttentionSpec(D, nh, nkv)])
        table = ta.table()  # the numpy reference with only attention replaced (what the engine would call)
        rng = np.random.default_rng(0)
        kc = rng.standard_normal((nkv, 4096, D)).astype(np.float32)
        vc = rng.standard_normal((nkv, 4096, D)).astype(np.float32)
        cases = [("decode", 1, S) for S in contexts] + [("prefill", T, T) for T in prefill]
        for form, T, S in cases:
            q = rng.standard_normal((T, nh, D)).astype(np.float32)
            k, v = kc[:, :S], vc[:, :S]
            qp, kp = np.arange(S - T, S), np.arange(S)
            n = max(1, iters // T)
            numpy_s = _time(lambda: REFERENCE.attention(q, k, v, qp, kp), n, repeats)
            tvm_s = _time(lambda: table.attention(q, k, v, qp, kp), n, repeats)
            err = float(np.abs(ta(q, k, v, qp, kp) - attention(q, k, v, qp, kp)).max())
            rows.append({"shape": label, "form": form, "T": T, "S": S, "numpy_us": numpy_s * 1e6,
                         "tvm_us": tvm_s * 1e6, "speedup": numpy_s / tvm_s, "max_abs_diff": err})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def engine_bench(bundle: Path, contexts: list[int], decode: int, runs: int) -> list[dict]:
    import edgespool
    from ..kernels.tvm_attention import AttentionSpec
    from ..kernels.tvm_backend import TvmAttention
    from ..runtime.decoder.engine import Engine
    from ..runtime.decoder.sampling import Sampler

    rows = []
    with edgespool.load(bundle) as m:
        c = m.config
        ta = TvmAttention.for_host([AttentionSpec(c.head_dim, c.num_heads, c.num_kv_heads)])
        numpy_table = m.kernels.replace(attention_kernel=None)  # the bundle's linear kernels, numpy attention
        engines = {"numpy": Engine(m.source, numpy_table), "tvm": Engine(m.source, ta.table(numpy_table))}
        eng = engines["numpy"]
        rng = np.random.default_rng(1)
        for ctx in contexts:
            prompt = rng.integers(3, c.vocab_size, ctx - decode).tolist()
            tcache = eng.new_cache(ctx)
            t0 = time.perf_counter()
            tlogits = engines["tvm"].forward(prompt, tcache, last_only=True)
            prefill_tvm_s = time.perf_counter() - t0
            del tcache
            cache = eng.new_cache(ctx)
            t0 = time.perf_counter()
            logits = eng.forward(prompt, cache, last_only=True)
            prefill_s = time.perf_counter() - t0
            prefill_diff = float(np.abs(tlogits - logits).max() / np.abs(logits).max())
            k0, v0, n0 = cache.k.copy(), cache.v.copy(), cache.length
            first = Sampler().sample(logits[-1])
            times: dict[str, list[float]] = {"numpy": [], "tvm": []}
            toks: dict[str, list[int]] = {}
            for _ in range(runs):
                for name in ("numpy", "tvm"):
                    cache.k[...] = k0
                    cache.v[...] = v0
                    cache.length = n0
                    e = engines[name]
                    tok, out = first, []
                    t0 = time.perf_counter()
                    for _ in range(decode):
                        tok = int(np.argmax(e.forward([tok], cache, last_only=True)[-1]))
                        out.append(tok)
                    times[name].append(time.perf_counter() - t0)
                    toks[name] = out
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"context": ctx, "decode_steps": decode, "prompt": len(prompt),
                         "prefill_numpy_s": prefill_s, "prefill_tvm_s": prefill_tvm_s,
                         "prefill_logits_rel_diff": prefill_diff,
                         "numpy_tok_s": decode / med["numpy"], "tvm_tok_s": decode / med["tvm"],
                         "speedup": med["numpy"] / med["tvm"], "same_tokens": toks["numpy"] == toks["tvm"],
                         "attention_calls": ta.calls})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", default="128,512,2048", help="decode context lengths (keys)")
    ap.add_argument("--prefill", default="128,512", help="prefill prompt lengths (query rows = keys)")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bundle", type=Path, help="also time resident decode of this decoder bundle")
    ap.add_argument("--engine-contexts", default="128,512,2048")
    ap.add_argument("--decode", type=int, default=16, help="decode steps per engine run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-kernels", action="store_true", help="skip the per-call table")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    res: dict = {"machine": os.uname().machine, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "load_before": os.getloadavg(),
                 "threads": {k: os.environ.get(k) for k in ("TVM_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    if not a.no_kernels:
        res["kernels"] = kernel_bench([int(x) for x in a.contexts.split(",")],
                                      [int(x) for x in a.prefill.split(",") if x], a.iters, a.repeats)
    if a.bundle:
        res["engine"] = engine_bench(a.bundle, [int(x) for x in a.engine_contexts.split(",")], a.decode, a.runs)
    res["load_after"] = os.getloadavg()
    text = json.dumps(res, indent=1)
    if a.json:
        a.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
