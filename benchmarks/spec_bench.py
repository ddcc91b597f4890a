"""Speculative decoding benchmark (issue 16): a real model streamed under a budget, with and without drafting.

Qwen2.5-Coder-1.5B-Instruct (a --quant keep bundle of the GGUF) streamed at 1/k of its weights in the emulated rig
(``apps/rig``: memory cgroup = budget + the family's process baseline, page cache included; blkio read throttle of
the profile's storage; its cores), each system in its own process, greedy, ``-n`` tokens after a prompt rendered
with the model's chat template:

  edgespool-stream        no speculation (the one-token-per-pass storage bound applies)
  edgespool-ngram         prompt-lookup drafting (no second model), up to --draft-tokens per pass, adaptive
  edgespool-draft         Qwen2.5-Coder-0.5B-Instruct as the draft, its bundle streamed under its share of the SAME
                          budget (the target's plan reserves it)
  llama-mmap              llama.cpp (llama-cpp-python) on the GGUF, default mmap, same limit
  llama-lookup            llama.cpp with ``draft_model=LlamaPromptLookupDecoding`` (its only draft API: a second
                          model as the draft is not offered by llama-cpp-python's high-level API)
  edgespool-resident(-ngram|-draft|-self)   no budget, no memory limit: resident decode with/without speculation
                          (-self: the target's first quarter of layers + its head as the draft)

Prompts: "code" (a code-editing request quoting a function: the reply repeats much of it) and "chat" (a question).
Reported per run: decode tok/s, acceptance rate, tokens per target pass, bytes read per generated token
(/proc/self/io), and tok/s as a multiple of the one-token-per-pass storage bound of the SAME budget
(edgespool's plan without drafting: its streamed bytes per token / the rig's cold read bandwidth).

    python benchmarks/spec_bench.py --work /tmp/h16/sb --out /tmp/h16/sb/spec.md

Reuses stream_bench's rig measurement (cold bandwidth, process baselines), its /proc/self/io counter and the
llama.cpp peer loader. Needs root cgroups; llama-cpp-python for the llama rows (skipped with a note without it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
ASSETS = Path(os.environ.get("EDGESPOOL_ASSETS", Path.home() / ".cache/edgespool/assets"))
TARGET_GGUF = ASSETS / "qwen2.5-coder-1.5b/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"
DRAFT_GGUF = ASSETS / "qwen2.5-coder-0.5b/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
PROMPTS = {
    "code": "Add type hints and a docstring to this Python function and return the whole function:\n\n```python\n"
            "def merge_sorted(a, b):\n    i, j = 0, 0\n    out = []\n    while i < len(a) and j < len(b):\n"
            "        if a[i] <= b[j]:\n            out.append(a[i])\n            i += 1\n        else:\n"
            "            out.append(b[j])\n            j += 1\n    out.extend(a[i:])\n    out.extend(b[j:])\n"
            "    return out\n```",
    "chat": "Explain in a few sentences what a hash table is and when to use one.",
}
SYSTEMS = "edgespool-stream,edgespool-ngram,edgespool-draft,llama-mmap,llama-lookup"


def _timed_stream(stream, res: dict, out: str, r0: int) -> None:
    """Consume ``stream`` (one item per generated token), timing TTFT and decode and counting the bytes read
    during decode into ``res``; the partial result is written to ``out`` after every token (a run killed by its
    memory limit still leaves its figures)."""
    from edgespool.benchmarks.stream_bench import _io_read_bytes

    t0, first, n, r1 = time.perf_counter(), None, 0, None
    for _ in stream:
        n += 1
        if first is None:
            first, r1 = time.perf_counter(), _io_read_bytes()
        res.update(decode_tokens=n - 1, decode_s=time.perf_counter() - first, partial=True,
                   decode_read_bytes=_io_read_bytes() - r1)
        Path(out).write_text(json.dumps(res))
    t_end = time.perf_counter()
    res.update(ttft_s=(first or t_end) - t0, decode_s=t_end - (first or t_end), decode_tokens=max(0, n - 1),
               partial=False, decode_read_bytes=_io_read_bytes() - (r1 or r0))


def child(kind: str, bundle: str, out: str, N: int, budget: int, ids_file: str, k: int, draft: str) -> None:
    """One system in the rig: load, prefill the prompt ids, decode greedily; write its figures as JSON."""
    from edgespool.benchmarks.stream_bench import _io_read_bytes
    from edgespool.units import peak_rss_bytes

    ids = json.loads(Path(ids_file).read_text())
    res: dict = {"system": kind}
    if kind == "base-api":  # process baseline of load(): imports + manifest + tokenizer, no weights
        import edgespool.offload.streaming_source  # noqa: F401
        import edgespool.runtime.api  # noqa: F401
        from edgespool.runtime.bundle.reader import Bundle
        from edgespool.runtime.decoder.tokenizer import BundleTokenizer

        b = Bundle(bundle)
        BundleTokenizer.from_manifest(b.path, b.manifest["tokenizer"]).encode("def f(x): return x")
        res["vm_hwm"] = peak_rss_bytes()
        Path(out).write_text(json.dumps(res))
        return
    r0 = _io_read_bytes()
    if kind.startswith("llama"):
        from edgespool.benchmarks.llamacpp_peer import open_llama

        kw = {}
        if kind == "llama-lookup":
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

            kw["draft_model"] = LlamaPromptLookupDecoding(num_pred_tokens=k)
        llm, res["llamacpp_config"] = open_llama(bundle, n_ctx=len(ids) + N + 16, verbose=False,
                                                 n_threads=len(os.sched_getaffinity(0)), n_batch=len(ids), **kw)
        _timed_stream(llm.create_completion(ids, max_tokens=N, temperature=0.0, top_k=1, stream=True), res, out, r0)
    else:
        from edgespool.runtime.api import load

        opts: dict = {}
        if budget:
            opts.update(memory_budget=budget, max_context=len(ids) + N + 40)
        if kind.endswith("-ngram"):
            opts.update(draft="ngram", draft_tokens=k)
        elif kind.endswith("-draft"):
            opts.update(draft=draft, draft_tokens=k)
        elif kind.endswith("-self"):  # the target's first quarter of layers + head (resident only)
            opts.update(draft="self", draft_tokens=k)
        m = load(bundle, **opts)
        plan = getattr(m.source, "plan", None)
        if plan is not None:
            res["plan_streamed_bytes_per_token"] = plan.streamed_bytes_per_token
            res["plan_reserved_bytes"] = plan.reserved_bytes
        if m.draft is not None and m.draft.plan is not None:
            res["draft_plan_streamed_bytes_per_token"] = m.draft.plan.streamed_bytes_per_token
        if hasattr(m.source, "load_all"):
            m.source.load_all()
        if m.draft is not None:
            m.draft.preload()
        _timed_stream(m.generate_ids(ids, N, stop=[]), res, out, r0)
        res.update(speculative=m.stats.speculative, kernels=m.kernels.description)
        m.close()
    res["decode_tok_s"] = res["decode_tokens"] / res["decode_s"] if res.get("decode_s") else 0.0
    res["bytes_read_per_token"] = res["decode_read_bytes"] / max(1, res["decode_tokens"])
    res["vm_hwm"] = peak_rss_bytes()
    Path(out).write_text(json.dumps(res))


def run(kind: str, path: Path, budget: int, profile: str, N: int, work: Path, mem_limit: int | None, ids: Path,
        k: int, draft: Path, tag: str, timeout: float) -> dict:
    """``kind`` as a child process in the rig (``mem_limit`` None: no memory limit); a run cut by ``timeout``
    reports the tokens it finished (partial)."""
    from dataclasses import replace

    from edgespool.apps.rig.limits import resolve_limits
    from edgespool.apps.rig.runner import run_in_rig
    from edgespool.targets import get_target

    out = work / f"res-{kind}{tag}.json"
    out.unlink(missing_ok=True)
    name, _, medium = profile.partition(":")
    limits = resolve_limits(get_target(name), storage=medium or None, memory=str(mem_limit) if mem_limit else None)
    if mem_limit is None:
        limits = replace(limits, memory=None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", kind, str(path), str(out), str(N), str(budget),
           str(ids), str(k), str(draft)]
    paths = [str(path)] + ([str(draft)] if "draft" in kind else [])
    rep = run_in_rig(cmd, limits, device_paths=paths, evict_paths=paths, timeout=timeout)
    res = json.loads(out.read_text()) if out.exists() else {"system": kind, "failed": True}
    res.update(exit_code=rep.exit_code, oom_kills=rep.oom_kills, peak_cgroup=rep.peak_memory, rig_wall_s=rep.wall_s)
    if res.get("decode_s"):
        res["decode_tok_s"] = res["decode_tokens"] / res["decode_s"]
        res["bytes_read_per_token"] = res.get("decode_read_bytes", 0) / max(1, res["decode_tokens"])
    return res


def export_keep(gguf: Path, work: Path) -> Path:
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model, open_source

    bundle = work / f"{gguf.stem}-keep.bundle"
    if not (bundle / "manifest.json").exists():
        export_model(open_source(gguf), bundle, policy=QuantPolicy(quant="keep"), overwrite=True, onnx=False,
                     kernels=True, progress=False)
    return bundle


def main() -> None:
    from edgespool.benchmarks.stream_bench import TINY, _cpu_name, machine_load, make_gguf, measure_rig, write_hf
    from edgespool.runtime.api import load

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/esspec")
    ap.add_argument("--profile", default="rpi5")
    ap.add_argument("--out", default=None)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--draft-tokens", type=int, default=4)
    ap.add_argument("--budgets", default="4,8", help="fractions 1/k of the target's weights")
    ap.add_argument("--prompts", default="code,chat")
    ap.add_argument("--systems", default=SYSTEMS)
    ap.add_argument("--resident", default="edgespool-resident,edgespool-resident-ngram,edgespool-resident-draft,"
                                          "edgespool-resident-self")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per run (a cut run reports its partial rate)")
    ap.add_argument("--target-bundle", default=None)
    ap.add_argument("--draft-bundle", default=None)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "tests"))
    tb = Path(args.target_bundle) if args.target_bundle else export_keep(TARGET_GGUF, work)
    db = Path(args.draft_bundle) if args.draft_bundle else export_keep(DRAFT_GGUF, work)
    tiny_gguf = make_gguf(write_hf(work / "hf-tiny", TINY), work / "hf-tiny-int8.gguf", "int8")
    try:
        import llama_cpp  # noqa: F401
        from edgespool.benchmarks.llamacpp_peer import decide_extra_bufts

        have_llama = True
        decide_extra_bufts(str(tiny_gguf))
    except ImportError:
        have_llama = False
    meta = {"profile": args.profile, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "load_before": machine_load(),
            "n": args.n, "cpu": _cpu_name(), "draft_tokens": args.draft_tokens, "llama_cpp": have_llama}
    rows: list[dict] = []
    baselines: dict = {}
    ids_files = {}
    with load(tb) as m:
        for p in args.prompts.split(","):
            f = work / f"ids-{p}.json"
            f.write_text(json.dumps([int(i) for i in m.chat_ids([{"role": "user", "content": PROMPTS[p]}])]))
            ids_files[p] = f
    storage = measure_rig(tb, tiny_gguf, args.profile, 16, args.n, work, meta, baselines)
    # edgespool's children go through load() (tokenizer included): their baseline is the larger of stream_bench's
    # and a no-weights load() child's, measured the same way (max of cgroup peak and VmHWM)
    r = run("base-api", tb, 0, args.profile, 1, work, None, ids_files[args.prompts.split(",")[0]], 1, db, "", 120)
    api_base = max(r.get("peak_cgroup") or 0, r.get("vm_hwm") or 0)
    baselines["edgespool"]["baseline"] = max(baselines["edgespool"]["baseline"], api_base)
    meta["baselines"] = {k: v["baseline"] for k, v in baselines.items()}
    print("baseline edgespool load():", api_base, flush=True)
    bw = storage.get("bandwidth")
    size = tb.joinpath("weights.bin").stat().st_size
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.schedulers.memory_plan import minimum_budget

    for frac in (int(x) for x in args.budgets.split(",") if x):
        for p in args.prompts.split(","):
            P = len(json.loads(ids_files[p].read_text()))
            budget = max(size // frac, minimum_budget(Bundle(tb), None, max_context=P + args.n + 40))
            bound = None
            for kind in args.systems.split(","):
                fam = "llama" if kind.startswith("llama") else "edgespool"
                if fam == "llama" and not have_llama:
                    rows.append({"system": kind, "fraction": frac, "prompt": p, "skipped": "llama-cpp-python missing"})
                    continue
                path = TARGET_GGUF if fam == "llama" else tb
                r = run(kind, path, budget, args.profile, args.n, work, budget + baselines[fam]["baseline"],
                        ids_files[p], args.draft_tokens, db, f"-{frac}-{p}", args.timeout)
                r.update(fraction=frac, prompt=p, budget=budget, prompt_tokens=P)
                if kind == "edgespool-stream" and bw and r.get("plan_streamed_bytes_per_token"):
                    bound = bw / r["plan_streamed_bytes_per_token"]
                if bound and r.get("decode_tok_s"):
                    r["bound_tok_s"], r["x_bound"] = bound, r["decode_tok_s"] / bound
                print(json.dumps(r), flush=True)
                rows.append(r)
                (work / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    for p in args.prompts.split(","):
        for kind in [s for s in args.resident.split(",") if s]:
            r = run(kind, tb, 0, args.profile, args.n, work, None, ids_files[p], args.draft_tokens, db,
                    f"-res-{p}", args.timeout)
            r.update(fraction=0, prompt=p)
            print(json.dumps(r), flush=True)
            rows.append(r)
    meta["load_after"] = machine_load()
    (work / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = table(rows, meta)
    print(md)
    if args.out:
        Path(args.out).write_text(md)


def table(rows: list[dict], meta: dict) -> str:
    """The markdown table of the runs (ratios against edgespool without speculation of the same budget/prompt)."""
    st = meta.get("storage") or {}
    out = [f"rig {meta['profile']}, {meta['date']}, {meta['cpu']}; cold read bandwidth "
           f"{(st.get('bandwidth') or 0) / 1e6:.0f} MB/s; {meta['n']} tokens greedy, draft tokens <= "
           f"{meta['draft_tokens']} (adaptive); load {meta.get('load_before')}", "",
           "| budget | prompt | system | tok/s | x no-spec | x bound | acceptance | tokens/pass | MB read/token | "
           "peak cgroup | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r.get("fraction"), r.get("prompt")): r.get("decode_tok_s") for r in rows
            if r.get("system") in ("edgespool-stream", "edgespool-resident")}
    for r in rows:
        sp = r.get("speculative") or {}
        b = base.get((r.get("fraction"), r.get("prompt")))
        note = r.get("skipped") or ("partial (time limit)" if r.get("partial") else "") \
            or ("OOM-killed" if r.get("oom_kills") else "") or ("failed" if r.get("failed") else "")
        tps = r.get("decode_tok_s")
        out.append("| " + " | ".join([
            f"1/{r['fraction']}" if r.get("fraction") else "resident", str(r.get("prompt")), r["system"],
            f"{tps:.2f}" if tps else "-", f"{tps / b:.2f}" if tps and b else "-",
            f"{r['x_bound']:.2f}" if r.get("x_bound") else "-",
            f"{sp['acceptance_rate']:.0%}" if sp.get("drafted") else "-",
            f"{sp['tokens_per_pass']:.2f}" if sp else "-",
            f"{r['bytes_read_per_token'] / 1e6:.0f}" if r.get("bytes_read_per_token") else "-",
            f"{(r.get('peak_cgroup') or 0) / MiB:.0f} MiB" if r.get("peak_cgroup") else "-", note]) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        a = sys.argv[2:]
        child(a[0], a[1], a[2], int(a[3]), int(a[4]), a[5], int(a[6]), a[7])
    else:
        main()
