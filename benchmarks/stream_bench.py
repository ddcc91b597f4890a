"""Side-by-side streaming benchmark (issue 6, item 8): the same random-weight model, the same rig limits.

Systems, each in its own process inside the rig (memory cgroup limit = budget + THAT system's measured process
baseline, page cache included; blkio read throttle + IOPS limit of the profile's storage; the profile's cores as
far as the host has them):

  (a) edgespool streaming under the budget (O_DIRECT, layer window, LRFU expert cache + prediction); for MoE
      also "-lru": plain LRU, no prediction (the baseline prediction is measured against; the engine's own
      ``hint`` still reads a layer's routed experts in parallel once the router has run, as in every mode)
  (b) llama.cpp (llama-cpp-python) on the GGUF of the same weights, default mmap; and --no-mmap (use_mmap=False);
      and mmap with ``use_extra_bufts=False`` (``--no-repack``: on x86 llama.cpp by default copies Q4_0 weights
      into repacked anonymous buffers, i.e. the whole model in RAM, which is OOM-killed under a small limit)
  (c) a naive layer-by-layer loader without prefetch (AirLLM-style: read each group when asked, drop it after)
  (d) edgespool with no budget (resident, no memory limit)

Baselines: each family's process baseline is the peak memory (max of cgroup peak and VmHWM) of a child run in
the same rig without a memory limit that imports what the system imports and loads no weights (edgespool: numpy +
engine + streaming modules + the bundle manifest; llama.cpp: llama_cpp + a 1-layer GGUF of a few hundred KB with
the same context). Storage: a cold O_DIRECT sequential read of the weights file inside the rig.

Models (synthesised with numpy: config.json + model.safetensors in f16 + a SentencePiece tokenizer trained on the
bundled corpus): a dense Llama >= 4x the budget and a Mixtral-style MoE (8 experts, top-2) >= 3x the budget, each
exported as int8 and int4 (edgespool int8/int4; llama.cpp Q8_0/Q4_0).

    python benchmarks/stream_bench.py --work /tmp/esbench --profile rpi5 --out docs/stream_bench.md [--plot x.png]

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

from edgespool.units import peak_rss_bytes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

MiB = 1 << 20

SIZES = {  # name: (hf config kwargs)
    "dense": dict(arch="llama", hidden=1024, layers=20, inter=2816, heads=16, kv_heads=4, vocab=512),
    "moe": dict(arch="mixtral", hidden=512, layers=16, inter=1408, heads=8, kv_heads=4, vocab=512, experts=8, top_k=2),
    # a real-size vocabulary (issue 11): the expert cache measured next to a 32k-row head and embedding table
    "moe32k": dict(arch="mixtral", hidden=512, layers=8, inter=1408, heads=8, kv_heads=4, vocab=32000, experts=8,
                   top_k=2),
}
TINY = dict(arch="llama", hidden=64, layers=1, inter=128, heads=4, kv_heads=2, vocab=512)  # llama.cpp baseline
SMALL = {
    "dense": dict(arch="llama", hidden=512, layers=12, inter=1408, heads=8, kv_heads=4, vocab=512),
    "moe": dict(arch="mixtral", hidden=256, layers=8, inter=704, heads=8, kv_heads=4, vocab=512, experts=8, top_k=2),
    "moe32k": dict(arch="mixtral", hidden=256, layers=4, inter=704, heads=8, kv_heads=4, vocab=32000, experts=8,
                   top_k=2),
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



# -- the systems (each runs as a child process inside the rig: `stream_bench.py child KIND ...`) ------------------
def _io_read_bytes() -> int:
    """Bytes this process (all threads) caused to be fetched from storage (/proc/self/io read_bytes)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def _sustained_bandwidth(path: str, seconds: float = 2.0, chunk: int = 4 * MiB) -> dict:
    """Cold O_DIRECT sequential reads of ``path`` (wrapping around) for ``seconds``; the bandwidth is taken over
    the reads after the first quarter of the time, so the throttle's initial burst allowance does not count."""
    from edgespool.runtime.bundle.checked_read import timed_sequential_read

    marks, _ = timed_sequential_read(path, chunk=chunk, max_s=seconds, wrap=True, direct=True)
    late = [(t, n) for t, n in marks if t > seconds / 4]
    dt = late[-1][0] - late[0][0]
    bw = sum(n for _, n in late[1:]) / dt if dt > 0 else None
    total = sum(n for _, n in marks)
    return {"bandwidth": bw, "bytes": total, "seconds": marks[-1][0], "burst_bandwidth": total / marks[-1][0],
            "how": f"sequential {chunk // MiB} MiB O_DIRECT reads of the weights file (page cache dropped) for "
                   f"{seconds:.0f} s inside the rig; rate over the last 3/4 of the time (the blkio throttle lets "
                   "a fresh cgroup burst first)"}


def _partial(out: str, res: dict, done: int, decode_s: float, P: int) -> None:
    """Write the figures so far (a run stopped by the time limit still reports its decode rate)."""
    read = _io_read_bytes() - res["_r2"]
    part = dict(res, partial=True, decode_tokens_done=done, decode_s=decode_s, decode_tok_s=done / decode_s,
                prefill_tok_s=P / res["ttft_s"], decode_read_bytes=read, bytes_read_per_token=read / done,
                achieved_read_bw=read / decode_s)
    Path(out).write_text(json.dumps(part))


def child(kind: str, path: str, out: str, P: int, N: int, budget: str | None) -> None:
    """Run one system: load, prefill P random ids, decode N-1 greedy tokens; write its figures as JSON."""
    ids_file = os.environ.get("ESB_IDS")  # real models: the chat-template prompt's ids (same for every system)
    ids = (json.loads(Path(ids_file).read_text()) if ids_file
           else [int(x) for x in np.random.default_rng(0).integers(3, 500, size=P)])
    P = len(ids)
    res: dict = {"system": kind}
    if kind == "storage":  # cold sequential read bandwidth of the file on the rig's storage
        res.update(_sustained_bandwidth(path))
        Path(out).write_text(json.dumps(res))
        return
    if kind.startswith("base-"):  # process baseline: imports (+ a tiny model for llama.cpp), no weights
        if kind == "base-llama":
            from edgespool.benchmarks.llamacpp_peer import open_llama

            llm, _ = open_llama(path, n_ctx=P + N + 8, verbose=False, n_threads=len(os.sched_getaffinity(0)),
                                n_batch=P)
            llm.eval([i % 500 for i in ids[:4]])  # the tiny model's vocabulary
        else:
            import edgespool.offload.streaming_source  # noqa: F401
            import edgespool.runtime.decoder.engine  # noqa: F401
            from edgespool.runtime.bundle.reader import Bundle

            Bundle(path)
        res["vm_hwm"] = peak_rss_bytes()
        Path(out).write_text(json.dumps(res))
        return
    r0 = _io_read_bytes()
    src = None
    if kind.startswith("llama"):
        from edgespool.benchmarks.llamacpp_peer import open_llama

        # llama-mmap-norepack keeps Q4_0/Q8_0 weights in the mmap instead of repacked copies; the others use
        # llama.cpp's defaults where they run here (see benchmarks/llamacpp_peer.py)
        t = time.perf_counter()
        llm, res["llamacpp_config"] = open_llama(
            path, extra_bufts=False if kind == "llama-mmap-norepack" else None, n_ctx=P + N + 8,
            use_mmap=kind.startswith("llama-mmap"), verbose=False, n_threads=len(os.sched_getaffinity(0)), n_batch=P)
        res["load_s"] = time.perf_counter() - t
        V = llm.n_vocab()

        def last() -> int:
            return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(V,))))

        r1 = _io_read_bytes()
        t = time.perf_counter()
        llm.eval(ids)
        tok = last()
        res["ttft_s"] = time.perf_counter() - t
        r2 = res["_r2"] = _io_read_bytes()
        t = time.perf_counter()
        for k in range(N - 1):
            llm.eval([tok])
            tok = last()
            _partial(out, res, k + 1, time.perf_counter() - t, P)
        res["decode_s"] = time.perf_counter() - t
    else:
        from edgespool.runtime.api import resolve_kernels
        from edgespool.runtime.bundle.reader import Bundle
        from edgespool.runtime.decoder.engine import Engine
        from edgespool.runtime.decoder.weights import ResidentWeights

        b = Bundle(path)
        table = resolve_kernels(b)  # the bundle's compiled kernels when they fit this CPU (as `edgespool run`)
        res["kernels"] = table.description
        t = time.perf_counter()
        if kind.startswith("edgespool-stream"):
            from edgespool.offload.streaming_source import open_streaming

            opts = dict(cache_policy="lru", predict=False) if kind == "edgespool-stream-lru" else {}
            src = open_streaming(b, budget, max_context=P + N, max_batch_tokens=P, kernels=table, **opts)
            res["plan"] = {k: v for k, v in src.plan.to_dict().items() if not isinstance(v, list)}
        elif kind == "naive":
            class Naive:  # AirLLM-style: read a group when asked (buffered), drop it when released; no prefetch
                def __init__(s, b):
                    s.config, s.b, s.g = b.config, b, {}

                def get(s, g):
                    if g not in s.g:
                        s.g[g] = s.b.read_group(g, verify=False)
                    return s.g[g]

                def release(s, g):
                    s.g.pop(g, None)

                def hint(s, gs):
                    pass

                def on_hidden(s, i, h):
                    pass

                def close(s):
                    s.g.clear()

            src = Naive(b)
        else:
            src = ResidentWeights(b, verify=False)
        res["load_s"] = time.perf_counter() - t
        eng = Engine(src, table)
        cache = eng.new_cache(P + N)
        r1 = _io_read_bytes()
        t = time.perf_counter()
        lg = eng.prefill(np.asarray(ids), cache)  # in the plan's prefill chunks; logits of the last position
        tok = int(np.argmax(lg[-1]))
        res["ttft_s"] = time.perf_counter() - t
        r2 = res["_r2"] = _io_read_bytes()
        t = time.perf_counter()
        for k in range(N - 1):
            lg = eng.forward([tok], cache, last_only=True)
            tok = int(np.argmax(lg[-1]))
            _partial(out, res, k + 1, time.perf_counter() - t, P)
        res["decode_s"] = time.perf_counter() - t
    r3 = _io_read_bytes()
    res.update(load_read_bytes=r1 - r0, prefill_read_bytes=r2 - r1, decode_read_bytes=r3 - r2,
               bytes_read_per_token=(r3 - r2) / max(1, N - 1), achieved_read_bw=(r3 - r2) / res["decode_s"],
               prefill_tok_s=P / res["ttft_s"], decode_tok_s=(N - 1) / res["decode_s"])
    if src is not None and hasattr(src, "stats"):
        st = src.stats()
        res["stream_stats"] = st
        res["io_mode"] = st["io_mode"]
        res["cache_hit_rate"] = (st.get("expert_cache") or {}).get("hit_rate")
        res["prediction_accuracy"] = (st.get("predictor") or {}).get("accuracy")
        res["plan_streamed_bytes_per_token"] = src.plan.streamed_bytes_per_token
        res["plan_total_bytes"] = src.plan.total_bytes
        res["window_depth_max"] = src.plan.window_depth
    if src is not None:
        src.close()
    res["vm_hwm"] = peak_rss_bytes()
    Path(out).write_text(json.dumps(res))


def run_system(kind: str, path: Path, budget: int | None, profile: str, P: int, N: int, work: Path,
               mem_limit: int | None, tag: str = "", timeout: float = 900) -> dict:
    """Run ``kind`` as a child process inside the rig (``mem_limit`` None = no memory limit)."""
    from edgespool.apps.rig.limits import resolve_limits
    from edgespool.apps.rig.runner import run_in_rig
    from edgespool.targets import get_target

    out = work / f"res-{kind}-{path.name}{tag}.json"
    out.unlink(missing_ok=True)
    name, _, medium = profile.partition(":")  # "rpi5:microsd" = the profile's microSD instead of its first medium
    limits = resolve_limits(get_target(name), storage=medium or None, memory=str(mem_limit) if mem_limit else None)
    if mem_limit is None:  # no memory limit at all (not even the profile's RAM): resident/baseline runs
        from dataclasses import replace

        limits = replace(limits, memory=None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", kind, str(path), str(out), str(P), str(N),
           str(budget or 0)]
    rep = run_in_rig(cmd, limits, device_paths=[str(path)], evict_paths=[str(path)], timeout=timeout)
    res = json.loads(out.read_text()) if out.exists() else {"system": kind, "failed": True}
    res.update(exit_code=rep.exit_code, oom_kills=rep.oom_kills, peak_cgroup=rep.peak_memory,
               device_read_bytes=rep.device_read_bytes, rig_wall_s=rep.wall_s,
               limits={l.name: f"{l.display} {l.mode}" for l in rep.limits})
    return res


def machine_load() -> str:
    """``uptime`` load averages and the busiest other processes (the machine is shared)."""
    la = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    try:
        top = subprocess.run(["top", "-bn1", "-o", "%CPU"], capture_output=True, text=True, timeout=10).stdout
        procs = [ln for ln in top.splitlines()[7:10] if ln.strip()]
    except (OSError, subprocess.SubprocessError):
        procs = []
    return f"load average {la}" + ("; top: " + " | ".join(" ".join(p.split()[8:9] + p.split()[11:12])
                                                        for p in procs) if procs else "")


def measure_rig(bundle: Path, tiny_gguf: Path, profile: str, P: int, N: int, work: Path, meta: dict,
                baselines: dict) -> dict:
    """Once per benchmark: the rig's cold read bandwidth of ``bundle``'s weights and each family's process baseline
    (max of cgroup peak and VmHWM of a no-weights run), recorded into ``meta`` and ``baselines``."""
    storage = run_system("storage", bundle / "weights.bin", None, profile, P, N, work, None)
    meta["storage"] = storage
    print("storage:", json.dumps(storage), flush=True)
    for fam, kind, p in (("edgespool", "base-edgespool", bundle), ("llama", "base-llama", tiny_gguf)):
        r = run_system(kind, p, None, profile, P, N, work, None)
        r["baseline"] = max(r.get("peak_cgroup") or 0, r.get("vm_hwm") or 0)
        baselines[fam] = r
        print(f"baseline {fam}:", json.dumps(r), flush=True)
    meta["baselines"] = {k: v["baseline"] for k, v in baselines.items()}
    return storage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/esbench")
    ap.add_argument("--profile", default="rpi5", help="rig profile, optionally :medium (e.g. rpi5:microsd)")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--plot", default=None, help="draw decode tok/s per system vs the storage bound (PNG)")
    ap.add_argument("--small", action="store_true", help="smaller models (quick check)")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("-n", type=int, default=12)
    ap.add_argument("--models", default="dense,moe")
    ap.add_argument("--quants", default="int8,int4")
    ap.add_argument("--systems", default="edgespool-stream,edgespool-stream-lru,llama-mmap,"
                                         "llama-mmap-norepack,llama-nommap,naive,edgespool-resident")
    ap.add_argument("--model", default=None,
                    help="real models: comma-separated GGUF paths (edgespool runs a --quant keep bundle of the SAME "
                         "file, llama.cpp the file itself); replaces the synthetic models")
    ap.add_argument("--timeout", type=float, default=900, help="with --model: seconds per run (a run cut short "
                    "reports the decode rate of the tokens it finished, marked partial)")
    ap.add_argument("--budgets", default="4,8", help="with --model: budgets as fractions 1/k of the weights")
    ap.add_argument("--chat", default="Write a Python function that returns the n-th Fibonacci number.",
                    help="with --model: the user message, rendered with the model's chat template")
    args = ap.parse_args()
    if args.model:
        main_real(args)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = SMALL if args.small else SIZES
    systems = args.systems.split(",")
    P, N = args.prompt, args.n
    t_all = time.time()
    tiny_hf = write_hf(work / "hf-tiny", TINY)
    tiny_gguf = make_gguf(tiny_hf, work / "hf-tiny-int8.gguf", "int8")
    from edgespool.benchmarks.llamacpp_peer import decide_extra_bufts

    llama_extra_bufts = decide_extra_bufts(str(tiny_gguf))  # probed once, outside the rig; children inherit it
    rows = []
    meta = {"profile": args.profile, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "load_before": machine_load(),
            "prompt": P, "n": N, "cpu": _cpu_name(), "llamacpp_extra_bufts": llama_extra_bufts}
    baselines: dict[str, dict] = {}
    storage = None
    for mname in args.models.split(","):
        spec = sizes[mname]
        hf = write_hf(work / f"hf-{mname}{'-small' if args.small else ''}", spec)
        for quant in args.quants.split(","):
            bundle = make_bundle(hf, work / f"{hf.name}-{quant}.bundle", quant)
            gguf = make_gguf(hf, work / f"{hf.name}-{quant}.gguf", quant)
            if storage is None:
                storage = measure_rig(bundle, tiny_gguf, args.profile, P, N, work, meta, baselines)
            size = (bundle / "weights.bin").stat().st_size
            gsize = gguf.stat().st_size
            ratio = 4 if mname == "dense" else 3  # (moe32k: 1/3 like the MoE)
            budget = size // ratio
            from edgespool.runtime.bundle.reader import Bundle
            from edgespool.schedulers.memory_plan import minimum_budget

            lo = minimum_budget(Bundle(bundle), None, max_context=P + N, max_batch_tokens=P)
            if budget < lo:
                print(f"{bundle.name}: budget {budget} below the minimum working set {lo}; using the minimum")
                budget = lo
            print(f"== {bundle.name}: {size / MiB:.0f} MiB weights (GGUF {gsize / MiB:.0f} MiB), budget "
                  f"{budget / MiB:.0f} MiB", flush=True)
            for kind in systems:
                if kind == "edgespool-stream-lru" and not mname.startswith("moe"):
                    continue
                fam = "llama" if kind.startswith("llama") else "edgespool"
                path = gguf if fam == "llama" else bundle
                lim = None if kind == "edgespool-resident" else budget + baselines[fam]["baseline"]
                t0 = time.time()
                r = run_system(kind, path, budget, args.profile, P, N, work, lim)
                r.update(model=mname, quant=quant, weights_bytes=size, file_bytes=gsize if fam == "llama" else size,
                         budget=budget, cgroup_limit=lim, baseline=baselines[fam]["baseline"], wall=time.time() - t0)
                add_bounds(r, storage)
                print(json.dumps({k: v for k, v in r.items() if k != "stream_stats"}), flush=True)
                rows.append(r)
    meta["load_after"] = machine_load()
    meta["wall_s"] = time.time() - t_all
    (work / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = table(rows, meta)
    print(md)
    if args.out:
        Path(args.out).write_text(md)
    if args.plot:
        plot(rows, args.plot)


def main_real(args: argparse.Namespace) -> None:
    """Real GGUF models side by side: edgespool streaming (keep bundle of the file) vs llama.cpp on the file,
    at budgets of 1/k of the weights, the chat-template prompt, ``-n`` generated tokens."""
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model, open_source
    from edgespool.runtime.api import load
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.schedulers.memory_plan import minimum_budget

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    N = args.n
    systems = [s for s in args.systems.split(",") if s not in ("edgespool-stream-lru", "naive")]
    t_all = time.time()
    tiny_gguf = make_gguf(write_hf(work / "hf-tiny", TINY), work / "hf-tiny-int8.gguf", "int8")
    from edgespool.benchmarks.llamacpp_peer import decide_extra_bufts

    meta = {"profile": args.profile, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "load_before": machine_load(),
            "n": N, "cpu": _cpu_name(), "llamacpp_extra_bufts": decide_extra_bufts(str(tiny_gguf)),
            "chat": args.chat}
    rows: list[dict] = []
    baselines: dict[str, dict] = {}
    storage = None
    for gguf in (Path(p) for p in args.model.split(",")):
        bundle = work / f"{gguf.stem}-keep.bundle"
        if not (bundle / "manifest.json").exists():
            export_model(open_source(gguf), bundle, policy=QuantPolicy(quant="keep"), overwrite=True, onnx=False,
                         kernels=True, progress=False)
        with load(bundle) as m:
            ids = m.chat_ids([{"role": "user", "content": args.chat}])
        ids_file = work / f"ids-{gguf.stem}.json"
        ids_file.write_text(json.dumps([int(i) for i in ids]))
        os.environ["ESB_IDS"] = str(ids_file)
        P = len(ids)
        meta["prompt"] = P
        if storage is None:
            storage = measure_rig(bundle, tiny_gguf, args.profile, P, N, work, meta, baselines)
        size = Bundle(bundle).weights_nbytes
        lo = minimum_budget(Bundle(bundle), None, max_context=P + N, max_batch_tokens=P)
        for k in (int(x) for x in args.budgets.split(",")):
            budget = max(size // k, lo)
            print(f"== {gguf.name}: {size / MiB:.0f} MiB weights, budget 1/{k} = {budget / MiB:.0f} MiB "
                  f"(minimum {lo / MiB:.1f} MiB), prompt {P} tokens", flush=True)
            for kind in systems:
                fam = "llama" if kind.startswith("llama") else "edgespool"
                if kind == "llama-nommap" and gguf.stat().st_size > budget:
                    continue  # --no-mmap copies the whole file into memory: cannot fit a smaller limit
                path = gguf if fam == "llama" else bundle
                lim = None if kind == "edgespool-resident" else budget + baselines[fam]["baseline"]
                if kind == "edgespool-resident" and k != int(args.budgets.split(",")[0]):
                    continue  # once per model
                t0 = time.time()
                r = run_system(kind, path, budget, args.profile, P, N, work, lim, tag=f"-{k}",
                               timeout=args.timeout)
                r.update(model=gguf.stem, quant="keep", dense=True, weights_bytes=size,
                         file_bytes=gguf.stat().st_size if fam == "llama" else size, budget=budget, fraction=k,
                         cgroup_limit=lim, baseline=baselines[fam]["baseline"], wall=time.time() - t0)
                add_bounds(r, storage)
                print(json.dumps({k2: v for k2, v in r.items() if k2 not in ("stream_stats", "plan")}), flush=True)
                rows.append(r)
                (work / "results-real.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    meta["load_after"] = machine_load()
    meta["wall_s"] = time.time() - t_all
    (work / "results-real.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = table(rows, meta)
    print(md)
    if args.out:
        Path(args.out).write_text(md)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def add_bounds(r: dict, storage: dict) -> None:
    """The storage bound of this run: bytes that must be read per token / the rig's cold read bandwidth.

    edgespool streaming, dense: the plan's streamed (non-pinned) layer bytes. llama.cpp / naive (dense): with the
    page cache holding at most the budget, at least ``file - budget`` bytes per token (naive: the whole file,
    it keeps nothing). MoE (any system): the measured bytes per decode token (no fixed bound exists: it
    depends on routing and caching). Resident: no bound (nothing is read)."""
    bw = (storage or {}).get("bandwidth")
    if r.get("failed") or not bw or r["system"] == "edgespool-resident":
        return
    if r["model"] == "dense" or r.get("dense"):
        if r["system"].startswith("edgespool-stream"):
            must = r.get("plan_streamed_bytes_per_token")
        elif r["system"] == "naive":
            must = r["file_bytes"]
        else:
            must = max(0, r["file_bytes"] - r["budget"])
        how = "must-read bytes/token / cold bandwidth"
    else:
        must = r.get("bytes_read_per_token")
        how = "measured bytes/token / cold bandwidth"
    if must:
        r["bound_tok_s"] = bw / must
        r["bound_fraction"] = r["decode_tok_s"] / r["bound_tok_s"]
        r["bound_bytes_per_token"] = must
        r["bound_how"] = how


def table(rows: list[dict], meta: dict) -> str:
    st = meta.get("storage") or {}
    base = meta.get("baselines") or {}
    out = [f"Rig profile {meta['profile']} (memory cgroup incl. page cache = budget + the system's own process "
           f"baseline; blkio read throttle + IOPS of the profile's storage; 2 cores). {meta['date']}, "
           f"{meta.get('cpu')}; prompt {meta['prompt']} tokens, {meta['n']} generated. Cold read bandwidth in the "
           f"rig: {st.get('bandwidth', 0) / 1e6:.0f} MB/s ({st.get('how', '')}). Process baselines (max of "
           "cgroup peak and VmHWM of a no-weights run): "
           + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in base.items())
           + f". Machine load: before: {meta.get('load_before')}; after: {meta.get('load_after')}. "
           "`-` = failed / OOM-killed.", "",
           "| model | quant | file | budget | system | limit | decode tok/s | prefill tok/s | TTFT s | read/token "
           "| read MB/s | bound tok/s | of bound | hit rate | pred. acc. | peak cgroup | OOM |",
           "|" + "---|" * 17]
    for r in rows:
        ok = not r.get("failed") and (r.get("exit_code") == 0 or r.get("partial"))

        def f(k, fmt="{:.2f}", scale=1.0):
            v = r.get(k)
            return fmt.format(v / scale) if ok and v is not None else "-"

        out.append("| " + " | ".join([
            r["model"], r["quant"], f"{r['file_bytes'] / MiB:.0f} MiB", f"{r['budget'] / MiB:.0f} MiB",
            r["system"] + (f" (cut at {r['decode_tokens_done']} tokens)" if r.get("partial") else ""),
            f"{r['cgroup_limit'] / MiB:.0f} MiB" if r.get("cgroup_limit") else "none",
            f("decode_tok_s"), f("prefill_tok_s", "{:.1f}"), f("ttft_s"),
            f("bytes_read_per_token", "{:.1f} MiB", MiB), f("achieved_read_bw", "{:.0f}", 1e6),
            f("bound_tok_s"), f("bound_fraction", "{:.0%}"), f("cache_hit_rate"), f("prediction_accuracy"),
            f"{r['peak_cgroup'] / MiB:.0f} MiB" if r.get("peak_cgroup") else "-", str(r.get("oom_kills"))]) + " |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: str) -> None:
    """Grouped bars: decode tok/s of each system per model/quant, with the edgespool storage bound marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r["model"], r["quant"]) for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 3.6))
    w = 0.8 / len(systems)
    for k, s in enumerate(systems):
        ys = []
        for c in cases:
            r = next((r for r in rows if (r["model"], r["quant"]) == c and r["system"] == s), None)
            ys.append(r["decode_tok_s"] if r and not r.get("failed") and r.get("exit_code") == 0 else 0)
        ax.bar([i + k * w for i in range(len(cases))], ys, w, label=s)
    for i, c in enumerate(cases):
        r = next((r for r in rows if (r["model"], r["quant"]) == c and r["system"] == "edgespool-stream"), None)
        if r and r.get("bound_tok_s") and c[0] == "dense":
            ax.plot([i - w / 2, i + 0.8 - w / 2], [r["bound_tok_s"]] * 2, "k--", lw=1)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(cases))], [f"{m} {q}" for m, q in cases])
    ax.set_ylabel("decode tok/s")
    ax.set_yscale("log")
    ax.set_title("decode under budget + own baseline (rig); dashed: edgespool storage bound (dense)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        a = sys.argv[2:]
        child(a[0], a[1], a[2], int(a[3]), int(a[4]), a[5] if len(a) > 5 and a[5] != "0" else None)
    else:
        main()
