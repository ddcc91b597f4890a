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
  llama-server-draft      llama.cpp's own llama-server with the 0.5B GGUF as its draft (``-md``, ``--spec-type
                          draft-simple``, ``--spec-draft-n-max`` = --draft-tokens), its other settings its defaults;
                          started inside the rig by the child, so the same memory limit holds both models
  llama-server-draft-norepack   the same with ``--no-repack``: on x86 llama.cpp by default copies the weights into
                          repacked anonymous buffers (both models in RAM: OOM-killed at load under these limits);
                          without it they stay in the page cache (its best configuration under a limit)
  llama-server-ngram      llama-server's n-gram drafting (``--spec-type ngram-simple``, its defaults: 12-token
                          lookup, 48-token drafts), no second model; -ngramk: ngram-simple with a 3-token lookup
                          and k-token drafts (edgespool's lookup shape); -ngram-map-k: ``--spec-type ngram-map-k``;
                          each with -norepack as above
  llama-server-plain(-norepack)   llama-server without speculation (its plain decode under the limit)
  llama-server-draft-head4(-norepack)   llama-server with the 0.5B GGUF whose Q8_0 output head llama-quantize
                          re-quantized to Q4_0, the rest copied (spec_server.head4_gguf): llama.cpp's counterpart
                          of edgespool-draft-head4
  edgespool-draft-head4   the same 0.5B draft with its Q8_0 output head re-quantized to int4 g32 (the head is
                          read in full every draft pass)
  edgespool-resident(-ngram|-draft|-draft-head4|-self)   no budget, no memory limit: resident decode with/without speculation
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

from edgespool.benchmarks.spec_server import server_spec_args  # noqa: F401 - spec_bench's llama-server systems

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


def save_json(out: str | Path, res: dict) -> None:
    """Write ``res`` to ``out`` atomically (a temporary file renamed over it): a child killed by its time or memory
    limit mid-write leaves the previous complete figures, never a truncated file."""
    tmp = Path(f"{out}.tmp")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, out)


def per_pass(sp: dict | None) -> dict:
    """Per target pass figures of a speculative run's counters (``SpecStats.to_dict()``): draft seconds, verify
    seconds, tokens emitted, drafted tokens; empty when there were no passes (or the peer gives no split)."""
    n = (sp or {}).get("passes") or 0
    if not n or "draft_s" not in sp:
        return {}
    return {"draft_s_per_pass": sp["draft_s"] / n, "verify_s_per_pass": sp["verify_s"] / n,
            "tokens_per_pass": sp["emitted"] / n, "drafted_per_pass": sp["drafted"] / n,
            "draft_share": sp["draft_s"] / max(1e-12, sp["draft_s"] + sp["verify_s"])}


def _timed_stream(stream, res: dict, out: str, r0: int, spec=None) -> None:
    """Consume ``stream`` (one item per generated token), timing TTFT and decode and counting the bytes read
    during decode into ``res``; the partial result is written to ``out`` after every token (a run killed by its
    memory limit still leaves its figures). ``spec``: a callable returning the live speculative counters (so a run
    cut by the time limit still reports acceptance and the per-pass split of the passes it finished)."""
    from edgespool.benchmarks.stream_bench import _io_read_bytes

    t0, first, n, r1 = time.perf_counter(), None, 0, None
    for _ in stream:
        n += 1
        if first is None:
            first, r1 = time.perf_counter(), _io_read_bytes()
        res.update(decode_tokens=n - 1, decode_s=time.perf_counter() - first, partial=True,
                   decode_read_bytes=_io_read_bytes() - r1)
        if spec is not None and (sp := spec()):
            res.update(speculative=sp, per_pass=per_pass(sp))
        save_json(out, res)
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
        save_json(out, res)
        return
    r0 = _io_read_bytes()
    if kind.startswith("llama-server"):
        from edgespool.benchmarks.spec_server import server_child
        from edgespool.runtime.decoder.speculative import default_draft_tokens

        server_child(kind, bundle, out, N, ids, k or default_draft_tokens(bool(budget)), draft, res)
        return
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
        kk = k or None  # k = 0: --draft-tokens not given (speculative.default_draft_tokens, adaptive below it)
        if kind.endswith("-ngram"):
            opts.update(draft="ngram", draft_tokens=kk)
        elif kind.endswith("-draft") or kind.endswith("-draft-head4"):
            opts.update(draft=draft, draft_tokens=kk)
        elif kind.endswith("-self"):  # the target's first quarter of layers + head (resident only)
            opts.update(draft="self", draft_tokens=kk)
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
        dec = m.speculative
        if dec is not None:
            res["draft_tokens_max"] = dec.draft_tokens
        _timed_stream(m.generate_ids(ids, N, stop=[]), res, out, r0,
                      spec=(lambda: dec.stats.to_dict()) if dec is not None else None)
        res.update(speculative=m.stats.speculative, kernels=m.kernels.description)
        res["per_pass"] = per_pass(m.stats.speculative)
        m.close()
    res["decode_tok_s"] = res["decode_tokens"] / res["decode_s"] if res.get("decode_s") else 0.0
    res["bytes_read_per_token"] = res["decode_read_bytes"] / max(1, res["decode_tokens"])
    res["vm_hwm"] = peak_rss_bytes()
    save_json(out, res)


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
    try:
        res = json.loads(out.read_text())
    except (OSError, ValueError):  # no figures (killed before its first token) or an unreadable file
        res = {"system": kind, "failed": True}
    res.update(exit_code=rep.exit_code, oom_kills=rep.oom_kills, peak_cgroup=rep.peak_memory, rig_wall_s=rep.wall_s)
    if res.get("decode_s"):
        res["decode_tok_s"] = res["decode_tokens"] / res["decode_s"]
        rb = res.get("decode_read_bytes", 0)
        if res.get("partial") and "server_decode_read_bytes" in res:  # llama-server cut: its reads so far
            rb = res["server_decode_read_bytes"]
        res["bytes_read_per_token"] = rb / max(1, res["decode_tokens"])
    return res


def export_keep(gguf: Path, work: Path, head_bits: int | None = None) -> Path:
    """A ``--quant keep`` bundle of ``gguf`` under ``work`` (reused when there); ``head_bits``: its output head
    re-quantized to that width (the draft's head is read every draft pass: int4 g32 halves the 0.5B's Q8_0 head)."""
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model, open_source

    bundle = work / f"{gguf.stem}-keep{f'-head{head_bits}' if head_bits else ''}.bundle"
    if not (bundle / "manifest.json").exists():
        export_model(open_source(gguf), bundle, policy=QuantPolicy(quant="keep", head_bits=head_bits),
                     overwrite=True, onnx=False, kernels=True, progress=False)
    return bundle


def main() -> None:
    from edgespool.benchmarks.stream_bench import (
        TINY,
        _cpu_name,
        machine_load,
        make_gguf,
        measure_rig,
        write_hf,
    )
    from edgespool.runtime.api import load

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/esspec")
    ap.add_argument("--profile", default="rpi5")
    ap.add_argument("--out", default=None)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--draft-tokens", default="4", help="k, or k1,k2,...: each drafting system runs at each k "
                    "(interleaved with the others); 'auto': --draft-tokens not given (edgespool's default cap, "
                    "adaptive below it; llama-server gets the same cap)")
    ap.add_argument("--budgets", default="4,8", help="fractions 1/k of the target's weights")
    ap.add_argument("--prompts", default="code,chat")
    ap.add_argument("--systems", default=SYSTEMS, help="comma-separated; SYSTEM:K runs that system at k = K only")
    ap.add_argument("--resident", default="edgespool-resident,edgespool-resident-ngram,edgespool-resident-draft,"
                                          "edgespool-resident-self")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per run (a cut run reports its partial rate)")
    ap.add_argument("--timeouts", default="", help="per-system overrides of --timeout: SYSTEM=SECONDS,...")
    ap.add_argument("--target-bundle", default=None)
    ap.add_argument("--draft-bundle", default=None)
    ap.add_argument("--rounds", type=int, default=1, help="repeat the budgeted systems, interleaved; medians")
    ap.add_argument("--llama-server", default=None, help="llama-server binary (else found/built under --work)")
    ap.add_argument("--llama-quantize", default=None, help="llama-quantize binary for llama-server-draft-head4's "
                    "Q4_0-head draft GGUF (default: next to the llama-server binary)")
    ap.add_argument("--rig-from", default=None, help="a results.json of an earlier run on this machine: reuse its "
                    "rig measurement (cold bandwidth, process baselines) instead of measuring again")
    ap.add_argument("--results", default="results.json", help="results file name under --work (a split run: one "
                    "name per invocation sharing the work dir's bundles; merge them with `table`)")
    args = ap.parse_args()
    ks = [0 if x == "auto" else int(x) for x in str(args.draft_tokens).split(",") if x]
    tmo = {k: float(v) for k, _, v in (x.partition("=") for x in args.timeouts.split(",") if x)}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "tests"))
    tb = Path(args.target_bundle) if args.target_bundle else export_keep(TARGET_GGUF, work)
    db = Path(args.draft_bundle) if args.draft_bundle else export_keep(DRAFT_GGUF, work)
    systems = [x.partition(":")[0] for x in args.systems.split(",") + args.resident.split(",")]

    def draft_of(kind: str) -> Path:  # the draft bundle of an edgespool system (-head4: the int4-head variant)
        return export_keep(DRAFT_GGUF, work, head_bits=4) if kind.endswith("-head4") else db

    if any(s.endswith("-head4") for s in systems):
        draft_of("x-head4")
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
    if args.rig_from:  # the rig measured earlier on this machine (same bundles)
        prev = json.loads(Path(args.rig_from).read_text())["meta"]
        storage = meta["storage"] = prev["storage"]
        baselines.update({k: {"baseline": v} for k, v in prev["baselines"].items()})
        meta["baselines"], meta["rig_from"] = dict(prev["baselines"]), args.rig_from
    else:
        storage = measure_rig(tb, tiny_gguf, args.profile, 16, args.n, work, meta, baselines)
        # edgespool's children go through load() (tokenizer included): their baseline is the larger of
        # stream_bench's and a no-weights load() child's, measured the same way (max of cgroup peak and VmHWM)
        r = run("base-api", tb, 0, args.profile, 1, work, None, ids_files[args.prompts.split(",")[0]], 1, db, "",
                120)
        api_base = max(r.get("peak_cgroup") or 0, r.get("vm_hwm") or 0)
        baselines["edgespool"]["baseline"] = max(baselines["edgespool"]["baseline"], api_base)
        meta["baselines"] = {k: v["baseline"] for k, v in baselines.items()}
        print("baseline edgespool load():", api_base, flush=True)
    bw = storage.get("bandwidth")
    size = tb.joinpath("weights.bin").stat().st_size
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.schedulers.memory_plan import minimum_budget

    if any(s.startswith("llama-server") for s in args.systems.split(",") + args.resident.split(",")):
        from edgespool.benchmarks.serve_bench import llama_server_binary

        os.environ["LLAMA_SERVER"] = str(llama_server_binary(work, args.llama_server))
        meta["llama_server"] = os.environ["LLAMA_SERVER"]
    llama_draft = {"": DRAFT_GGUF}
    if any(s.startswith("llama-server") and "-head4" in s for s in systems):
        from edgespool.benchmarks.spec_server import head4_gguf

        qb = Path(args.llama_quantize or Path(os.environ["LLAMA_SERVER"]).parent / "llama-quantize")
        llama_draft["-head4"] = head4_gguf(DRAFT_GGUF, work, qb)
        meta["llama_draft_head4"] = str(llama_draft["-head4"])
    for rnd, frac in ((r, int(x)) for r in range(args.rounds) for x in args.budgets.split(",") if x):
        for p in args.prompts.split(","):
            P = len(json.loads(ids_files[p].read_text()))
            budget = max(size // frac, minimum_budget(Bundle(tb), None, max_context=P + args.n + 40))
            bound = bw / plan_bytes_per_token(tb, budget, P + args.n + 40) if bw else None
            for kind, k in run_list(args.systems, ks):
                fam = "llama" if kind.startswith("llama") else "edgespool"
                if fam == "llama" and not have_llama:
                    rows.append({"system": kind, "fraction": frac, "prompt": p, "skipped": "llama-cpp-python missing"})
                    continue
                path = TARGET_GGUF if fam == "llama" else tb
                # llama-server-*: the client (this script's child) + the server share the cgroup: they get the
                # larger of the two families' baselines (edgespool load()'s), never less room than edgespool
                base = max(v["baseline"] for v in baselines.values()) if kind.startswith("llama-server") \
                    else baselines[fam]["baseline"]
                dpath = llama_draft["-head4" if "-head4" in kind else ""] if fam == "llama" else draft_of(kind)
                r = run(kind, path, budget, args.profile, args.n, work, budget + base, ids_files[p], k, dpath, f"-{frac}-{p}-{rnd}-k{k}",
                        tmo.get(kind, args.timeout))
                r.update(fraction=frac, prompt=p, budget=budget, prompt_tokens=P, round=rnd, draft_tokens=k)
                if bound and r.get("decode_tok_s"):
                    r["bound_tok_s"], r["x_bound"] = bound, r["decode_tok_s"] / bound
                print(json.dumps(r), flush=True)
                rows.append(r)
                (work / args.results).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    for p in args.prompts.split(","):
        res_kinds = [s for s in args.resident.split(",") if s]
        for i, (kind, k) in enumerate((s, k) for k in ks for s in res_kinds if k == ks[0] or drafts(s)):
            llama = kind.startswith("llama")
            r = run(kind, TARGET_GGUF if llama else tb, 0, args.profile, args.n, work, None, ids_files[p],
                    k, DRAFT_GGUF if llama else draft_of(kind), f"-res-{p}-k{k}-{i}", args.timeout)
            r.update(fraction=0, prompt=p, draft_tokens=k)
            print(json.dumps(r), flush=True)
            rows.append(r)
    meta["load_after"] = machine_load()
    (work / args.results).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = table(rows, meta)
    print(md)
    if args.out:
        Path(args.out).write_text(md)


def run_list(systems: str, ks: list[int]) -> list[tuple[str, int]]:
    """(system, k) runs of ``--systems`` at the ``--draft-tokens`` values ``ks`` (0 = auto), k-major (every system
    at the first k, then the drafting ones at the next k...); an entry ``SYSTEM:K`` (K an integer or ``auto``)
    runs once, at that k, in its place among the first k's runs."""
    out = []
    for i, k in enumerate(ks):
        for s in (x for x in systems.split(",") if x):
            name, sep, kk = s.partition(":")
            if sep:
                if i == 0:
                    out.append((name, 0 if kk == "auto" else int(kk)))
            elif i == 0 or drafts(name):
                out.append((name, k))
    return out


def plan_bytes_per_token(bundle: Path, budget: int, max_context: int) -> int:
    """Streamed bytes per token of ``bundle``'s plan under ``budget`` without drafting (what edgespool-stream's
    child plans: host profile, the bundle's kernels, ``max_context``): the one-token-per-pass storage bound of the
    budget is the rig's cold bandwidth over it."""
    from edgespool.runtime.api import resolve_kernels
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.schedulers.memory_plan import plan_memory
    from edgespool.targets import get_target

    b = Bundle(bundle)
    return plan_memory(b, get_target("host"), budget, kernels=resolve_kernels(b, True, None),
                       max_context=max_context).streamed_bytes_per_token


def drafts(kind: str) -> bool:
    """Whether system ``kind`` drafts (its figures depend on --draft-tokens)."""
    return kind not in ("edgespool-stream", "edgespool-resident", "llama-mmap") and \
        kind.removesuffix("-norepack") not in ("llama-server-plain", "llama-server-ngram", "llama-server-ngram-map-k")


def rebound(rows: list[dict], meta: dict, bandwidth: float) -> None:
    """Recompute each row's one-token-per-pass bound and x bound at storage ``bandwidth`` (bytes/s) instead of the
    rig's cold-read measurement in ``meta`` (e.g. the profile's throttle rate, when the measurement ran under load
    and read below it); the plan's bytes per token are recovered as measured bandwidth / the row's bound."""
    bw0 = (meta.get("storage") or {}).get("bandwidth")
    meta["bound_bandwidth"] = bandwidth
    for r in rows:
        if bw0 and r.get("bound_tok_s"):
            r["bound_tok_s"] = bandwidth / (bw0 / r["bound_tok_s"])
            if r.get("decode_tok_s"):
                r["x_bound"] = r["decode_tok_s"] / r["bound_tok_s"]


def k_label(r: dict, meta: dict) -> str:
    """The k column: the --draft-tokens of the run, ``auto (<=N)`` when it was not given (N: the cap it got)."""
    k = r.get("draft_tokens", meta["draft_tokens"])
    if k == 0:
        return f"auto (<={r['draft_tokens_max']})" if r.get("draft_tokens_max") else "auto"
    return str(k)


def table(rows: list[dict], meta: dict) -> str:
    """The markdown table of the runs (ratios against edgespool without speculation of the same budget/prompt)."""
    st = meta.get("storage") or {}
    out = [f"rig {meta['profile']}, {meta['date']}, {meta['cpu']}; cold read bandwidth "
           f"{(st.get('bandwidth') or 0) / 1e6:.0f} MB/s"
           + (f" (x bound at {meta['bound_bandwidth'] / 1e6:.0f} MB/s)" if meta.get("bound_bandwidth") else "")
           + f"; {meta['n']} tokens greedy, draft tokens <= "
           f"{meta['draft_tokens']} (adaptive); load {meta.get('load_before')}", "",
           "| budget | prompt | system | k | tok/s | x no-spec | x bound | acceptance | tokens/pass | mean k | "
           "draft s/pass | verify s/pass | MB read/token | peak cgroup | note |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:  # repeated rounds: one line per system, the run of median tok/s, every run's tok/s in the note
        groups.setdefault((r.get("fraction"), r.get("prompt"), r.get("system"), r.get("draft_tokens")),
                          []).append(r)
    for runs in groups.values():
        runs.sort(key=lambda x: x.get("decode_tok_s") or 0.0)
    # x no-spec: against the (lower) median run of edgespool without speculation of the same budget and prompt
    base = {(f, p): runs[(len(runs) - 1) // 2].get("decode_tok_s") for (f, p, s, _), runs in groups.items()
            if s in ("edgespool-stream", "edgespool-resident")}
    for runs in groups.values():
        r = runs[(len(runs) - 1) // 2]
        sp = r.get("speculative") or {}
        b = base.get((r.get("fraction"), r.get("prompt")))
        note = r.get("skipped") or ("partial (time limit)" if r.get("partial") else "") \
            or ("OOM-killed" if r.get("oom_kills") else "") or ("failed" if r.get("failed") else "")
        if r.get("decode_tokens") is not None:
            note = (note + "; " if note else "") + f"{r['decode_tokens']} decode tokens"
        if len(runs) > 1:
            note = (note + "; " if note else "") + f"median (lower) of {len(runs)}: " + \
                ", ".join(f"{x.get('decode_tok_s') or 0:.2f}" for x in runs)
        if sp.get("source"):
            note = (note + "; " if note else "") + f"acceptance from {sp['source']}"
        tps = r.get("decode_tok_s")
        pp = r.get("per_pass") or per_pass(sp)
        out.append("| " + " | ".join([
            f"1/{r['fraction']}" if r.get("fraction") else "resident", str(r.get("prompt")), r["system"],
            k_label(r, meta) if drafts(r["system"]) else "-",
            f"{tps:.2f}" if tps else "-", f"{tps / b:.2f}" if tps and b else "-",
            f"{r['x_bound']:.2f}" if r.get("x_bound") else "-",
            f"{sp['acceptance_rate']:.0%} ({sp.get('accepted')}/{sp['drafted']})" if sp.get("drafted") else "-",
            f"{sp['tokens_per_pass']:.2f}" if sp.get("tokens_per_pass") else "-",
            f"{sp['mean_k']:.1f}" if sp.get("mean_k") else "-",
            f"{pp['draft_s_per_pass']:.3f}" if pp else "-", f"{pp['verify_s_per_pass']:.3f}" if pp else "-",
            f"{r['bytes_read_per_token'] / 1e6:.0f}" if r.get("bytes_read_per_token") else "-",
            f"{(r.get('peak_cgroup') or 0) / MiB:.0f} MiB" if r.get("peak_cgroup") else "-", note]) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "table":  # table [--bandwidth BPS] R1.json R2.json ...
        a = sys.argv[2:]
        bps = float(a[1]) if a[:1] == ["--bandwidth"] else None
        runs = [json.loads(Path(f).read_text()) for f in (a[2:] if bps else a)]
        rows = [r for x in runs for r in x["rows"]]
        if bps:
            rebound(rows, runs[0]["meta"], bps)
        print(table(rows, runs[0]["meta"]))
    elif len(sys.argv) > 1 and sys.argv[1] == "dovetail":
        from edgespool.benchmarks.spec_dovetail import dovetail

        dovetail(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "child":
        a = sys.argv[2:]
        child(a[0], a[1], a[2], int(a[3]), int(a[4]), a[5], int(a[6]), a[7])
    else:
        main()
