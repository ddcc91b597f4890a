"""Side-by-side streaming benchmark (issue 6, item 8): the same random-weight model, the same rig limits.

Systems, each in its own process inside the rig (memory cgroup limit = budget + process baseline, page cache
included; blkio read throttle of the profile's storage; the profile's cores as far as the host has them):

  (a) edgespool streaming under the budget (O_DIRECT, layer window, expert cache + prediction)
  (b) llama.cpp (llama-cpp-python) on the GGUF of the same weights, default mmap; and --no-mmap (use_mmap=False)
  (c) a naive layer-by-layer loader without prefetch (AirLLM-style: read each group when asked, drop it after)
  (d) edgespool with no budget (resident)

Models (synthesised with numpy: config.json + model.safetensors in f16 + a SentencePiece tokenizer trained on the
bundled corpus): a dense Llama >= 4x the budget and a Mixtral-style MoE (8 experts, top-2) >= 3x the budget, each
exported as int8 and int4 (edgespool int8/int4; llama.cpp Q8_0/Q4_0).

    python benchmarks/stream_bench.py --work /tmp/esbench --profile rpi5 --out docs/stream_bench.md [--small]

Needs root cgroups (the rig), llama-cpp-python, sentencepiece and torch (llama.cpp's convert script).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

MiB = 1 << 20

SIZES = {  # name: (hf config kwargs)
    "dense": dict(arch="llama", hidden=1024, layers=20, inter=2816, heads=16, kv_heads=4, vocab=512),
    "moe": dict(arch="mixtral", hidden=512, layers=16, inter=1408, heads=8, kv_heads=4, vocab=512, experts=8, top_k=2),
}
SMALL = {
    "dense": dict(arch="llama", hidden=512, layers=12, inter=1408, heads=8, kv_heads=4, vocab=512),
    "moe": dict(arch="mixtral", hidden=256, layers=8, inter=704, heads=8, kv_heads=4, vocab=512, experts=8, top_k=2),
}


# -- model synthesis ---------------------------------------------------------------------------------------------
def write_hf(out: Path, spec: dict, seed: int = 0) -> Path:
    """Random-weight HF checkpoint (f16 safetensors + config.json + SentencePiece tokenizer) of ``spec``."""
    from safetensors.numpy import save_file

    import tiny_models

    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    H, L, I, V = spec["hidden"], spec["layers"], spec["inter"], spec["vocab"]
    nh, nkv = spec["heads"], spec["kv_heads"]
    D = H // nh
    rng = np.random.default_rng(seed)

    def mat(o, i):
        return (rng.standard_normal((o, i), dtype=np.float32) / np.sqrt(i)).astype(np.float16)

    def vec(n):
        return (1.0 + 0.05 * rng.standard_normal(n)).astype(np.float16)

    t = {"model.embed_tokens.weight": (rng.standard_normal((V, H), dtype=np.float32)).astype(np.float16)}
    for i in range(L):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = vec(H)
        t[p + "post_attention_layernorm.weight"] = vec(H)
        t[p + "self_attn.q_proj.weight"] = mat(nh * D, H)
        t[p + "self_attn.k_proj.weight"] = mat(nkv * D, H)
        t[p + "self_attn.v_proj.weight"] = mat(nkv * D, H)
        t[p + "self_attn.o_proj.weight"] = mat(H, nh * D)
        if spec["arch"] == "mixtral":
            t[p + "block_sparse_moe.gate.weight"] = mat(spec["experts"], H)
            for e in range(spec["experts"]):
                q = f"{p}block_sparse_moe.experts.{e}."
                t[q + "w1.weight"], t[q + "w3.weight"], t[q + "w2.weight"] = mat(I, H), mat(I, H), mat(H, I)
        else:
            t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"] = mat(I, H), mat(I, H)
            t[p + "mlp.down_proj.weight"] = mat(H, I)
    t["model.norm.weight"] = vec(H)
    t["lm_head.weight"] = mat(V, H)
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = {"hidden_size": H, "num_hidden_layers": L, "intermediate_size": I, "num_attention_heads": nh,
           "num_key_value_heads": nkv, "vocab_size": V, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
           "hidden_act": "silu", "torch_dtype": "float16"}
    if spec["arch"] == "mixtral":
        cfg.update(architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=spec["experts"],
                   num_experts_per_tok=spec["top_k"], sliding_window=None)
    else:
        cfg.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    tiny_models._train_spm(out)
    return out


def make_bundle(hf: Path, out: Path, quant: str) -> Path:
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model, open_source

    if not (out / "manifest.json").exists():
        export_model(open_source(hf), out, policy=QuantPolicy(quant=quant), overwrite=True, onnx=False,
                     kernels=False, progress=False)
    return out


def make_gguf(hf: Path, out: Path, quant: str) -> Path:
    import gguf_tools

    if out.exists():
        return out
    f16 = out.with_name(out.stem + "-f16.gguf")
    if not f16.exists():
        gguf_tools.convert(hf, f16, "f16")
    gguf_tools.quantize(f16, out, {"int8": "q8_0", "int4": "q4_0"}[quant])
    return out


# -- the systems (each runs as a child process inside the rig) ---------------------------------------------------
CHILD = r'''
import json, sys, time, resource, numpy as np
kind, path, out, P, N = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
budget = sys.argv[6] if len(sys.argv) > 6 else None
ids = [int(x) for x in np.random.default_rng(0).integers(3, 500, size=P)]
res = {"system": kind}
if kind.startswith("llama"):
    import llama_cpp
    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=path, n_ctx=P + N + 8, use_mmap=(kind == "llama-mmap"), verbose=False,
                          n_threads=len(__import__("os").sched_getaffinity(0)), n_batch=P)
    res["load_s"] = time.perf_counter() - t
    V = llm.n_vocab()
    last = lambda: int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(V,))))
    t = time.perf_counter(); llm.eval(ids); tok = last()
    res["ttft_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(N - 1):
        llm.eval([tok]); tok = last()
    res["decode_s"] = time.perf_counter() - t
else:
    from edgespool.runtime.bundle import Bundle
    from edgespool.runtime.engine import Engine
    from edgespool.runtime.weights import ResidentWeights
    b = Bundle(path)
    t = time.perf_counter()
    if kind == "edgespool-stream":
        from edgespool.offload.streaming_source import open_streaming
        src = open_streaming(b, budget, max_context=P + N, max_batch_tokens=P)
    elif kind == "naive":
        class Naive:  # AirLLM-style: read a group when asked (buffered), drop it when released; no prefetch
            def __init__(s, b): s.config, s.b, s.g = b.config, b, {}
            def get(s, g):
                if g not in s.g: s.g[g] = s.b.read_group(g, verify=False)
                return s.g[g]
            def release(s, g): s.g.pop(g, None)
            def hint(s, gs): pass
            def on_hidden(s, i, h): pass
            def close(s): s.g.clear()
        src = Naive(b)
    else:
        src = ResidentWeights(b, verify=False)
    res["load_s"] = time.perf_counter() - t
    eng = Engine(src); cache = eng.new_cache(P + N)
    t = time.perf_counter(); lg = eng.forward(ids, cache, last_only=True); tok = int(np.argmax(lg[-1]))
    res["ttft_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(N - 1):
        lg = eng.forward([tok], cache, last_only=True); tok = int(np.argmax(lg[-1]))
    res["decode_s"] = time.perf_counter() - t
    if hasattr(src, "stats"):
        st = src.stats(); res["bytes_read"] = st["bytes_read"]; res["io_mode"] = st["io_mode"]
        res["cache_hit_rate"] = (st.get("expert_cache") or {}).get("hit_rate")
        res["prediction_accuracy"] = (st.get("predictor") or {}).get("accuracy")
        res["streamed_bytes_per_token"] = src.plan.streamed_bytes_per_token
    src.close()
res["decode_tok_s"] = (N - 1) / res["decode_s"]
res["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
open(out, "w").write(json.dumps(res))
'''


def baseline_rss() -> int:
    """Peak RSS of a child that imports what the edgespool runs import and loads nothing (the process baseline)."""
    code = ("import resource, numpy, edgespool.runtime.engine, edgespool.offload.streaming_source;"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    return int(subprocess.check_output([sys.executable, "-c", code]).decode().strip())


def run_system(kind: str, path: Path, budget: int, profile: str, P: int, N: int, work: Path,
               mem_limit: int | None) -> dict:
    from edgespool.apps.rig.limits import resolve_limits
    from edgespool.apps.rig.runner import run_in_rig
    from edgespool.targets import get_target

    out = work / f"res-{kind}-{path.name}.json"
    out.unlink(missing_ok=True)
    script = work / "child.py"
    script.write_text(CHILD)
    limits = resolve_limits(get_target(profile), memory=str(mem_limit) if mem_limit else None)
    cmd = [sys.executable, str(script), kind, str(path), str(out), str(P), str(N), str(budget)]
    rep = run_in_rig(cmd, limits, device_paths=[str(path)], evict_paths=[str(path)], timeout=1800)
    res = json.loads(out.read_text()) if out.exists() else {"system": kind, "failed": True}
    res.update(exit_code=rep.exit_code, oom_kills=rep.oom_kills, peak_cgroup=rep.peak_memory,
               device_read_bytes=rep.device_read_bytes, limits={l.name: f"{l.display} {l.mode}" for l in rep.limits})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/esbench")
    ap.add_argument("--profile", default="rpi5")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--small", action="store_true", help="smaller models (quick check)")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("-n", type=int, default=12)
    ap.add_argument("--models", default="dense,moe")
    ap.add_argument("--quants", default="int8,int4")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = SMALL if args.small else SIZES
    base = baseline_rss()
    rows = []
    for mname in args.models.split(","):
        spec = sizes[mname]
        hf = write_hf(work / f"hf-{mname}{'-small' if args.small else ''}", spec)
        for quant in args.quants.split(","):
            bundle = make_bundle(hf, work / f"{hf.name}-{quant}.bundle", quant)
            gguf = make_gguf(hf, work / f"{hf.name}-{quant}.gguf", quant)
            size = sum(f.stat().st_size for f in [bundle / "weights.bin"])
            ratio = 4 if mname == "dense" else 3
            budget = size // ratio
            from edgespool.runtime.bundle import Bundle
            from edgespool.schedulers.memory_plan import minimum_budget

            lo = minimum_budget(Bundle(bundle), None, max_context=args.prompt + args.n, max_batch_tokens=args.prompt)
            if budget < lo:
                print(f"{bundle.name}: budget {budget} below the minimum working set {lo}; using the minimum")
                budget = lo
            limit = budget + base
            print(f"== {bundle.name}: {size / MiB:.0f} MiB weights, budget {budget / MiB:.0f} MiB, cgroup limit "
                  f"{limit / MiB:.0f} MiB (baseline {base / MiB:.0f} MiB)", flush=True)
            for kind, path, lim in (("edgespool-stream", bundle, limit), ("llama-mmap", gguf, limit),
                                    ("llama-nommap", gguf, limit), ("naive", bundle, limit),
                                    ("edgespool-resident", bundle, None)):
                t0 = time.time()
                r = run_system(kind, path, budget, args.profile, args.prompt, args.n, work, lim)
                r.update(model=mname, quant=quant, weights_bytes=size, budget=budget, cgroup_limit=lim,
                         baseline=base, wall=time.time() - t0)
                print(json.dumps(r), flush=True)
                rows.append(r)
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    md = table(rows, args.profile)
    print(md)
    if args.out:
        Path(args.out).write_text(md)


def table(rows: list[dict], profile: str) -> str:
    out = [f"Rig profile {profile} (memory cgroup incl. page cache = budget + process baseline; blkio throttle of "
           "the profile's storage). `-` = failed/OOM.", "",
           "| model | quant | weights | budget | system | decode tok/s | TTFT s | bytes read/token | peak cgroup | "
           "OOM | hit rate | pred. acc. |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = not r.get("failed")
        bpt = r.get("streamed_bytes_per_token")
        out.append("| " + " | ".join([
            r["model"], r["quant"], f"{r['weights_bytes'] / MiB:.0f} MiB", f"{r['budget'] / MiB:.0f} MiB",
            r["system"] + ("" if r.get("cgroup_limit") else " (no limit)"),
            f"{r['decode_tok_s']:.2f}" if ok else "-", f"{r['ttft_s']:.2f}" if ok else "-",
            f"{bpt / MiB:.1f} MiB" if bpt else "-",
            f"{r['peak_cgroup'] / MiB:.0f} MiB" if r.get("peak_cgroup") else "-",
            str(r.get("oom_kills")), f"{r['cache_hit_rate']:.2f}" if r.get("cache_hit_rate") is not None else "-",
            f"{r['prediction_accuracy']:.2f}" if r.get("prediction_accuracy") is not None else "-"]) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
