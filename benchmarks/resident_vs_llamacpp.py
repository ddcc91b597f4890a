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

Per-kernel achieved GB/s for the model's linear shapes (cold: weights rotate through >= 3x L3) against the read
bandwidth measured in the same run come from :mod:`edgespool.benchmarks.kernel_bench`.

    python -m edgespool.benchmarks.resident_vs_llamacpp --work /tmp/rvl --threads 1,2 --json out.json

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


# -- artefacts ------------------------------------------------------------------------------------------------------
def prepare(work: Path, spec: dict) -> dict[str, Path]:
    """HF checkpoint, edgespool int8/int4 bundles (kernels f32 + q8) and llama.cpp Q8_0/Q4_0 GGUFs under ``work``
    (each made once; delete the directory to rebuild)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from edgespool.benchmarks.stream_bench import write_hf
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model, open_source
    import gguf_tools

    work.mkdir(parents=True, exist_ok=True)
    hf = write_hf(work / "hf", spec)
    out: dict[str, Path] = {"hf": hf}
    for q in ("int8", "int4"):
        b = work / f"bundle_{q}"
        if not (b / "manifest.json").exists():
            t0 = time.perf_counter()
            src = open_source(hf)
            try:
                export_model(src, b, policy=QuantPolicy(quant=q, group_size=32), overwrite=True, onnx=False,
                             kernels=True, progress=False, kernel_activations="q8")
            finally:
                src.close()
            print(f"exported {b} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        out[q] = b
    f16 = work / "f16.gguf"
    if not f16.exists():
        gguf_tools.convert(hf, f16, "f16")
    for ft in ("q8_0", "q4_0"):
        g = work / f"{ft}.gguf"
        if not g.exists():
            gguf_tools.quantize(f16, g, ft)
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
    family, _, act = SYSTEMS[system]
    rng = np.random.default_rng(1234)
    short_ids = [1] + rng.integers(3, vocab, short - 1).tolist()
    prompt_ids = [1] + rng.integers(3, vocab, prompt - 1).tolist()
    res: dict = {"system": system, "threads": threads, "act": act, "decode_tok_s": [], "prefill_tok_s": []}
    if family == "llama":
        import llama_cpp

        from edgespool.benchmarks.llamacpp_peer import open_llama

        llm, res["llamacpp_config"] = open_llama(path, n_ctx=max(short + decode, prompt) + 8, n_batch=512,
                              n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)
        n_vocab = llm.n_vocab()

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
    res["decode_med"] = float(np.median(res["decode_tok_s"]))
    res["prefill_med"] = float(np.median(res["prefill_tok_s"]))
    return res


def run_child(system: str, path: Path, threads: int, a: argparse.Namespace) -> dict:
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "edgespool.benchmarks.resident_vs_llamacpp", "--child", system, "--path",
           str(path), "--threads", str(threads), "--runs", str(a.runs), "--short", str(a.short), "--decode",
           str(a.decode), "--prompt", str(a.prompt), "--vocab", str(MODEL["vocab"])]
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
    ap.add_argument("--json", type=Path)
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
