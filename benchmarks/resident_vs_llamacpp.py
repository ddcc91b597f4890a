"""Resident decode / prefill: edgespool (bundle + its TVM kernels) vs llama.cpp (llama-cpp-python) on one model.

One random-weight dense Llama checkpoint (f16 safetensors written with numpy by ``stream_bench.write_hf``) is

* exported by edgespool to an int8 and an int4 (g32) bundle for ``--target host`` with compiled kernels, both
  activation modes (``--kernel-activations q8``: the bundle carries the float-activation and the Q8_0-activation
  GEMVs; the child picks one with ``TvmKernels.prefer_q8``);
* converted by llama.cpp's ``convert_hf_to_gguf.py`` to f16, then quantised by llama.cpp to Q8_0 and Q4_0.

Each (system, threads) runs in its own child process (so thread settings apply from process start), one after the
other, never concurrently: ``--runs`` repetitions of (a) a ``--short``-token prompt then ``--decode`` greedy tokens
(decode tok/s = decode steps / wall time of the forward/eval calls) and (b) a ``--prompt``-token prefill (tok/s =
prompt tokens / wall time of the one batched forward/eval call); the median is reported. Threads: edgespool
``TVM_NUM_THREADS`` + ``OPENBLAS_NUM_THREADS`` = n, llama.cpp ``n_threads = n_threads_batch = n``. llama.cpp keeps
its defaults otherwise (mmap, CPU repacking of Q4_0/Q8_0 into its interleaved layouts, f16 KV cache); edgespool's
KV cache is float32.

``--real smollm2-135m,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b`` runs the real GGUFs instead (``edgespool fetch``):
per model an edgespool int8, int4 (g32) and ``--quant keep`` bundle exported from the GGUF for ``--target host``
(C block kernels; ``--target x86-avx2`` exports the AVX2 build instead, e.g. beside a llama.cpp built AVX2-only and
loaded through ``LLAMA_CPP_LIB_PATH``), and llama.cpp on the GGUF itself and on Q8_0 / Q4_0 files requantised from it by llama.cpp
(``allow_requantize``: both systems re-quantise the same file's weights). Pairs: int8 vs Q8_0, int4 vs Q4_0,
keep vs the file. Greedy tokens after a real text prompt are compared too.

Per-kernel achieved GB/s for the model's linear shapes (cold: weights rotate through >= 3x L3) against the read
bandwidth measured in the same run come from :mod:`edgespool.benchmarks.kernel_bench`.

    python -m edgespool.benchmarks.resident_vs_llamacpp --work /tmp/rvl --threads 1,2 --json out.json
    python -m edgespool.benchmarks.resident_vs_llamacpp --real qwen2.5-coder-0.5b --prompt 512 --decode 64 \
        --runs 3 --kernel-iters 0 --work /tmp/rvl-real --json real.json

Needs apache-tvm, llama-cpp-python, sentencepiece and torch (llama.cpp's converter).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = dict(arch="llama", hidden=1024, layers=20, inter=2816, heads=16, kv_heads=4, vocab=512)
SYSTEMS = {  # name: (family, artefact, activation mode)
    "llama.cpp Q8_0": ("llama", "q8_0.gguf", "q8"),
    "edgespool int8 q8": ("edgespool", "int8", "q8"),
    "edgespool int8 f32": ("edgespool", "int8", "f32"),
    "llama.cpp Q4_0": ("llama", "q4_0.gguf", "q8"),
    "edgespool int4 q8": ("edgespool", "int4", "q8"),
    "edgespool int4 f32": ("edgespool", "int4", "f32"),
}
REAL_SYSTEMS = {  # name: (family, artefact, activation mode); paired as int8/Q8_0, int4/Q4_0, keep/file
    "llama.cpp Q8_0": ("llama", "q8_0.gguf", "q8"),
    "edgespool int8": ("edgespool", "int8", "q8"),
    "llama.cpp Q4_0": ("llama", "q4_0.gguf", "q8"),
    "edgespool int4": ("edgespool", "int4", "q8"),
    "llama.cpp file": ("llama", "file.gguf", "q8"),
    "edgespool keep": ("edgespool", "keep", "q8"),
}
PAIRS = {"int8": "Q8_0", "int4": "Q4_0", "keep": "file"}
REAL_TEXT = ("def quicksort(items):\n    \"\"\"Sort a list of numbers in ascending order.\"\"\"\n"
             "    if len(items) <= 1:\n        return items\n")


# -- artefacts ------------------------------------------------------------------------------------------------------
def _export_once(src_path: Path, bundle: Path, quant: str, target: str = "host") -> Path:
    """Export ``src_path`` as a ``quant`` bundle (g32, C/TVM kernels with q8 activations) for ``target`` unless
    ``bundle`` exists."""
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model, open_source

    if not (bundle / "manifest.json").exists():
        t0 = time.perf_counter()
        src = open_source(src_path)
        try:
            export_model(src, bundle, target=target, policy=QuantPolicy(quant=quant, group_size=32), overwrite=True,
                         onnx=False,
                         kernels=True, progress=False, kernel_activations="q8")
        finally:
            src.close()
        print(f"exported {bundle} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return bundle


def prepare(work: Path, spec: dict) -> dict[str, Path]:
    """HF checkpoint, edgespool int8/int4 bundles (kernels f32 + q8) and llama.cpp Q8_0/Q4_0 GGUFs under ``work``
    (each made once; delete the directory to rebuild)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from edgespool.benchmarks.stream_bench import write_hf
    import gguf_tools

    work.mkdir(parents=True, exist_ok=True)
    hf = write_hf(work / "hf", spec)
    out: dict[str, Path] = {"hf": hf}
    for q in ("int8", "int4"):
        out[q] = _export_once(hf, work / f"bundle_{q}", q)
    f16 = work / "f16.gguf"
    if not f16.exists():
        gguf_tools.convert(hf, f16, "f16")
    for ft in ("q8_0", "q4_0"):
        g = work / f"{ft}.gguf"
        if not g.exists():
            gguf_tools.quantize(f16, g, ft)
        out[f"{ft}.gguf"] = g
    return out


def requantize(src: Path, dst: Path, ftype: str) -> Path:
    """llama.cpp's quantiser on an already quantised GGUF (``allow_requantize``), ``ftype`` q8_0 / q4_0."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}")
    params.allow_requantize = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {ftype}) returned {rc}")
    return dst


def prepare_real(work: Path, name: str, need: set[str] | None = None, target: str = "host") -> dict[str, Path]:
    """For the fetched GGUF ``name``: edgespool int8 / int4 / keep bundles for ``target`` and llama.cpp Q8_0 /
    Q4_0 files (only the artefacts in ``need``, e.g. ``{"keep", "file.gguf"}``, when given)."""
    gg = sorted((Path.home() / ".cache/edgespool/assets" / name).glob("*.gguf"))
    if not gg:
        raise SystemExit(f"{name}: run `edgespool fetch {name}` first")
    work = work / name
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {"file.gguf": gg[0]}
    for q in ("int8", "int4", "keep"):
        if need is None or q in need:
            out[q] = _export_once(gg[0], work / (f"bundle_{q}" + ("" if target == "host" else f"_{target}")), q,
                                  target)
    for ft in ("q8_0", "q4_0"):
        if need is not None and f"{ft}.gguf" not in need:
            continue
        g = work / f"{ft}.gguf"
        if not g.exists():
            requantize(gg[0], g, ft)
        out[f"{ft}.gguf"] = g
    return out


def gguf_types(path: Path) -> dict[str, int]:
    """ggml type name -> number of tensors of the GGUF (to state what llama.cpp actually ran)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    counts: dict[str, int] = {}
    for t in r.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


# -- one system in one process --------------------------------------------------------------------------------------
def _child(system: str, path: str, threads: int, runs: int, short: int, decode: int, prompt: int, vocab: int,
           profile: str | None) -> dict:
    family, _, act = {**SYSTEMS, **REAL_SYSTEMS}[system]
    rng = np.random.default_rng(1234)
    short_ids = [1] + rng.integers(3, vocab, short - 1).tolist()
    prompt_ids = [1] + rng.integers(3, vocab, prompt - 1).tolist()
    real = vocab > 1000  # a real model: the decode run starts from a real text prompt (greedy parity is meaningful)
    res: dict = {"system": system, "threads": threads, "act": act, "decode_tok_s": [], "prefill_tok_s": []}
    if family == "llama":
        import llama_cpp

        from edgespool.benchmarks.llamacpp_peer import open_llama

        llm, res["llamacpp_config"] = open_llama(path, n_ctx=max(short + decode, prompt) + 8, n_batch=512,
                              n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)
        n_vocab = llm.n_vocab()
        res["llamacpp_system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
        res["llamacpp_lib"] = os.environ.get("LLAMA_CPP_LIB_PATH", "the llama-cpp-python wheel's")
        if real:
            short_ids = llm.tokenize(REAL_TEXT.encode(), add_bos=False, special=False)

        def last_logits() -> np.ndarray:  # llama-cpp-python keeps no scores without logits_all: read the context's
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))

        def gen(ids: list[int], n: int) -> tuple[float, float, list[int]]:
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            pre = time.perf_counter() - t0
            toks, dec = [], 0.0
            for i in range(n):
                tok = int(np.argmax(last_logits()))
                toks.append(tok)
                if i + 1 == n:
                    break
                t0 = time.perf_counter()
                llm.eval([tok])
                dec += time.perf_counter() - t0
            return pre, dec, toks
    else:
        import edgespool

        model = edgespool.load(path)
        res["kernels"] = model.kernels.description
        if real:
            short_ids = model.tokenizer.encode(REAL_TEXT)
        tk = model.kernels.backend
        if tk is None:
            raise SystemExit(f"{path}: no compiled kernels loaded ({model.kernels.description})")
        tk.prefer_q8 = act == "q8"
        eng = model.engine

        def gen(ids: list[int], n: int) -> tuple[float, float, list[int]]:
            eng.stats.reset()
            toks = list(eng.generate(ids, n))
            return eng.stats.prefill_s, eng.stats.decode_s, toks

    gen(short_ids, 4)  # warm-up: page in weights, thread pools, caches
    gen(prompt_ids, 1)  # and one prompt-sized prefill (its temporaries' first pages), as llama-bench warms up
    prof = None
    if profile:
        prof = subprocess.Popen(["py-spy", "record", "-o", profile, "-r", "200", "-f", "speedscope", "--native",
                                 "--pid", str(os.getpid())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    for _ in range(runs):
        _, dec, toks = gen(short_ids, decode)
        res["decode_tok_s"].append((decode - 1) / dec)
        res["tokens"] = toks
        pre, _, _ = gen(prompt_ids, 1)
        res["prefill_tok_s"].append(prompt / pre)
    if prof is not None:
        prof.send_signal(2)
        prof.wait(timeout=60)
    if family == "edgespool":
        res["kernel_fallbacks"] = dict(tk.fallbacks)
        # weights repacked into the block kernels' x16 layout at first read (in the warm-up), and what it cost
        res["packed_weights"], res["pack_s"] = int(getattr(tk, "packed", 0)), float(getattr(tk, "packed_s", 0.0))
    res["decode_med"] = float(np.median(res["decode_tok_s"]))
    res["prefill_med"] = float(np.median(res["prefill_tok_s"]))
    return res


def run_child(system: str, path: Path, threads: int, a: argparse.Namespace, vocab: int = MODEL["vocab"]) -> dict:
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads), EDGESPOOL_THREADS=str(threads))
    cmd = [sys.executable, "-m", "edgespool.benchmarks.resident_vs_llamacpp", "--child", system, "--path",
           str(path), "--threads", str(threads), "--runs", str(a.runs), "--short", str(a.short), "--decode",
           str(a.decode), "--prompt", str(a.prompt), "--vocab", str(vocab)]
    if a.profile:
        cmd += ["--profile", f"{a.profile}/{system.replace(' ', '_')}_t{threads}.json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"{system} t={threads} failed: {p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def kernel_rows(spec: dict, iters: int) -> tuple[dict, list[dict]]:
    """Cold/hot GB/s of the model's linear shapes (int8, int4; f32 and q8 activations) + measured bandwidth."""
    from edgespool.benchmarks.kernel_bench import bench, measure_bandwidth

    H, I, D = spec["hidden"], spec["inter"], spec["hidden"] // spec["heads"]
    shapes = [(H, H), (spec["kv_heads"] * D, H), (I, H), (H, I)]
    bw = measure_bandwidth(threads=len(os.sched_getaffinity(0)))
    rows = bench(shapes, ["int8", "int4"], iters, with_ort=False, with_numpy=False,
                 threads=len(os.sched_getaffinity(0)))
    return bw, [r for r in rows if "scheme" in r]


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def wait_for_quiet(max_load: float, wait_s: float) -> None:
    """Wait (up to ``wait_s``) until the 1-minute load average is below ``max_load``: other jobs on a shared
    machine distort timings, multi-threaded ones most."""
    t0 = time.monotonic()
    while max_load > 0 and os.getloadavg()[0] >= max_load and time.monotonic() - t0 < wait_s:
        time.sleep(5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rvl"))
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (same for both systems)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--short", type=int, default=8, help="prompt tokens before the decode run")
    ap.add_argument("--decode", type=int, default=64, help="tokens generated per decode run")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens of the prefill run")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--kernel-iters", type=int, default=30, help="0 skips the per-kernel table")
    ap.add_argument("--profile", help="directory for py-spy speedscope profiles of each child")
    ap.add_argument("--max-load", type=float, default=0.0,
                    help="before each system, wait until the 1-min load average is below this (0: don't wait)")
    ap.add_argument("--wait-s", type=float, default=300.0, help="longest wait for --max-load")
    ap.add_argument("--target", default="host", help="--real: the target profile edgespool exports for (e.g. "
                    "x86-avx2: its AVX2 kernels on this CPU; llama.cpp's build is set by LLAMA_CPP_LIB_PATH)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--real", help="comma-separated fetched GGUF models (e.g. qwen2.5-coder-0.5b) instead of the "
                                   "synthetic one; systems default to the real set")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, default=MODEL["vocab"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.child, a.path, int(a.threads), a.runs, a.short, a.decode, a.prompt, a.vocab,
                                a.profile)))
        return 0
    if a.profile:
        Path(a.profile).mkdir(parents=True, exist_ok=True)
    if a.real:
        return main_real(a)
    arts = prepare(a.work, MODEL)
    from edgespool.benchmarks.llamacpp_peer import decide_extra_bufts

    decide_extra_bufts(str(arts["q8_0.gguf"]))  # probed once here; the timed children inherit the answer
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor()
            or platform.machine(), "cpus": len(os.sched_getaffinity(0)), "model": MODEL,
            "weights_bytes": {k: sum(f.stat().st_size for f in Path(arts[k]).glob("weights*")) for k in
                              ("int8", "int4")},
            "gguf_bytes": {k: arts[k].stat().st_size for k in ("q8_0.gguf", "q4_0.gguf")},
            "gguf_types": {k: gguf_types(arts[k]) for k in ("q8_0.gguf", "q4_0.gguf")},
            "load_before": _load()}
    print(json.dumps(meta), file=sys.stderr)
    results = []
    for t in [int(v) for v in a.threads.split(",")]:
        for system in a.systems.split(","):
            fam, art, _ = SYSTEMS[system]
            wait_for_quiet(a.max_load, a.wait_s)
            load = _load()
            r = run_child(system, arts[art], t, a)
            r["load_before"] = load
            results.append(r)
            print(f"{system:20s} t={t}  decode {r['decode_med']:7.1f} tok/s  prefill {r['prefill_med']:7.1f} tok/s"
                  f"  (load {load})", file=sys.stderr)
    bw, krows = kernel_rows(MODEL, a.kernel_iters) if a.kernel_iters else ({}, [])
    meta["load_after"] = _load()
    print(report(meta, results, bw, krows))
    if a.json:
        a.json.write_text(json.dumps({"meta": meta, "results": results, "bandwidth": bw, "kernels": krows},
                                     indent=1))
    return 0


def main_real(a: argparse.Namespace) -> int:
    """The ``--real`` run: per model, per thread count, every system in turn, ``--runs`` rounds interleaved
    (round 1 of every system, then round 2, ...), medians over the rounds."""
    from edgespool.benchmarks.llamacpp_peer import decide_extra_bufts

    systems = [s for s in (a.systems.split(",") if a.systems != ",".join(SYSTEMS) else REAL_SYSTEMS)]
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(), "cpus": len(os.sched_getaffinity(0)),
            "runs": a.runs, "decode": a.decode, "prompt": a.prompt, "load_before": _load(), "models": {}}
    results = []
    one = argparse.Namespace(**{**vars(a), "runs": 1})
    for name in a.real.split(","):
        arts = prepare_real(a.work, name, {REAL_SYSTEMS[s][1] for s in systems}, a.target)
        decide_extra_bufts(str(arts["file.gguf"]))
        import gguf

        vocab = len(gguf.GGUFReader(str(arts["file.gguf"])).fields["tokenizer.ggml.tokens"].data)
        meta["models"][name] = {k: gguf_types(arts[k]) for k in ("file.gguf", "q8_0.gguf", "q4_0.gguf") if k in arts}
        for t in [int(v) for v in a.threads.split(",")]:
            rounds: dict[str, list[dict]] = {s: [] for s in systems}
            for _ in range(a.runs):
                for system in systems:
                    wait_for_quiet(a.max_load, a.wait_s)
                    load = _load()
                    r = run_child(system, arts[REAL_SYSTEMS[system][1]], t, one, vocab)
                    r["load_before"] = load
                    rounds[system].append(r)
                    print(f"{name} {system:16s} t={t} decode {r['decode_med']:7.1f} prefill {r['prefill_med']:7.1f}"
                          f" (load {load})", file=sys.stderr)
            for system, rs in rounds.items():
                r = dict(rs[-1])
                r["model"] = name
                r["decode_tok_s"] = [x for q in rs for x in q["decode_tok_s"]]
                r["prefill_tok_s"] = [x for q in rs for x in q["prefill_tok_s"]]
                r["decode_med"] = float(np.median(r["decode_tok_s"]))
                r["prefill_med"] = float(np.median(r["prefill_tok_s"]))
                r["load_before"] = " / ".join(q["load_before"].split()[0] for q in rs)
                results.append(r)
    meta["load_after"] = _load()
    print(report_real(meta, results))
    if a.json:
        a.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


def report_real(meta: dict, results: list[dict]) -> str:
    """Markdown table of the ``--real`` run: per model and threads, each edgespool system next to its llama.cpp
    pair, ratios from the same run."""
    out = [f"date {meta['date']}, {meta['machine']}, {meta['cpus']} CPUs, {meta['runs']} interleaved rounds, "
           f"decode {meta['decode']} tokens, prefill {meta['prompt']} tokens; load {meta['load_before']} -> "
           f"{meta['load_after']}", ""]
    for name, types in meta["models"].items():
        out.append(f"{name}: GGUF tensor types {types}")
    out += ["", "| model | threads | edgespool | decode tok/s | llama.cpp | decode tok/s | decode ratio | "
            "prefill tok/s | llama.cpp prefill | prefill ratio | greedy tokens equal | kernels |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    idx = {(r["model"], r["threads"], r["system"]): r for r in results}
    for r in results:
        if not r["system"].startswith("edgespool"):
            continue
        kind = r["system"].split()[-1]
        base = idx.get((r["model"], r["threads"], f"llama.cpp {PAIRS[kind]}"))
        if base is None:
            continue
        n = next((i for i, (u, v) in enumerate(zip(r["tokens"], base["tokens"])) if u != v), len(r["tokens"]))
        out.append(f"| {r['model']} | {r['threads']} | {kind} | {r['decode_med']:.1f} | {PAIRS[kind]} | "
                   f"{base['decode_med']:.1f} | {r['decode_med'] / base['decode_med']:.2f}x | {r['prefill_med']:.1f} | "
                   f"{base['prefill_med']:.1f} | {r['prefill_med'] / base['prefill_med']:.2f}x | "
                   f"first {n} of {len(r['tokens'])} | {r.get('kernels', '?').split(' + ')[0]} |")
    return "\n".join(out)


def report(meta: dict, results: list[dict], bw: dict, krows: list[dict]) -> str:
    """Markdown tables: end-to-end decode/prefill with ratios to llama.cpp, then per-kernel GB/s."""
    out = [f"model: dense Llama {meta['model']}, edgespool weights int8 {meta['weights_bytes']['int8'] / 1e6:.0f} MB"
           f" / int4 {meta['weights_bytes']['int4'] / 1e6:.0f} MB; GGUF Q8_0 "
           f"{meta['gguf_bytes']['q8_0.gguf'] / 1e6:.0f} MB {meta['gguf_types']['q8_0.gguf']} / Q4_0 "
           f"{meta['gguf_bytes']['q4_0.gguf'] / 1e6:.0f} MB {meta['gguf_types']['q4_0.gguf']}",
           f"date {meta['date']}, {meta['machine']}, {meta['cpus']} CPUs, load {meta['load_before']} -> "
           f"{meta['load_after']}", "",
           "| threads | system | activations | decode tok/s (median) | vs llama.cpp | prefill tok/s (median) | "
           "vs llama.cpp | greedy tokens equal to llama.cpp's (same model check) | load |",
           "|---|---|---|---|---|---|---|---|---|"]
    ref = {(r["threads"], r["system"].split()[-1]): r for r in results if r["system"].startswith("llama")}
    for r in results:
        q = {"int8": "Q8_0", "int4": "Q4_0"}.get(r["system"].split()[1], r["system"].split()[-1])
        base = ref.get((r["threads"], q))
        rd = f"{r['decode_med'] / base['decode_med']:.2f}x" if base and base is not r else "-"
        rp = f"{r['prefill_med'] / base['prefill_med']:.2f}x" if base and base is not r else "-"
        same = "-"
        if base and base is not r:  # random weights: near-tied logits diverge after a while, the start must agree
            n = next((i for i, (u, v) in enumerate(zip(r["tokens"], base["tokens"])) if u != v), len(r["tokens"]))
            same = f"first {n} of {len(r['tokens'])}"
        out.append(f"| {r['threads']} | {r['system']} | {r['act']} | {r['decode_med']:.1f} | {rd} | "
                   f"{r['prefill_med']:.1f} | {rp} | {same} | {r['load_before']} |")
    if krows:
        peak = max(v for k, v in bw.items() if k.startswith("read_"))
        out += ["", f"read bandwidth: {bw}", "",
                "| kernel | shape | MB | f32-act hot / cold ms | cold GB/s (% of read bw) | q8-act hot / cold ms | "
                "q8 cold GB/s (%) |", "|---|---|---|---|---|---|---|"]
        for k in krows:
            q8 = (f"{k['tvm_q8_hot_ms']:.3f} / {k['tvm_q8_cold_ms']:.3f} | {k['tvm_q8_cold_GBps']} "
                  f"({100 * k['tvm_q8_cold_GBps'] / peak:.0f}%)") if "tvm_q8_cold_ms" in k else "- | -"
            out.append(f"| {k['scheme']} gemv | {k['shape'][0]}x{k['shape'][1]} | {k['weight_bytes'] / 1e6:.2f} | "
                       f"{k['tvm_hot_ms']:.3f} / {k['tvm_cold_ms']:.3f} | {k['tvm_cold_GBps']} "
                       f"({100 * k['tvm_cold_GBps'] / peak:.0f}%) | {q8} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
