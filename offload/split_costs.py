"""The split cost model's GPU per-layer figures, measured on the executor's own layer steps (issue 17, gap (a));
the CPU side's is :func:`edgespool.runtime.decoder.layer_probe.cpu_layer_step_seconds` (the engine lives above
this layer), handed to :func:`edgespool.offload.gpu_split.open_split` by ``load()``.

``gpu_layer_step_seconds``: the same token through :class:`~edgespool.offload.gpu_layers.GpuLayers` with the run's
CUDA graph, for a run of one layer and a run of four: the difference per added layer is what one more layer in a run costs (the
graph replays the whole run), the rest is what a run costs once (hidden state in and out, graph launch, the
host-side sync), charged by the planner per CPU<->GPU crossing (``LinkModel.boundary_s``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from ..kernels.rope import Rope
from ..runtime.bundle.config import ModelConfig
from ..runtime.bundle.names import layer_group
from ..schedulers.placement_plan import CPU, GPU, GroupPlacement, LinkModel, Placement

PROBE_CONTEXT = 64  # positions already in the KV cache when a decode step is timed (the benchmark's prompt)


def _probe_placement(cfg: ModelConfig, on_gpu: set[str], arena: int, link: LinkModel) -> Placement:
    groups = tuple(GroupPlacement(layer_group(j), "layer", GPU if layer_group(j) in on_gpu else CPU, 0, 0, 0.0,
                                  0.0, 0.0, "cost probe") for j in range(cfg.num_layers))
    return Placement(arena, arena, 0, 0, 0, groups, 2, 4 * cfg.hidden_size, 0.0, 0.0, link)


@dataclass(frozen=True)
class GpuLayerCost:
    """Measured GPU costs of one layer: ``graph_s`` inside a CUDA-graph run of resident layers (marginal),
    ``eager_s`` through the eager path (a streamed layer), ``fixed_s`` per CPU<->GPU crossing (None: not
    measured, the run had one layer only)."""

    graph_s: float
    eager_s: float
    fixed_s: float | None


def gpu_layer_step_seconds(cp: Any, ops: Any, cfg: ModelConfig, i: int, read_group: Callable[[str], Any],
                           link: LinkModel, layer_bytes: int, *, span: int = 4, reps: int = 25,
                           context: int = PROBE_CONTEXT) -> GpuLayerCost:
    """One decode token through GPU runs of layer ``i`` alone and of layers ``i .. i + span - 1`` (CUDA graph,
    host array in and out; medians of ``reps`` steps): (long - short) / (span - 1) is one layer's cost inside a
    run, the rest of the one-layer run is the run's fixed cost (half per crossing); the one-layer run again with
    graphs off gives a streamed layer's eager cost. ``span`` 1: no split (the fixed cost stays in the layer's).
    Each probe's weights are uploaded and freed again (the arena is not allocated yet)."""
    from .gpu_layers import GpuLayers
    from .gpu_split import gpu_workspace_bytes

    ctx = context + reps + 8
    rope_spec = cfg.rope_of(i)
    rope = None if rope_spec is None else Rope(cfg.head_dim, *rope_spec, cfg.max_position_embeddings)
    kv = 2 * cfg.num_kv_heads * ctx * cfg.head_dim * 4
    x = np.random.default_rng(0).standard_normal((1, cfg.hidden_size)).astype(np.float32)

    def run(layers: list[int], graphs: bool) -> float:
        arena = len(layers) * (layer_bytes + kv + (1 << 20)) + gpu_workspace_bytes(cfg, context, ctx)
        dev = GpuLayers(cp, ops, cfg, _probe_placement(cfg, {layer_group(j) for j in layers}, arena, link),
                        read_group, ctx)
        dev.graphs_enabled = graphs
        try:
            owner = object()
            pos = np.arange(context)
            y: Any = x.repeat(context, 0)
            for j in layers:  # the prompt: eager path, fills the GPU KV cache
                y = dev.layer(j, y, pos, None if rope is None else rope.cos_sin(pos), owner)
            ts = []
            for p in range(context, context + reps + 1):
                pos = np.array([p])
                tables = None if rope is None else rope.cos_sin(pos)
                t0 = time.perf_counter()
                y = x
                for j in layers:
                    y = dev.layer(j, y, pos, tables, owner)
                assert isinstance(y, np.ndarray)
                ts.append(time.perf_counter() - t0)
            return float(np.median(ts[1:]))  # the first one records the graph
        finally:
            dev.close()

    one = run([i], True)
    eager = run([i], False)
    span = max(1, min(span, cfg.num_layers - i))
    if span == 1:
        return GpuLayerCost(one, eager, None)
    many = run(list(range(i, i + span)), True)
    marginal = max((many - one) / (span - 1), 1e-6)
    fixed = max(0.0, one - marginal) / 2
    return GpuLayerCost(marginal, max(eager - 2 * fixed, marginal), fixed)


def with_boundary(link: LinkModel, boundary_s: float | None) -> LinkModel:
    """``link`` with its measured per-crossing cost (unchanged when nothing was measured)."""
    if boundary_s is None:
        return link
    return replace(link, boundary_s=float(boundary_s),
                   source=link.source + f"; a GPU run's fixed cost {2 * boundary_s * 1e6:.0f} us (1- vs 4-layer "
                   "graph run)")
