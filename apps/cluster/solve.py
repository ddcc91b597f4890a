"""The solver's inputs from a bundle and board descriptions, and the link presets (issue 19).

:func:`edgespool.schedulers.cluster_plan.plan_cluster` is pure; this module feeds it: each layer group's stored
bytes, the head's, one hidden row's, each board's budget for weights (its memory budget less what the memory
planner reserves for KV cache, workspace, staging and the layer window at that budget), its storage read rate and
its compute rate (weight bytes per second its decode kernels get through: measured by :func:`measure_compute_bps`
on THIS machine's cores when no figure is given)."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ...errors import OptionError
from ...runtime.bundle.names import EMBED, HEAD, LM_HEAD
from ...runtime.bundle.reader import Bundle
from ...schedulers.cluster_plan import BoardSpec, LinkSpec
from ...units import parse_bytes

LINKS = {"ethernet": LinkSpec(0.3e-3 / 2, 1e9 / 8), "wifi": LinkSpec(10e-3 / 2, 100e6 / 8)}
LINK_TEXT = {"ethernet": "1 Gbit/s, 0.3 ms RTT", "wifi": "100 Mbit/s, 10 ms RTT"}


@dataclass(frozen=True)
class LinkChoice:
    name: str
    spec: LinkSpec
    rate_mbit: float
    rtt_ms: float


def parse_link(text: str, option: str = "--link") -> LinkChoice:
    """``ethernet`` (1 Gbit/s, 0.3 ms RTT), ``wifi`` (100 Mbit/s, 10 ms RTT) or ``MBIT:RTT_MS`` (e.g. 300:2)."""
    t = text.strip().lower()
    if t == "ethernet":
        return LinkChoice(t, LINKS[t], 1000.0, 0.3)
    if t == "wifi":
        return LinkChoice(t, LINKS[t], 100.0, 10.0)
    m = re.fullmatch(r"(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)", t)
    if not m or float(m.group(1)) <= 0:
        raise OptionError(f"{option} {text!r}: expected ethernet, wifi or MBIT:RTT_MS (e.g. 300:2)")
    mbit, rtt = float(m.group(1)), float(m.group(2))
    return LinkChoice(t, LinkSpec(rtt / 2e3, mbit * 1e6 / 8), mbit, rtt)


def layer_bytes(bundle: Bundle) -> list[int]:
    """Stored bytes of each layer (its layer group with its experts and bundled FFN)."""
    L = bundle.config.num_layers
    out = [0] * L
    for g, info in bundle.groups.items():
        if g.startswith("layers."):
            i = int(g.split(".")[1])
            out[i] += info.nbytes
    return out


def head_bytes(bundle: Bundle) -> int:
    """Bytes the last stage reads for the final norm + head per token (the embedding table when tied)."""
    tied = bundle.config.tie_word_embeddings or LM_HEAD not in bundle.tensors
    norm = bundle.groups[HEAD].nbytes if HEAD in bundle.groups else 0
    return norm + (int(bundle.tensors[EMBED]["nbytes"]) if tied else 0)


def weight_budget(bundle: Bundle, budget: int, max_context: int, kv_dtype: str = "f32") -> int:
    """Bytes of ``budget`` the memory planner can keep for weights: the budget less its KV cache, workspace,
    staging and layer window at that budget (from the single-board plan; a stage's KV cache is smaller: stated
    simplification). For a tensor-parallel shard bundle the plan also reserves the whole vocabulary's logits row
    (:func:`~edgespool.runtime.cluster.tensor_stream.shard_plan_options`), as the board's run does."""
    from ...runtime.cluster.tensor_stream import shard_plan_options
    from ...schedulers.memory_plan import plan_memory

    p = plan_memory(bundle, None, budget, **shard_plan_options(bundle, max_context=max_context, kv_dtype=kv_dtype))
    if p.is_resident:
        return max(0, budget - p.reserved_bytes)
    return max(0, budget - (p.reserved_bytes + p.kv_cache_bytes + p.workspace_bytes + p.io_staging_bytes
                            + p.window_bytes))


def resident_weight_budget(bundle: Bundle, budget: int, max_context: int, kv_dtype: str = "f32") -> int:
    """Bytes of ``budget`` left for weights when a board's whole share fits: the budget less the resident plan's
    reserve (KV cache, workspace and staging of the whole model at ``max_context``: a stage's is smaller, stated
    simplification); no streaming window then."""
    from ...runtime.cluster.tensor_stream import shard_plan_options
    from ...schedulers.memory_plan import plan_memory

    big = 2 * bundle.weights_nbytes + (1 << 30)
    p = plan_memory(bundle, None, big, **shard_plan_options(bundle, max_context=max_context, kv_dtype=kv_dtype))
    return max(0, budget - (p.total_bytes - p.pinned_group_bytes))


def measure_compute_bps(bundle: Bundle, kernels, tokens: int = 6, streamed: bool = False) -> float:
    """Weight bytes per second of decode on this machine (the given kernels): the bundle's layer + head bytes per
    token over the median decode step time. ``streamed``: through the streaming source with every group pinned
    (what a pipeline board whose share fits runs: the stored block layout, measured slower per byte than the
    resident engine's repacked one), else through the resident weights."""
    import statistics

    from ...runtime.decoder.engine import Engine
    from ...runtime.decoder.weights import ResidentWeights

    if streamed:
        from ...offload.streaming_source import open_streaming

        source = open_streaming(bundle, 2 * bundle.weights_nbytes + (1 << 30), kernels=kernels, kv_dtype="f32",
                                max_context=tokens + 8)
    else:
        source = ResidentWeights(bundle)
    try:
        eng = Engine(source, kernels, kv_dtype="f32")
        cache = eng.new_cache(tokens + 8)
        eng.forward([1, 2, 3, 4], cache, last_only=True)
        times = []
        for t in range(tokens):
            t0 = time.perf_counter()
            eng.forward([5 + t], cache, last_only=True)
            times.append(time.perf_counter() - t0)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    return (sum(layer_bytes(bundle)) + head_bytes(bundle)) / statistics.median(times)


def measure_one_core_bps(bundle: Bundle) -> float:
    """:func:`measure_compute_bps` of ``bundle``'s own kernels on ONE core of this machine (the first this process
    may use; one thread), through the streaming source the boards run."""
    import os

    from ...runtime.api import resolve_kernels

    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old)})
    try:
        return measure_compute_bps(bundle, resolve_kernels(bundle, True, threads=1), streamed=True)
    finally:
        os.sched_setaffinity(0, old)


def board_specs(names: list[str], budgets: list[int], storage_bps: list[float], compute_bps: list[float],
                bundle: Bundle, max_context: int) -> list[BoardSpec]:
    """BoardSpecs for the solver, one per board name."""
    return [BoardSpec(n, c, weight_budget(bundle, b, max_context), s, resident_weight_budget(bundle, b, max_context))
            for n, b, s, c in zip(names, budgets, storage_bps, compute_bps)]


def parse_budget(text: str, model_bytes: int, option: str = "--budget") -> int:
    """A size (``256MiB``) or a fraction of the model's weights (``1/4``, ``0.25``)."""
    t = text.strip()
    m = re.fullmatch(r"(\d+)/(\d+)", t)
    if m and int(m.group(2)) > 0:
        return max(1, model_bytes * int(m.group(1)) // int(m.group(2)))
    if re.fullmatch(r"0?\.\d+", t):
        return max(1, int(model_bytes * float(t)))
    return parse_bytes(t, option)



def solver_ranges(bundle: Bundle, k: int, budget: int, max_context: int, link: LinkSpec) -> tuple[list, object]:
    """The solver's cut of ``bundle`` over ``k`` equal boards of ``budget`` each (every board used), for
    ``run --cluster``: each board's compute rate measured on ONE core of this machine through the streaming source
    the boards run, its storage this machine's ("host" target) read rate. Returns ([(start, stop)], the plan)."""
    from ...schedulers.cluster_plan import plan_on
    from ...targets.profiles import get_target

    rate = measure_one_core_bps(bundle)
    storage = get_target("host").storage_medium().read_bandwidth
    boards = board_specs([f"board{i}" for i in range(k)], [budget] * k, [storage] * k, [rate] * k, bundle,
                         max_context)
    plan = plan_on(boards, layer_bytes(bundle), head_bytes(bundle), 4 * bundle.config.hidden_size, link)
    return [(s.start, s.stop) for s in plan.stages], plan
