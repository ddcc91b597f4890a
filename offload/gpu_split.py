"""Open a CPU/GPU split run: measure the cost model, plan the placement, upload, wrap the CPU weight source.

``open_split(bundle, cpu_source, gpu_budget, ...)`` returns ``(SplitWeights, "")`` or ``(None, why)`` when no GPU
can be used (no CuPy, no CUDA device): the caller then runs on the CPU and says why. The cost model is measured
here, at load, on this machine (nothing is taken from a table):

* CPU: one decode token through one whole layer as the engine runs it (``split_costs.cpu_layer_step_seconds``:
  the kernels' own weight layout, norms, RoPE, attention, Python overhead; median of 7), for one layer of each
  distinct shape, other layers of the same shape reusing the figure; the head's product (median of 5);
* GPU: the same token through ``GpuLayers`` with its CUDA graph, runs of one and of four layers
  (``split_costs.gpu_layer_step_seconds``): the difference is a layer's cost inside a run, the rest the fixed
  cost of a run, charged per CPU<->GPU crossing; the one-layer run with graphs off is a streamed layer's GPU
  time; the head's products plus one launch (CUDA events, median of 5);
* link: a pinned 32 MiB host-to-device copy (bandwidth) and an empty launch (per-call overhead).

The placement (:func:`edgespool.schedulers.placement_plan.plan_placement`) is printed by ``edgespool run --plan``.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import BudgetError
from ..kernels.quant import QTensor
from ..kernels.table import KernelTable
from ..runtime.bundle.config import ModelConfig
from ..runtime.bundle.names import EMBED, FINAL_NORM, HEAD, LM_HEAD, expert_group, expert_prefix, layer_group
from ..runtime.bundle.reader import Bundle
from ..schedulers.placement_plan import CPU, GroupCost, LinkModel, Placement, plan_prefill_chunk
from .gpu_blas import WORKSPACE_BYTES
from .gpu_layers import GpuLayers
from .gpu_ops import ATTN_SCORE_BYTES, DEQUANT_CHUNK_BYTES, GPU_PREFILL_CHUNK, GpuOps, gpu_nbytes, gpu_status
from .split_costs import gpu_layer_step_seconds, with_boundary

DEFAULT_GPU_CONTEXT = 4096
GPU_MIN_PREFILL_CHUNK = 64  # the shorter prompt chunk the planner tries when the cap is tight
GPU_SLACK_BYTES = 48 << 20  # CuPy pool rounding, copies made by reshapes, the decode graphs' static buffers


def layer_gpu_support(cfg: ModelConfig, i: int, tensors: dict[str, Any], moe: bool = False) -> str:
    """Why layer ``i`` cannot run on the GPU executor ('' when it can). ``moe``: MoE layers may (offload/gpu_moe.py;
    opt-in until that path has run on a GPU)."""
    if cfg.post_norms:
        return "post-norms (Gemma) are not implemented on the GPU"
    if cfg.is_moe_layer(i):  # attention, router, shared expert here; the routed experts are groups of their own
        if not moe:
            return ("MoE layer (its experts run on the CPU; MoE layers on the GPU: load(gpu_moe=True), "
                    "experimental, not yet run on a GPU)")
        return "" if any(n.endswith("router") for n in tensors) else "MoE layer without a router tensor"
    if not any(n.endswith("ffn.gate") for n in tensors):
        return "bundled FFN layout (neuron windows) runs on the CPU"
    if cfg.hidden_act not in ("silu", "relu", "gelu_tanh"):
        return f"activation {cfg.hidden_act} not on the GPU"
    return ""


def gpu_scratch_bytes(cfg: ModelConfig) -> int:
    """The batched products' weight scratch: the float32 size of the model's largest layer matrix, at least 1 MiB
    and at most DEQUANT_CHUNK_BYTES (bigger matrices, e.g. a head of many rows, go through it in row blocks). A
    small model (SmolLM2-135M: 3.5 MB) no longer reserves the 32 MiB a 1.5B's FFN needs."""
    big = max((s[0] * s[1] for n, s in cfg.tensor_shapes().items() if len(s) == 2 and n.startswith("layers.")),
              default=0)
    return int(min(DEQUANT_CHUNK_BYTES, max(1 << 20, 4 * big)))


def gpu_slack_bytes(activation_bytes: int) -> int:
    """Pool slack over a step's activations: GPU_SLACK_BYTES (measured for the 1.5B, below), or 16 MiB plus four
    times the step's activations where that is less (CuPy's pool rounding, reshapes' copies and the graphs' static
    buffers scale with the activations: SmolLM2-135M's 64-token step is 3.9 MB)."""
    return int(min(GPU_SLACK_BYTES, (16 << 20) + 4 * activation_bytes))


def gpu_workspace_bytes(cfg: ModelConfig, max_tokens: int, max_context: int) -> int:
    """The arena's fixed part: activations of a ``max_tokens`` step (residual, norms, q/k/v, attention scores over
    ``max_context`` keys, FFN intermediates, one logits row), one dequantisation / f16 weight scratch (the products
    run one after another), the cuBLAS workspaces of two streams (the planner's probes, the executor's) and pool
    slack. On the H100 (2026-12-07, 1.5B) the pools' peak took 72 / 100 MB at 64- / 256-token chunks of the 149 /
    188 MB reserved then (a second scratch, 64 MiB slack); with 32 MiB slack (90 / 129 MB) two runs filled their
    arena to within 0.2 MB (the pools' limits bound, no error), so the slack is 48 MiB (107 / 146 MB). Scratch and
    slack shrink for small models (:func:`gpu_scratch_bytes`, :func:`gpu_slack_bytes`; the 1.5B's are unchanged)."""
    T, H, I = max_tokens, cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_tok = 6 * H + 2 * q + 4 * kv + 4 * I
    scores = 2 * min(cfg.num_heads * T * max_context, ATTN_SCORE_BYTES // 4)  # query blocks bound them
    act = 4 * (T * per_tok + scores + 2 * cfg.vocab_size)
    # MoE steps allocate per-expert temporaries the activation count above does not see: the measured 48 MiB
    slack = GPU_SLACK_BYTES if cfg.is_moe else gpu_slack_bytes(act)
    return act + gpu_scratch_bytes(cfg) + 2 * WORKSPACE_BYTES + slack


def _median(fn: Any, n: int = 5) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _matrices(tensors: dict[str, Any]) -> list[QTensor]:
    return [t for t in tensors.values() if isinstance(t, QTensor) and len(t.shape) == 2]


def cpu_group_seconds(tensors: dict[str, Any], kernels: KernelTable, reps: int = 5) -> float:
    """Measured CPU time of one decode token's products through ``tensors``' matrices (median of ``reps``)."""
    mats = _matrices(tensors)
    xs = [np.random.default_rng(0).standard_normal((1, int(w.shape[1]))).astype(np.float32) for w in mats]

    def run() -> None:
        for x, w in zip(xs, mats):
            kernels.linear(x, w)

    run()
    return _median(run, reps)


def gpu_group_seconds(cp: Any, ops: GpuOps, tensors: dict[str, Any], extra_launches: int, reps: int = 5) -> float:
    """Measured GPU time (CUDA events) of the same products plus ``extra_launches`` small kernels (the layer's
    norms, RoPE, attention, activation), weights uploaded temporarily; median of ``reps``."""
    mats = _matrices(tensors)
    ws = [ops.upload(w) for w in mats]
    xs = [cp.asarray(np.random.default_rng(0).standard_normal((1, int(w.shape[1]))).astype(np.float32)) for w in mats]
    small = cp.ones((1, 64), cp.float32)
    norm_w = cp.ones((64,), cp.float32)

    def run() -> None:
        for x, w in zip(xs, ws):
            ops.linear(x, w)
        for _ in range(extra_launches):
            ops.rmsnorm(small, norm_w, 1e-5)

    run()
    ts = []
    for _ in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        t0 = time.perf_counter()
        run()
        b.record()
        b.synchronize()
        ts.append(max(cp.cuda.get_elapsed_time(a, b) / 1e3, time.perf_counter() - t0))  # launch-bound: host time
    return float(np.median(ts))


def measure_link(cp: Any, ops: GpuOps) -> LinkModel:
    """Pinned host-to-device bandwidth (32 MiB copy, median of 5) and the host time of one small launch."""
    n = 32 << 20
    host = np.frombuffer(cp.cuda.alloc_pinned_memory(n), np.uint8, n)
    host[:] = 1
    dev = cp.empty(n, cp.uint8)
    dev.set(host)
    cp.cuda.Device().synchronize()

    def copy() -> None:
        dev.set(host)
        cp.cuda.Device().synchronize()

    bw = n / _median(copy)
    small, w = cp.ones((1, 64), cp.float32), cp.ones((64,), cp.float32)

    def launch() -> None:
        for _ in range(100):
            ops.rmsnorm(small, w, 1e-5)
        cp.cuda.Device().synchronize()

    launch()
    over = _median(launch) / 100
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    unified = bool(props.get("integrated", 0))
    return LinkModel(bw, over, unified, "measured at load: pinned 32 MiB copy, 100 launches")


# launches of a GPU layer besides its matrix products: 2 norms, 2 RoPE, 2 KV writes, 2 attention matmuls,
# softmax, activation, plus CuPy's reshapes/copies (counted from GpuLayers._block)
EXTRA_LAUNCHES_PER_LAYER = 12


def _layer_sig(bundle: Bundle, i: int) -> tuple:
    recs = {n: bundle.tensors[n] for n in bundle.groups[layer_group(i)].tensors}
    return tuple(sorted((n.split(".", 2)[-1], tuple(r["shape"]), r.get("scheme", r.get("dtype")))
                        for n, r in recs.items()))


def plan_split(bundle: Bundle, cp: Any, ops: GpuOps, kernels: KernelTable, gpu_budget: int,
               max_context: int, max_tokens: int = GPU_PREFILL_CHUNK, kv_dtype: str = "f32",
               cpu_layer_s: Callable[..., float] | None = None, moe: bool = False) -> Placement:
    """Measure the cost model (module docstring) and plan the placement of ``bundle`` under ``gpu_budget``.
    ``cpu_layer_s(cfg, i, tensors, kernels, kv_dtype=, model_bytes=)``: the engine's layer-step probe
    (:func:`edgespool.runtime.decoder.layer_probe.cpu_layer_step_seconds`, passed by ``load()``); None: the
    layer's products alone (an underestimate: no norms, attention or Python around them)."""
    cfg = bundle.config
    assert cfg is not None
    link = measure_link(cp, ops)
    kv_layer = 2 * cfg.num_kv_heads * max_context * cfg.head_dim * 4
    measured: dict[tuple, tuple[float, float]] = {}
    groups: list[GroupCost] = []
    crossing: list[float] = []
    for i in range(cfg.num_layers):
        name = layer_group(i)
        info = bundle.groups[name]
        recs = {n: bundle.tensors[n] for n in info.tensors}
        why = layer_gpu_support(cfg, i, recs, moe)
        sig = _layer_sig(bundle, i)
        if cfg.is_moe_layer(i):  # offload/gpu_moe.py: the layer's own products, then each expert as a group
            groups += _moe_groups(bundle, cp, ops, kernels, i, why, kv_layer, measured)
            continue
        if sig not in measured:
            tensors = bundle.read_group(name)
            gbytes = sum(gpu_nbytes(t) for t in tensors.values() if isinstance(t, QTensor))
            # the engine's own layer steps: CPU (kernels' layout, norms/attention/Python included) and GPU (the
            # CUDA-graph run a resident layer takes part in), not the products alone (offload/split_costs.py)
            def cpu_probe() -> float:
                return (cpu_layer_s(cfg, i, tensors, kernels, kv_dtype=kv_dtype, model_bytes=bundle.weights_nbytes)
                        if cpu_layer_s is not None
                        else cpu_group_seconds(tensors, kernels))

            cpu_s = cpu_probe()
            gpu_s = eager_s = float("inf")
            if not why:
                span = 1
                while span < 4 and i + span < cfg.num_layers and _layer_sig(bundle, i + span) == sig:
                    span += 1
                cost = gpu_layer_step_seconds(cp, ops, cfg, i, bundle.read_group, link, int(gbytes), span=span)
                gpu_s, eager_s = cost.graph_s, cost.eager_s
                if cost.fixed_s is not None:
                    crossing.append(cost.fixed_s)
                # the CPU probe again after the GPU's, the lower of the two: on the 16-core H200 host one probe
                # at load read 1.49 ms against 0.56-0.71 in every other run (2026-12-05), flipping the plan
                cpu_s = min(cpu_s, cpu_probe())
            measured[sig] = (cpu_s, gpu_s, gbytes, eager_s)  # type: ignore[assignment]
            del tensors
        cpu_s, gpu_s, gbytes, eager_s = measured[sig]  # type: ignore[misc]
        groups.append(GroupCost(name, "layer", info.nbytes, int(gbytes) + kv_layer, cpu_s, gpu_s, kv_layer,
                                gpu_ok=not why, why_not=why, stream_gpu_s=eager_s))
    head = bundle.read_group(HEAD)
    tied = cfg.tie_word_embeddings or LM_HEAD not in bundle.tensors
    hw = {"w": bundle.read_group(EMBED)[EMBED] if tied else head[LM_HEAD]}
    hbytes = gpu_nbytes(hw["w"]) + gpu_nbytes(head[FINAL_NORM])
    cpu_h = cpu_group_seconds(_prepared(hw, kernels), kernels)
    gpu_h = gpu_group_seconds(cp, ops, hw, 1)
    host_h = bundle.groups[HEAD].nbytes + (bundle.groups[EMBED].nbytes if tied else 0)
    groups.append(GroupCost(HEAD, "head", host_h, int(hbytes), cpu_h, gpu_h, streamable=False))
    del head, hw
    cp.get_default_memory_pool().free_all_blocks()
    link = with_boundary(link, float(np.median(crossing)) if crossing else None)
    parents = {g.name: layer_group(int(g.name.split(".")[1])) for g in groups if g.kind == "expert"}
    # the workspace grows with the prompt chunk: under a tight cap a shorter chunk can leave room for more groups
    chunks = [max_tokens] + [c for c in (GPU_MIN_PREFILL_CHUNK,) if c < max_tokens]
    return plan_prefill_chunk(groups, link, gpu_budget, parents, chunks,
                              lambda t: gpu_workspace_bytes(cfg, t, max_context),
                              boundary_bytes=4 * cfg.hidden_size, stream_kv_bytes=kv_layer)


def _prepared(tensors: dict[str, Any], kernels: KernelTable) -> dict[str, Any]:
    """``tensors`` in the kernels' own weight layout (what the CPU engine's source hands the kernels)."""
    prepare = getattr(kernels.backend, "prepare_weight", None)
    return {n: prepare(x) if prepare is not None and isinstance(x, QTensor) else x for n, x in tensors.items()}


def _moe_groups(bundle: Bundle, cp: Any, ops: GpuOps, kernels: KernelTable, i: int, why: str, kv_layer: int,
                measured: dict) -> list[GroupCost]:
    """The cost-model groups of MoE layer ``i``: the layer (attention, router, shared expert: its products on
    each side, measured once per shape) and its routed experts (``calls`` = top-k / experts per token each; one
    measurement per expert shape). Neither streams: an expert runs resident on the GPU or on the CPU."""
    cfg = bundle.config
    assert cfg is not None
    name = layer_group(i)
    key = ("moe-layer", _layer_sig(bundle, i))
    if key not in measured:
        t = bundle.read_group(name)
        measured[key] = (cpu_group_seconds(_prepared(t, kernels), kernels),
                         float("inf") if why else gpu_group_seconds(cp, ops, t, 8),
                         sum(gpu_nbytes(x) for x in t.values() if isinstance(x, QTensor)))
    cpu_s, gpu_s, gbytes = measured[key]
    out = [GroupCost(name, "layer", bundle.groups[name].nbytes, int(gbytes) + kv_layer, cpu_s, gpu_s, kv_layer,
                     gpu_ok=not why, why_not=why, streamable=False, stream_gpu_s=gpu_s)]
    calls = cfg.num_experts_per_tok / max(1, cfg.num_experts)
    for e in range(cfg.num_experts):
        g = expert_group(i, e)
        ek = ("expert", tuple(sorted((n[len(expert_prefix(i, e)):], tuple(r["shape"]), r.get("scheme"))
                                     for n, r in ((n, bundle.tensors[n]) for n in bundle.groups[g].tensors))))
        if ek not in measured:
            t = bundle.read_group(g)
            measured[ek] = (cpu_group_seconds(_prepared(t, kernels), kernels), gpu_group_seconds(cp, ops, t, 1),
                            sum(gpu_nbytes(x) for x in t.values() if isinstance(x, QTensor)))
        ecpu, egpu, eb = measured[ek]
        out.append(GroupCost(g, "expert", bundle.groups[g].nbytes, int(eb), ecpu, egpu, gpu_ok=not why,
                             why_not=why, calls=calls, streamable=False, stream_gpu_s=egpu))
    return out


class SplitWeights:
    """A :class:`~edgespool.runtime.decoder.weights.WeightSource` for a split run: the CPU source serves the CPU
    groups (resident or streamed from storage under the host memory budget); :attr:`device_layers` (a
    :class:`~edgespool.offload.gpu_layers.GpuLayers`) computes the GPU ones, which the CPU source never reads."""

    def __init__(self, cpu_source: Any, device_layers: GpuLayers, placement: Placement) -> None:
        self.cpu = cpu_source
        self.config = cpu_source.config
        self.device_layers = device_layers
        self.placement = placement
        self._gpu = set(placement.on_gpu())

    def __getattr__(self, name: str) -> Any:  # plan, bundle, stats ... of the CPU source
        if name in ("cpu", "device_layers", "placement", "_gpu"):
            raise AttributeError(name)
        return getattr(self.cpu, name)

    def get(self, group: str) -> dict[str, QTensor]:
        return self.cpu.get(group)

    def release(self, group: str) -> None:
        self.cpu.release(group)

    def hint(self, groups: list[str]) -> None:
        self.cpu.hint([g for g in groups if g not in self._gpu])

    def on_hidden(self, layer: int, hidden: Any) -> None:
        self.cpu.on_hidden(layer, hidden)

    def head_chunks(self) -> Iterator[tuple[int, QTensor]]:
        return self.cpu.head_chunks()

    def load_all(self) -> None:
        """Read (resident CPU source) every group the CPU computes with; the GPU groups stay out of host memory."""
        cpu_load = getattr(self.cpu, "load_all", None)
        if cpu_load is None:
            return
        for g in self.cpu.bundle.groups:
            if g not in self._gpu:
                self.cpu.get(g)

    def close(self) -> None:
        self.device_layers.close()
        self.cpu.close()


def placed_prefill_chunk(source: Any) -> int:
    """Prompt tokens per forward pass that the GPU workspace of ``source``'s placement was sized for (the planner's
    choice, :func:`~edgespool.schedulers.placement_plan.plan_prefill_chunk`; GPU_PREFILL_CHUNK without one)."""
    pl = getattr(source, "placement", None)
    return int(getattr(pl, "prefill_chunk", 0) or GPU_PREFILL_CHUNK)


def open_split(bundle: Bundle, cpu_source: Any, gpu_budget: int, kernels: KernelTable, *,
               max_context: int | None = None, cpu_layer_s: Callable[..., float] | None = None,
               zero_copy: bool | None = None, moe: bool = False) -> tuple[SplitWeights | None, str]:
    """The split source for ``bundle`` under ``gpu_budget`` bytes, or ``(None, why)`` when no GPU is usable here
    (the caller runs CPU-only and reports ``why``). A budget below the GPU minimum raises BudgetError.
    ``cpu_layer_s``: the CPU engine's layer-step probe (see :func:`plan_split`). ``zero_copy``: GPU-resident
    weights mapped from host memory instead of copied (see GpuLayers). ``moe``: plan MoE layers and their experts
    on the GPU too (offload/gpu_moe.py)."""
    cp, why = gpu_status()
    if cp is None:
        return None, why
    cfg = bundle.config
    assert cfg is not None
    ctx = int(max_context or min(cfg.max_position_embeddings, DEFAULT_GPU_CONTEXT))
    ops = GpuOps(cp, gpu_scratch_bytes(cfg))  # the scratch the workspace reserves
    plan = getattr(cpu_source, "plan", None)
    placement = plan_split(bundle, cp, ops, kernels, gpu_budget, ctx,
                           kv_dtype=getattr(plan, "kv_dtype", None) or "f32", cpu_layer_s=cpu_layer_s, moe=moe)
    streamed = [g for g in placement.groups if g.where == "stream"]
    if len({bundle.groups[g.name].nbytes for g in streamed}) > 1:
        raise BudgetError("the placement streams layers of different sizes; the GPU executor's two staging slots "
                          "take layers of one shape (dense models)")
    if all(g.where == CPU for g in placement.groups):
        return None, ("the placement keeps every group on the CPU (the GPU is not faster for any group at this "
                      "budget)\n" + placement.summary())
    return split_with_placement(bundle, cpu_source, placement, ctx, cp, ops, zero_copy=zero_copy,
                                kernels=kernels), ""


def split_with_placement(bundle: Bundle, cpu_source: Any, placement: Placement, max_context: int,
                         cp: Any = None, ops: GpuOps | None = None, zero_copy: bool | None = None,
                         kernels: KernelTable | None = None) -> SplitWeights:
    """The split source for a given ``placement`` (what :func:`open_split` builds after planning; tests and the
    benchmark also call it with a placement of their own). Needs a usable GPU."""
    if cp is None:
        cp, why = gpu_status()
        if cp is None:
            raise BudgetError(f"no GPU for a split run: {why}")
    assert bundle.config is not None
    ops = ops or GpuOps(cp, gpu_scratch_bytes(bundle.config))
    layers = GpuLayers(cp, ops, bundle.config, placement, lambda g: bundle.read_group(g), max_context, zero_copy,
                       cpu_expert=_cpu_expert(cpu_source, kernels))
    return SplitWeights(cpu_source, layers, placement)


def _cpu_expert(source: Any, kernels: KernelTable | None) -> Callable[[int, int, np.ndarray], np.ndarray]:
    """Routed expert ``e`` of layer ``i`` on the CPU, its weights from ``source`` (resident or streamed), as the
    CPU engine computes it (:meth:`~edgespool.runtime.decoder.engine.Engine._moe`)."""
    from ..kernels.swiglu import swiglu
    from ..kernels.table import REFERENCE

    kern = kernels or REFERENCE

    def run(i: int, e: int, xs: np.ndarray) -> np.ndarray:
        g, pe = expert_group(i, e), expert_prefix(i, e)
        ew = source.get(g)
        try:
            return swiglu(np.ascontiguousarray(xs, np.float32), ew[pe + "gate"], ew[pe + "up"], ew[pe + "down"],
                          kernels=kern)
        finally:
            source.release(g)

    return run
