"""Measuring a streamed (or resident) run of a decoder bundle: what ``edgespool bench`` reports.

``bench_bundle`` measures, in this order: the process baseline (RSS and cgroup usage before any weight is
loaded), the storage's cold read bandwidth on the weights file itself (page cache dropped, O_DIRECT where possible,
through the same rate limiter the run uses), the load, a prefill of ``prompt_tokens`` random token ids (time to
first token) and ``max_tokens`` greedy decode steps, while a sampler thread records process RSS and cgroup memory
every 20 ms. Every figure says how it was measured (see the ``how`` entries of the result).

The storage bound of a dense model is ``bandwidth / bytes that must be read per token`` (the plan's streamed layer
bytes): no streaming runtime can decode faster from that storage with that much memory pinned. For MoE models the
bytes per token depend on routing and caching; the result reports the measured bytes per decode token and the
achieved read bandwidth against the cold bandwidth instead.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError
from .bundle.checked_read import MODE_DIRECT, timed_sequential_read
from .bundle.reader import Bundle
from .decoder.engine import Engine
from ..units import peak_rss_bytes
from .decoder.weights import ResidentWeights

MiB = 1 << 20


# -- memory ------------------------------------------------------------------------------------------------------
def _cgroup_memory_dir() -> Path | None:
    """This process's memory cgroup directory (v1 ``memory`` controller or the v2 unified group), if readable."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(","):
            d = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            if (d / "memory.usage_in_bytes").exists():
                return d
    for line in lines:
        if line.startswith("0::"):
            d = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
            if (d / "memory.current").exists():
                return d
    return None


def cgroup_memory() -> tuple[int | None, int | None]:
    """(current usage, peak usage) of this process's memory cgroup, page cache included; None when unreadable."""
    d = _cgroup_memory_dir()
    if d is None:
        return None, None

    def rd(name: str) -> int | None:
        try:
            return int((d / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    if (d / "memory.usage_in_bytes").exists():
        return rd("memory.usage_in_bytes"), rd("memory.max_usage_in_bytes")
    return rd("memory.current"), rd("memory.peak")


def process_rss() -> int:
    """Resident set size of this process now (bytes, /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_process_rss() -> int:
    """Largest resident set of this process so far (:func:`edgespool.units.peak_rss_bytes`)."""
    return peak_rss_bytes()


class MemorySampler:
    """A thread sampling (t, process RSS, cgroup usage) every ``period_s`` until stopped."""

    def __init__(self, period_s: float = 0.02) -> None:
        self.period_s = period_s
        self.samples: list[tuple[float, int, int | None]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="edgespool-memsampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), process_rss(), cgroup_memory()[0]))
            self._stop.wait(self.period_s)

    def __enter__(self) -> "MemorySampler":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


# -- storage -----------------------------------------------------------------------------------------------------
def cold_read_bandwidth(path: str | os.PathLike, *, max_bytes: int = 256 * MiB, max_s: float = 3.0,
                        chunk: int = 4 * MiB, rate_limiter: Any = None) -> dict[str, Any]:
    """Sequential read bandwidth of ``path`` from storage: page cache dropped first, O_DIRECT where allowed,
    ``chunk``-sized checked reads (:func:`~edgespool.runtime.bundle.checked_read.timed_sequential_read`), at most
    ``max_bytes`` or ``max_s`` seconds."""
    marks, mode = timed_sequential_read(path, chunk=chunk, max_s=max_s, max_bytes=max_bytes, limiter=rate_limiter)
    n = sum(got for _, got in marks)
    dt = marks[-1][0] if marks else 0.0
    return {"bytes": n, "seconds": dt, "bandwidth": n / dt if dt > 0 else None,
            "how": f"sequential {chunk // MiB} MiB {'O_DIRECT' if mode == MODE_DIRECT else 'buffered'} reads of the "
                   "weights file after dropping it from the page cache"
                   + (" through the rate limiter" if rate_limiter else "")}


# -- the benchmark -------------------------------------------------------------------------------------------------
def _cgroup_attributable() -> tuple[bool, str]:
    """Whether this process's memory cgroup holds only this process (then its usage is this run's), and why not."""
    d = _cgroup_memory_dir()
    if d is None:
        return False, "no readable memory cgroup"
    try:
        pids = {int(p) for p in (d / "cgroup.procs").read_text().split()}
    except (OSError, ValueError):
        return False, f"cannot read {d / 'cgroup.procs'}"
    if pids - {os.getpid()}:
        return False, (f"the memory cgroup {d} also holds {len(pids - {os.getpid()})} other processes: its usage "
                       "is not this run's (run under `edgespool bench --rig-memory` for a cgroup of its own)")
    return True, ""


def op_split(eng: Engine, times: Any, cache: Any, tok: int, steps: int) -> dict[str, Any]:
    """Per-op time split of ``steps`` more decode steps run with the engine's (timed) table (see
    :mod:`edgespool.kernels.timing`): ms per step and share for lm_head, linear by scheme, attention, other."""
    times.reset()
    t0 = time.perf_counter()
    for _ in range(steps):
        logits = eng.forward([tok], cache, last_only=True)
        tok = int(np.argmax(logits[-1]))
    total = time.perf_counter() - t0
    return {"steps": steps, "ms_per_step": 1e3 * total / steps, "ops": times.split(total, steps),
            "how": "extra greedy decode steps after the measured ones, each linear / attention call timed around "
                   "the kernel (perf_counter); other = step time - those (RMSNorm, RoPE, SwiGLU, residuals, "
                   "embedding, KV-cache writes, argmax, Python dispatch); these steps run the Python layers "
                   "even where the measured ones ran one C call per decoder layer (not timeable per op), so other "
                   "is the Python path's"}


def bench_bundle(path: str | os.PathLike, *, memory_budget: str | int | None = None, target: str | None = None,
                 prompt_tokens: int = 32, max_tokens: int = 32, seed: int = 0, measure_storage: bool = True,
                 kernels: bool = True, split_steps: int = 16, threads: int | None = None,
                 **stream_options: Any) -> dict[str, Any]:
    """Load ``path`` (streaming under ``memory_budget``, or resident without one), run a prefill of
    ``prompt_tokens`` random ids and ``max_tokens`` greedy decode steps, and return every measured figure
    (JSON-ready, plus ``_timeline`` with raw samples for plotting). ``kernels``: the bundle's compiled kernels
    when they fit this machine (what ``edgespool run`` uses; the result's ``kernels`` says which), else numpy.
    ``split_steps`` more decode steps are then run with timed kernels for the per-op split (``op_split``;
    0 skips it). ``threads``: the C block kernels' worker threads (default $EDGESPOOL_THREADS, else the usable
    cores), as ``edgespool run --threads``."""
    if prompt_tokens < 1 or max_tokens < 1:
        raise OptionError("--prompt-tokens and -n must be >= 1")
    bundle = Bundle(Path(path))
    if bundle.config is None:
        raise OptionError(f"{path}: bench needs a decoder bundle")
    cfg = bundle.config
    if memory_budget is not None:  # import what the run will use first: imports belong to the baseline
        from ..offload import streaming_source  # noqa: F401
    t_start = time.perf_counter()
    base_rss = process_rss()
    base_cg, _ = cgroup_memory()
    limiter = stream_options.get("rate_limiter")
    if limiter is None:
        from .bundle.ratelimit import from_env

        limiter = from_env()
        if limiter is not None and memory_budget is not None:
            stream_options["rate_limiter"] = limiter
    storage = cold_read_bandwidth(bundle.weights_path, rate_limiter=limiter) if measure_storage else None
    # the split's extra steps must fit the model's context (a run that fills it gets a shorter split, or none)
    split_steps = max(0, min(split_steps, int(cfg.max_position_embeddings or 0) - prompt_tokens - max_tokens))
    ctx = prompt_tokens + max_tokens + split_steps
    from ..kernels.timing import timed_table
    from .api import resolve_kernels

    table = resolve_kernels(bundle, kernels, threads=threads)
    with MemorySampler() as mem:
        t_load = time.perf_counter()
        if memory_budget is None:
            source: Any = ResidentWeights(bundle, verify=False)
            source.load_all()  # like `edgespool run`: every weight read now, so the load time is the load's
            plan = None
        else:
            from ..offload.streaming_source import open_streaming

            source = open_streaming(bundle, memory_budget, target=target, verify=stream_options.pop("verify", True),
                                    kernels=table,
                                    max_context=stream_options.pop("max_context", ctx),
                                    max_batch_tokens=stream_options.pop("max_batch_tokens", prompt_tokens),
                                    **stream_options)
            plan = source.plan
        load_s = time.perf_counter() - t_load

        def read_so_far() -> int:
            return source.store.bytes_read if plan is not None else 0

        eng = Engine(source, table)
        cache = eng.new_cache(ctx)
        ids = np.random.default_rng(seed).integers(3, cfg.vocab_size, size=prompt_tokens)
        b0 = read_so_far()
        t0 = time.perf_counter()
        logits = eng.prefill(ids, cache)  # in the plan's prefill chunks (one pass when resident)
        tok = int(np.argmax(logits[-1]))
        ttft = time.perf_counter() - t0
        b1 = read_so_far()
        marks = [t0, time.perf_counter()]
        tokens = [tok]
        for _ in range(max_tokens - 1):
            logits = eng.forward([tok], cache, last_only=True)
            tok = int(np.argmax(logits[-1]))
            tokens.append(tok)
            marks.append(time.perf_counter())
        b2 = read_so_far()
        decode_s = marks[-1] - marks[1]
        st = source.stats() if plan is not None else None
        records = list(source.store.records) if plan is not None else []
        split = None  # after the measured figures and stats: these steps change none of them
        if split_steps > 0:
            timed, times = timed_table(table, cfg.vocab_size)
            eng.kernels = timed
            split = op_split(eng, times, cache, tok, split_steps)
            eng.kernels = table
        source.close()
    n_dec = max_tokens - 1
    decode_tok_s = n_dec / decode_s if decode_s > 0 and n_dec else None
    bytes_per_tok = (b2 - b1) / n_dec if n_dec else None
    cold_bw = storage["bandwidth"] if storage else None
    own_cg, cg_why = _cgroup_attributable()
    peak: dict[str, Any] = {
        "process_rss": peak_process_rss(), "process_rss_sampled": max((s[1] for s in mem.samples), default=None),
        "how": "VmHWM of this process; *_sampled every 20 ms"}
    if own_cg:
        peak["cgroup"] = cgroup_memory()[1]
        peak["cgroup_sampled"] = max((s[2] for s in mem.samples if s[2] is not None), default=None)
        peak["how"] += "; cgroup max_usage_in_bytes / memory.peak (page cache included; the cgroup holds only this run)"
    else:
        peak["cgroup_omitted"] = cg_why
    backend = table.backend
    res: dict[str, Any] = {
        "bundle": str(bundle.path), "arch": cfg.arch, "model_bytes": bundle.weights_nbytes,
        "kernels": {"description": table.description,
                    "threads": getattr(backend, "threads", None),
                    "calls": getattr(backend, "calls", None),
                    "fallbacks": dict(getattr(backend, "fallbacks", {}) or {}),
                    # per packed format: the decode tiles' form on this host (kernels/decode_form.py)
                    "decode_forms": getattr(backend, "decode_forms", None)},
        "op_split": split,
        "memory_budget": plan.budget_bytes if plan else None, "target": target or "host",
        "mode": "streaming" if plan else "resident",
        "prompt_tokens": prompt_tokens, "generated_tokens": max_tokens,
        "load_s": load_s, "ttft_s": ttft, "prefill_tok_s": prompt_tokens / ttft,
        "decode_tok_s": decode_tok_s, "decode_s": decode_s,
        "prefill_bytes_read": b1 - b0, "bytes_read_per_token": bytes_per_tok,
        "achieved_read_bandwidth": (b2 - b1) / decode_s if decode_s > 0 else None,
        "storage": storage,
        "baseline": {"process_rss": base_rss, "cgroup": base_cg if own_cg else None,
                     "how": "RSS (/proc/self/statm) and cgroup usage (only when the cgroup holds only this "
                            "process) after imports, before loading weights"},
        "peak_memory": peak,
        "tokens": tokens,
    }
    if plan is not None:
        res["plan"] = plan.to_dict()
        res["stream_stats"] = st
        c = (st or {}).get("expert_cache") or {}
        res["cache_hit_rate"] = c.get("hit_rate")
        res["prediction_accuracy"] = ((st or {}).get("predictor") or {}).get("accuracy")
        res["neuron_window"] = (st or {}).get("neuron_window")
        if not cfg.is_moe and not plan.neuron_layers and cold_bw:
            must = plan.streamed_bytes_per_token
            bound = cold_bw / must if must else None
            res["storage_bound"] = {
                "bytes_per_token": must, "bandwidth": cold_bw, "tok_s": bound,
                "fraction_reached": (decode_tok_s / bound) if bound and decode_tok_s else None,
                "how": "plan's streamed dense-layer bytes per token / cold read bandwidth"}
        elif cold_bw and bytes_per_tok:
            res["storage_bound"] = {
                "bytes_per_token": bytes_per_tok, "bandwidth": cold_bw, "tok_s": cold_bw / bytes_per_tok,
                "fraction_reached": (decode_tok_s * bytes_per_tok / cold_bw) if decode_tok_s else None,
                "how": "measured bytes per decode token (MoE: expert misses; bundled FFNs: newly active neurons + "
                       "streamed layers) / cold read bandwidth"}
    if not own_cg:
        mem.samples = [(t, r, None) for t, r, _ in mem.samples]
    res["_timeline"] = {"t0": t_start, "memory": mem.samples, "reads": [(r.t0, r.t1, r.nbytes) for r in records],
                        "marks": marks}
    return res


def plot_timeline(res: dict[str, Any], out: str | os.PathLike) -> Path:
    """Memory (process RSS, cgroup) and read throughput over time against the budget, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = res["_timeline"]
    t0 = tl["t0"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ts = [s[0] - t0 for s in tl["memory"]]
    ax1.plot(ts, [s[1] / MiB for s in tl["memory"]], label="process RSS")
    if any(s[2] is not None for s in tl["memory"]):
        ax1.plot(ts, [(s[2] or 0) / MiB for s in tl["memory"]], label="cgroup usage (incl. page cache)")
    if res.get("memory_budget"):
        base = res["baseline"]["process_rss"]
        ax1.axhline(res["memory_budget"] / MiB, color="r", ls="--", label="budget")
        ax1.axhline((res["memory_budget"] + base) / MiB, color="r", ls=":", label="budget + process baseline")
    ax1.set_ylabel("MiB")
    ax1.legend(loc="lower right", fontsize=8)
    ax1.set_title(f"{res['arch']} {res['mode']}: {res['decode_tok_s'] or 0:.2f} tok/s decode")
    if tl["reads"]:
        end = max(r[1] for r in tl["reads"]) - t0
        bins = np.arange(0, end + 0.05, 0.05)
        mb = np.zeros(len(bins))
        for a, b, n in tl["reads"]:
            a, b = a - t0, b - t0
            lo, hi = int(a / 0.05), int(b / 0.05)
            for k in range(lo, min(hi, len(bins) - 1) + 1):
                seg = min(b, (k + 1) * 0.05) - max(a, k * 0.05)
                if seg > 0:
                    mb[k] += n * seg / max(b - a, 1e-9)
        ax2.step(bins, mb / 0.05 / 1e6, where="post", label="weight reads")
    if res.get("storage") and res["storage"].get("bandwidth"):
        ax2.axhline(res["storage"]["bandwidth"] / 1e6, color="g", ls="--", label="cold read bandwidth")
    for m in tl["marks"]:
        ax2.axvline(m - t0, color="0.85", lw=0.5)
    ax2.set_ylabel("MB/s")
    ax2.set_xlabel("seconds (grey lines: tokens)")
    ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
