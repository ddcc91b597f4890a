"""Memory planning for streamed decoding: ``plan_memory(bundle, target, budget) -> MemoryPlan``.

A pure function (ExecuTorch habit): from the bundle's group table, the model config and a byte budget it decides
where every byte goes, and the runtime is held to it (:class:`edgespool.offload.buffer_pool.BufferPool` is sized
from the plan and never grows):

* **pinned** weights, read once at load and never evicted, chosen by bytes saved per token per byte: the head
  (its whole size every token) when it fits beside the window, for MoE models a copy of every router (+ the FFN
  norm it is applied after, for expert prediction), then whole layer groups (for MoE these are attention + norms +
  router + shared expert, so "attention where it fits"), hot experts (only when routing statistics are given)
  and, for dense models, whole layers spread over the depth;
* the **layer window**: ``window_depth + 1`` slots of the largest streamed layer group (the layer being computed and
  up to ``window_depth`` layers read ahead, TPI-LLM style; dense models get depth 1 before any layer is pinned and
  more depth only from memory left after pinning);
* the **expert cache**: ``expert_cache_slots`` slots of the largest expert group (at least ``top-k``);
* the **KV cache** for ``max_context`` positions, the **activation workspace** (engine temporaries for a prefill
  chunk of ``max_batch_tokens`` tokens plus the linear kernels' bounded row-block scratch, an estimate that
  ``edgespool bench`` checks against the measured peak), and a small **I/O staging** area for unaligned reads.

An embedding table that is not pinned is read a row per token (``embed_streamed``); a head that is not pinned goes
through the layer window in row chunks (``head_streamed``; tied: the embedding table, one tensor). The minimum
working set is one layer slot (+ top-k expert slots, router copies) + the KV cache (f16 by default) + the workspace
of an 8-token prefill chunk with last-position logits + staging; a smaller budget raises :class:`BudgetError`
naming that minimum.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import BudgetError, BundleError, OptionError
from ..kernels.attention import SCORE_BYTES, check_kv_dtype, kv_bytes_per_value
from ..kernels.linear import BLOCK_BYTES
from ..kernels.table import REFERENCE, KernelTable
from ..units import fmt_bytes, parse_bytes
from ..runtime.bundle.reader import Bundle
from ..runtime.bundle.constants import ALIGNMENT, align_up
from ..runtime.bundle.config import ModelConfig
from ..runtime.bundle.names import EMBED, FINAL_NORM, HEAD, LM_HEAD, layer_of, layer_prefix, parse_group
from .row_geometry import row_geometry
from .stage_role import StageRole
from ..targets.profiles import TargetProfile

MiB = 1 << 20
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "tb": 1000**4}

IO_STAGING_BYTES = 1 * MiB  # aligned bounce buffer for the few unaligned reads (router copies)
DEFAULT_MAX_WINDOW_DEPTH = 4
DEFAULT_NEURON_CAPACITY = 0.25  # neuron window per bundled FFN layer: a quarter of its neurons


@dataclass(frozen=True)
class MemoryPlan:
    """Where every byte of a streamed run goes. All sizes in bytes; ``total_bytes <= budget_bytes``."""

    budget_bytes: int
    target: str
    arch: str
    model_bytes: int  # the whole weights file (what resident mode keeps in memory)
    # pinned weights
    pinned_groups: tuple[str, ...]  # groups read once at load and kept (embed, head, layers.i, experts)
    pinned_group_bytes: int  # their 4 KiB-aligned sizes, summed
    pinned_tensors: tuple[str, ...]  # extra tensor copies (MoE routers + FFN norms for expert prediction)
    pinned_tensor_bytes: int
    hot_experts: tuple[str, ...]  # expert groups pinned because routing statistics say they are hot
    # streaming
    streamed_layers: tuple[int, ...]  # layer indices whose layers.{i} group goes through the window
    window_depth: int  # max layers read ahead while one computes (slots = depth + 1); 0 = no window
    layer_slot_bytes: int
    expert_cache_slots: int  # expert groups the cache holds besides the pinned ones
    expert_slot_bytes: int
    # runtime state
    max_context: int
    kv_cache_bytes: int
    max_batch_tokens: int
    workspace_bytes: int
    io_staging_bytes: int
    streamed_bytes_per_token: int  # bytes of non-pinned dense layer groups (read once per token)
    notes: tuple[str, ...] = field(default_factory=tuple)
    # neuron windowing (bundles exported with --ffn-layout bundled, offload/neuron_ffn.py): for each FFN layer in
    # ``neuron_layers`` the gate rows are pinned (the exact predictor of which neurons are active) and a window
    # holds ``neuron_capacity`` neuron bundles of ``neuron_bundle_bytes``; only newly active neurons are read
    neuron_layers: tuple[int, ...] = ()
    neuron_capacity: int = 0
    neuron_bundle_bytes: int = 0
    neuron_predictor_bytes: int = 0  # pinned gate rows + the load staging buffer
    # real-vocabulary shapes: the KV format, the model's own context, how embedding and head are served
    kv_dtype: str = "f16"
    model_context: int = 0
    embed_streamed: bool = False  # embedding rows read from storage per token (the table is not pinned)
    head_streamed: bool = False  # the head goes through the layer window in row chunks (not pinned)
    head_tensor: str = ""  # the head's tensor (the embedding table when tied)
    head_chunk_rows: int = 0  # rows of one head chunk (streamed head)
    head_bytes: int = 0  # stored bytes of the head tensor
    embed_row_bytes: int = 0  # stored bytes of one embedding row
    logits_rows: int = 1  # logit rows the workspace holds (1: generation; a chunk for perplexity)
    # bytes of the budget set aside before planning (a speculative draft model and its KV cache, issue 16)
    reserved_bytes: int = 0
    reserved_for: str = ""
    # a pipeline stage's plan (issue 19): only its layers, the embedding / head only where it has them; None: all
    stage: StageRole | None = None

    @property
    def neuron_window_bytes(self) -> int:
        """The neuron windows of every FFN layer (4 KiB-aligned per layer)."""
        return len(self.neuron_layers) * align_up(self.neuron_capacity * self.neuron_bundle_bytes)

    @property
    def layer_slots(self) -> int:
        return self.window_depth + 1 if (self.streamed_layers or self.head_streamed) else 0

    @property
    def window_bytes(self) -> int:
        return self.layer_slots * self.layer_slot_bytes

    @property
    def expert_cache_bytes(self) -> int:
        return self.expert_cache_slots * self.expert_slot_bytes

    @property
    def pool_bytes(self) -> int:
        """Bytes of the one weight buffer pool: pinned groups + pinned tensors + window + expert cache + staging."""
        return (self.pinned_group_bytes + self.pinned_tensor_bytes + self.window_bytes + self.expert_cache_bytes
                + self.io_staging_bytes + self.neuron_predictor_bytes + self.neuron_window_bytes)

    @property
    def total_bytes(self) -> int:
        return self.pool_bytes + self.kv_cache_bytes + self.workspace_bytes + self.reserved_bytes

    @property
    def is_resident(self) -> bool:
        """True when every weight group is pinned (nothing streams)."""
        return (not self.streamed_layers and not self.head_streamed and not self.embed_streamed
                and self.expert_cache_slots == 0 and self.expert_slot_bytes == 0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d.update(layer_slots=self.layer_slots, window_bytes=self.window_bytes,
                 expert_cache_bytes=self.expert_cache_bytes, pool_bytes=self.pool_bytes,
                 total_bytes=self.total_bytes, is_resident=self.is_resident,
                 neuron_window_bytes=self.neuron_window_bytes)
        return d

    def summary(self) -> str:
        """A printable table of the plan (``edgespool run --plan`` / ``bench``)."""
        n_layers_pinned = sum(1 for g in self.pinned_groups if parse_group(g).is_layer)
        n_exp_pinned = sum(1 for g in self.pinned_groups if parse_group(g).kind == "expert")
        rows = [
            ("pinned weights", self.pinned_group_bytes,
             f"{len(self.pinned_groups)} groups: {n_layers_pinned} layers, {n_exp_pinned} experts"
             + "".join(f", {g}" for g in self.pinned_groups if not parse_group(g).is_layer
                       and parse_group(g).kind != "expert")),
            ("pinned router copies", self.pinned_tensor_bytes, f"{len(self.pinned_tensors)} tensors"),
            ("layer window", self.window_bytes,
             f"{self.layer_slots} slots x {fmt_bytes(self.layer_slot_bytes)} (read-ahead depth <= {self.window_depth},"
             f" {len(self.streamed_layers)} streamed layers)"),
            ("expert cache", self.expert_cache_bytes,
             f"{self.expert_cache_slots} slots x {fmt_bytes(self.expert_slot_bytes)}"),
            ("I/O staging", self.io_staging_bytes, "aligned bounce buffer"),
            *([("neuron predictor", self.neuron_predictor_bytes,
                f"gate rows of {len(self.neuron_layers)} FFN layers pinned (exact active sets)"),
               ("neuron windows", self.neuron_window_bytes,
                f"{len(self.neuron_layers)} x {self.neuron_capacity} bundles x {fmt_bytes(self.neuron_bundle_bytes)}")]
              if self.neuron_layers else []),
            ("KV cache", self.kv_cache_bytes,
             f"{self.max_context} positions (model context {self.model_context}), {self.kv_dtype}"),
            ("activation workspace", self.workspace_bytes,
             f"estimate for {self.max_batch_tokens}-token prefill chunks, logits of {self.logits_rows} position(s)"),
            *([("reserved", self.reserved_bytes, self.reserved_for)] if self.reserved_bytes else []),
        ]
        lines = [f"memory plan for {self.arch} ({fmt_bytes(self.model_bytes)} of weights) on {self.target}, "
                 f"budget {fmt_bytes(self.budget_bytes)}:"]
        for name, n, what in rows:
            lines.append(f"  {name:22s} {fmt_bytes(n):>11s}  {what}")
        lines.append(f"  {'total':22s} {fmt_bytes(self.total_bytes):>11s}  "
                     f"({100.0 * self.total_bytes / self.budget_bytes:.0f}% of budget)")
        st = self.stage
        lines.append(f"  embedding: {'rows read per token (' + fmt_bytes(self.embed_row_bytes) + ' a row)' if self.embed_streamed else 'pinned' if st is None or st.embed else 'not on this stage'}"
                     f"; head ({self.head_tensor}, {fmt_bytes(self.head_bytes)}): "
                     + (f"streamed through the window in chunks of {self.head_chunk_rows} rows" if self.head_streamed
                        else "pinned" if st is None or st.head else "not on this stage"))
        lines.append(f"  streamed per token: {fmt_bytes(self.streamed_bytes_per_token)} of dense layers, head and "
                     "embedding rows"
                     + (" + expert misses" if self.expert_slot_bytes else "")
                     + (" + newly active FFN neurons" if self.neuron_layers else ""))
        if self.stage is not None:
            lines.append(f"  {self.stage.describe()} (KV cache and weights of these only)")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def kv_cache_bytes(cfg: ModelConfig, max_context: int, dtype: str | int = "f16") -> int:
    """K and V for every layer and position: ``2 * L * ctx * n_kv * head_dim`` values of ``dtype`` (a
    :data:`~edgespool.kernels.attention.KV_DTYPES` name, or bytes per value), 64-byte aligned."""
    per = float(dtype) if isinstance(dtype, int) else kv_bytes_per_value(dtype)
    return align_up(int(2 * cfg.num_layers * max_context * cfg.num_kv_heads * cfg.head_dim * per), 64)


def workspace_bytes(cfg: ModelConfig, bundle: Bundle, max_batch_tokens: int, max_context: int, *,
                    kernels: KernelTable = REFERENCE, kernel_workspace: int | None = None,
                    kv_dtype: str = "f32", logits_rows: int = 1, head_chunk_rows: int | None = None) -> int:
    """Estimate of the engine's float32 temporaries for one prefill chunk of ``T`` tokens: hidden-state copies,
    q/k/v, the FFN intermediates, the attention scores of the chunk over the context (twice: the masked copy), the
    float32 view of one layer's K/V when the cache is f16 / q8_0, the logits of ``logits_rows`` positions (1 for
    generation: only the last position's logits are computed) plus one head chunk's output, plus the linear
    kernels' bounded scratch (``kernel_workspace`` when given, else ``kernels.workspace_bytes()``) and 4 MiB of
    slack for numpy's small temporaries."""
    kws = kernels.workspace_bytes() if kernel_workspace is None else int(kernel_workspace)
    T, H, S = max_batch_tokens, cfg.hidden_size, max_context
    inter = max(cfg.intermediate_size, cfg.moe_intermediate_size * max(1, cfg.num_experts_per_tok),
                cfg.shared_expert_intermediate_size)
    q = cfg.num_heads * cfg.head_dim
    kv = cfg.num_kv_heads * cfg.head_dim
    per_tok = 8 * H + q + 2 * kv + 3 * inter
    scores = 2 * min(T * cfg.num_heads * S, SCORE_BYTES // 4 + cfg.num_heads * S)
    kv_view = 0 if kv_dtype == "f32" else 2 * kv * S
    rows = max(1, min(logits_rows, T))
    chunk = cfg.vocab_size if head_chunk_rows is None else min(cfg.vocab_size, head_chunk_rows)
    logits = rows * (cfg.vocab_size + chunk)
    return align_up(4 * (T * per_tok + scores + kv_view + logits) + kws + 4 * MiB)


def _neuron_memory(bundle: Bundle, ffn_groups: list[str], capacity: float | int) -> tuple[int, int, int, int]:
    """(bundles per layer window, bundle bytes, pinned gate rows + load staging bytes, total) of the neuron windows of the
    bundled FFN groups (all zero when there are none)."""
    if not ffn_groups:
        return 0, 0, 0, 0
    from ..runtime.bundle.ffn_geometry import BundleGeometry, ffn_tensor, load_staging_bytes

    geos = [BundleGeometry.from_record(ffn_tensor(layer_of(g)), bundle.tensors[ffn_tensor(layer_of(g))])
            for g in ffn_groups]
    neurons = max(g.neurons for g in geos)
    if isinstance(capacity, float):
        if not 0 < capacity <= 1:
            raise OptionError(f"neuron capacity {capacity}: a fraction must be in (0, 1]")
        cap = max(1, min(neurons, int(-(-capacity * neurons // 1))))
    else:
        if capacity < 1:
            raise OptionError(f"neuron capacity {capacity}: must be >= 1 neuron")
        cap = min(neurons, int(capacity))
    bundle_bytes = max(g.bundle_bytes for g in geos)
    pred = sum(gate_rows_bytes(g) for g in geos) + load_staging_bytes(bundle_bytes)
    return cap, bundle_bytes, pred, pred + len(geos) * align_up(cap * bundle_bytes)


def gate_rows_bytes(geo: Any) -> int:
    """Pinned bytes of one layer's gate rows (data + scales, each 4 KiB-aligned) for the exact predictor."""
    return align_up(geo.neurons * geo.data_bytes) + (align_up(geo.neurons * geo.scale_bytes) if geo.scale_bytes else 0)


def minimum_budget(bundle: Bundle, target_profile: TargetProfile | None = None, **plan_options: Any) -> int:
    """The smallest budget :func:`plan_memory` accepts for ``bundle`` with these options (bytes)."""
    try:
        plan_memory(bundle, target_profile, 1, **plan_options)
    except BudgetError as e:
        if hasattr(e, "minimum"):
            return int(e.minimum)  # type: ignore[attr-defined]
        raise
    return 1


def plan_memory(bundle: Bundle, target_profile: TargetProfile | None, budget_bytes: int | str, *,
                max_context: int | None = None, max_batch_tokens: int = 256,
                max_window_depth: int = DEFAULT_MAX_WINDOW_DEPTH, hot_experts: list[str] | None = None,
                workspace: int | None = None, neuron_capacity: float | int = DEFAULT_NEURON_CAPACITY,
                kernels: KernelTable = REFERENCE, kv_dtype: str = "f16", logits_rows: int = 1,
                reserved_bytes: int = 0, reserved_for: str = "", stage: StageRole | None = None) -> MemoryPlan:
    """Plan a streamed run of ``bundle`` in ``budget_bytes`` (an int or a size string such as ``"512MiB"``).

    ``max_context``: KV cache positions (default: what the budget allows, up to the model's context: the largest
    length whose KV cache takes at most half of the memory above the context-free minimum). ``kv_dtype``: f16
    (default), f32 or q8_0. ``max_batch_tokens``: the largest prefill chunk (the plan shrinks it when the budget
    is tight). ``logits_rows``: logit rows the workspace holds (1 for generation). ``hot_experts``: expert groups to
    pin first (e.g. from routing statistics); without them all expert memory is an adaptive cache. ``workspace``
    overrides the activation-workspace estimate. ``reserved_bytes`` (``reserved_for`` says what: a draft model) come
    off the budget first and count in the plan's total. ``neuron_capacity``: bundles with row-column bundled FFNs keep this
    many neurons per layer in memory (a float in (0, 1]: that fraction of the layer's neurons). ``stage``: plan one
    pipeline stage only (its layers, the embedding only on the first stage, the head only on the last; a KV cache of
    its layers).

    What is pinned is chosen by bytes saved per token per byte of memory: a pinned layer or a pinned head saves its
    whole size every token (ratio 1), a pinned embedding table saves one row per token (ratio 1 / vocabulary), so the
    head is pinned first when it fits next to the window, then layers, and the embedding table only when the
    whole model fits. Raises BudgetError naming the minimum when the budget is below the minimum working set,
    OptionError for a context longer than the model's or a KV dtype the kernels lack.
    """
    cfg = bundle.config
    if cfg is None:
        raise BudgetError(f"{bundle.path}: memory planning needs a decoder bundle (kind={bundle.kind!r})")
    budget_total = parse_bytes(budget_bytes, "--memory-budget")
    reserved = max(0, int(reserved_bytes))
    budget = budget_total - reserved  # what this model's own plan may use
    check_kv_dtype(kv_dtype, cfg.head_dim)
    model_ctx = int(cfg.max_position_embeddings)
    if max_context is not None:
        if int(max_context) < 1:
            raise OptionError(f"--max-context {max_context}: must be >= 1 token")
        if int(max_context) > model_ctx:
            raise OptionError(f"--max-context {max_context} is longer than the context of {bundle.path.name} "
                              f"({model_ctx} tokens)")
    groups = bundle.groups
    tied = cfg.tie_word_embeddings or LM_HEAD not in bundle.tensors
    no_head = stage is not None and not stage.head  # a pipeline stage before the last: no final norm, no head
    if stage is not None:
        stage.check(cfg.num_layers)
        groups = {g: info for g, info in groups.items() if stage.has_group(g, tied)}
    kv_cfg = cfg if stage is None else replace(cfg, num_layers=stage.num_layers)
    gsize = {g: align_up(info.nbytes) for g, info in groups.items()}
    kinds = {g: parse_group(g).kind for g in groups}
    ffn_groups = [g for g in groups if kinds[g] == "ffn_bundled"]
    layer_groups = [g for g in groups if kinds[g] == "layer"]
    expert_groups = [g for g in groups if kinds[g] == "expert"]
    notes: list[str] = []

    # the edges: embedding rows (per token), the head (row chunks through the window) and the final norm
    head_t = EMBED if tied else LM_HEAD
    eg, hg = row_geometry(bundle, EMBED), row_geometry(bundle, head_t)
    head_pin_bytes = gsize.get(HEAD, 0) + (gsize.get(EMBED, 0) if tied else 0)  # what pinning the head pins
    norm_copy = align_up(4 * _numel(bundle.tensors[FINAL_NORM]["shape"]), 64)
    if no_head:
        head_pin_bytes = norm_copy = 0

    # float32 copies of every MoE layer's router + FFN norm: the predictor applies layer i+1's router to layer i's
    # hidden state (read once at load through the staging buffer)
    router_tensors: list[str] = []
    if expert_groups:
        for g in layer_groups:
            p = layer_prefix(parse_group(g).layer)
            if p + "router" in bundle.tensors:
                router_tensors += [p + "router", p + "ffn_norm"]
    router_bytes = align_up(sum(align_up(4 * _numel(bundle.tensors[t]["shape"]), 64) for t in router_tensors))
    staging = max(IO_STAGING_BYTES if router_tensors else 0,
                  eg.max_read_bytes(1) if stage is None or stage.embed else 0,
                  align_up(int(bundle.tensors[FINAL_NORM]["nbytes"])) if not no_head else 0,
                  max((align_up(int(bundle.tensors[t]["nbytes"])) for t in router_tensors), default=0))
    layer_slot = max((gsize[g] for g in layer_groups), default=0)
    if not layer_groups:  # no layer to share the window with: slots sized for head chunks of 2 MiB
        layer_slot = min(align_up(hg.nbytes) + 3 * ALIGNMENT, 2 * MiB)
    rows_per_block = max(1, BLOCK_BYTES // (4 * hg.width))  # the reference kernel's row blocks: chunks align to them
    chunk_rows = hg.rows_fitting(layer_slot, rows_per_block)
    if chunk_rows < 1 and not no_head:
        raise BundleError(f"{bundle.path}: one row of {head_t!r} ({hg.row_bytes} bytes) does not fit a layer slot "
                          f"of {layer_slot} bytes")
    expert_slot = max((gsize[g] for g in expert_groups), default=0)
    topk = max(1, cfg.num_experts_per_tok) if expert_groups else 0
    n_cap, n_bundle, n_pred, n_bytes = _neuron_memory(bundle, ffn_groups, neuron_capacity)

    def ws_of(T: int, ctx: int) -> int:
        if workspace is not None:
            return align_up(workspace)
        if no_head:  # no logits on this stage
            return workspace_bytes(replace(cfg, vocab_size=0), bundle, T, ctx, kernels=kernels, kv_dtype=kv_dtype,
                                   logits_rows=1, head_chunk_rows=0)
        return workspace_bytes(cfg, bundle, T, ctx, kernels=kernels, kv_dtype=kv_dtype,
                               logits_rows=logits_rows, head_chunk_rows=chunk_rows)

    def minimum_at(ctx: int, T: int) -> int:
        return (kv_cache_bytes(kv_cfg, ctx, kv_dtype) + ws_of(T, ctx) + staging + norm_copy + router_bytes + n_bytes
                + layer_slot + topk * expert_slot)

    # the KV length: given, or what the budget allows up to the model's context
    t_min = max(1, min(8, max_batch_tokens))
    if max_context is None:
        base = minimum_at(0, t_min)
        room = (budget - base) // 2
        lo, hi = 0, model_ctx
        while lo < hi:  # the largest ctx whose KV + context-dependent workspace fits in `room`
            mid = (lo + hi + 1) // 2
            if minimum_at(mid, t_min) - base <= room:
                lo = mid
            else:
                hi = mid - 1
        ctx = lo if lo < 256 or lo == model_ctx else lo - lo % 256
        if ctx < 1:
            ctx = min(model_ctx, 256)  # below the minimum: report the minimum at a short context
        if ctx < model_ctx:
            notes.append(f"KV length {ctx}: what half the memory above the minimum allows (model context "
                         f"{model_ctx}); --max-context sets it")
    else:
        ctx = int(max_context)
    t_min = max(1, min(t_min, ctx))
    minimum = minimum_at(ctx, t_min)
    kv = kv_cache_bytes(kv_cfg, ctx, kv_dtype)
    if budget < minimum:
        err = BudgetError(
            f"memory budget {fmt_bytes(budget_total)}"
            + (f" less {fmt_bytes(reserved)} for {reserved_for or 'reserved memory'}" if reserved else "")
            + f" is below the minimum working set of {bundle.path.name} "
            f"({fmt_bytes(minimum)} = {minimum} bytes at {ctx} tokens of context: one layer slot "
            f"{fmt_bytes(layer_slot)}" + (f", {topk} experts {fmt_bytes(topk * expert_slot)}, router copies "
                                          f"{fmt_bytes(router_bytes)}" if topk else "")
            + f", KV cache {fmt_bytes(kv)} ({kv_dtype}), workspace {fmt_bytes(ws_of(t_min, ctx))}, I/O staging "
            f"{fmt_bytes(staging)}" + (f", neuron windows + pinned gate rows {fmt_bytes(n_bytes)}" if n_bytes else "")
            + (f"; {stage.describe()}" if stage is not None else "")
            + f"; embedding rows and the head stream); raise the budget to at least {fmt_bytes(minimum + reserved)} or lower "
            "--max-context" + (" or the neuron capacity" if n_bytes else ""))
        err.minimum = minimum + reserved  # type: ignore[attr-defined]
        raise err
    # the prefill chunk: as long as asked while its workspace takes at most a quarter of the memory left
    T = max(t_min, min(max_batch_tokens, ctx))
    while T > t_min and ws_of(T, ctx) - ws_of(t_min, ctx) > (budget - minimum) // 4:
        T = max(t_min, T // 2)
    ws = ws_of(T, ctx)
    target = target_profile.name if target_profile else "host"
    common = dict(budget_bytes=budget_total, reserved_bytes=reserved, reserved_for=reserved_for, target=target,
                  arch=cfg.arch, model_bytes=bundle.weights_nbytes,
                  max_context=ctx, kv_cache_bytes=kv, max_batch_tokens=T, workspace_bytes=ws,
                  kv_dtype=kv_dtype, model_context=model_ctx, head_tensor=head_t, head_bytes=hg.nbytes,
                  embed_row_bytes=eg.row_bytes, logits_rows=logits_rows, stage=stage)

    # Whole model fits: pin everything.
    all_bytes = sum(gsize.values())
    res_staging = max(IO_STAGING_BYTES, staging) if router_tensors else staging
    if kv + ws + res_staging + router_bytes + n_bytes + all_bytes - sum(gsize[g] for g in ffn_groups) <= budget \
            and not ffn_groups:
        return MemoryPlan(
            **common, pinned_groups=tuple(groups), pinned_group_bytes=all_bytes,
            pinned_tensors=tuple(router_tensors), pinned_tensor_bytes=router_bytes, hot_experts=(),
            streamed_layers=(), window_depth=0, layer_slot_bytes=0, expert_cache_slots=0, expert_slot_bytes=0,
            io_staging_bytes=res_staging, streamed_bytes_per_token=0,
            notes=("the whole model fits in the budget: every group is pinned, nothing streams",))

    # Every layer and the head fit, the embedding table does not (an untied model, or a first pipeline stage):
    # pin all of them and read only the token's embedding row (no layer window needed).
    embed_sep = gsize.get(EMBED, 0) if no_head or not tied else 0  # a tied head IS the table
    if embed_sep and not expert_groups and not ffn_groups \
            and kv + ws + staging + norm_copy + router_bytes + all_bytes - embed_sep <= budget:
        keep = [g for g in groups if g != EMBED]
        return MemoryPlan(
            **common, pinned_groups=tuple(keep), pinned_group_bytes=all_bytes - embed_sep,
            pinned_tensors=(), pinned_tensor_bytes=0, hot_experts=(), streamed_layers=(), window_depth=0,
            layer_slot_bytes=0, expert_cache_slots=0, expert_slot_bytes=0, io_staging_bytes=staging,
            streamed_bytes_per_token=eg.read_bytes(0, 1), embed_streamed=True,
            notes=("every layer" + ("" if no_head else " and the head") + " fits: all pinned, only the token's "
                   "embedding row is read",))

    free = budget - (kv + ws + staging + norm_copy + router_bytes + n_bytes)
    pinned: list[str] = []
    streamed = list(layer_groups)
    hot: list[str] = []
    head_pinned = False

    if expert_groups:
        # 1. top-k expert slots and one layer slot are mandatory (checked above); 2. the head, then layer groups
        # (attention, norms, router, shared expert: needed every token) while a depth-1 window for the rest still
        # fits; 3. hot experts; 4. the rest is expert cache.
        free -= topk * expert_slot

        def window_cost(rest: list[str], head_streams: bool) -> int:
            n = min(2, len(rest) + (1 if head_streams else 0))
            return max(1, n) * max([gsize[s] for s in rest] + [layer_slot if head_streams else 0])

        if no_head or free - head_pin_bytes - window_cost(streamed, False) >= 0:
            free -= head_pin_bytes
            head_pinned = True
        for g in sorted(layer_groups, key=lambda g: gsize[g]):
            rest = [s for s in streamed if s != g]
            if free - gsize[g] - window_cost(rest, not head_pinned) >= 0:
                free -= gsize[g]
                pinned.append(g)
                streamed.remove(g)
        n_items = len(streamed) + (0 if head_pinned else 1)
        slot = max([gsize[s] for s in streamed] + [0 if head_pinned else layer_slot])
        slots = min(2, n_items)
        if free < slots * slot:  # only the mandatory single slot fits
            slots = min(1, n_items)
        free -= slots * slot
        layer_slot = slot
        for g in (hot_experts or []):
            if g not in expert_groups:
                raise BudgetError(f"hot expert {g!r} is not an expert group of {bundle.path.name}")
            if gsize[g] <= free:
                free -= gsize[g]
                pinned.append(g)
                hot.append(g)
        n_cache = min(topk + max(0, free // expert_slot), len(expert_groups) - len(hot))
        if n_cache + len(hot) >= len(expert_groups):
            notes.append("every expert fits: the expert cache holds all experts after first use")
        if not hot:
            notes.append("no routing statistics given: all expert memory is an adaptive (recency+frequency) cache")
        depth = max(0, slots - 1)
    else:
        # Dense: a window of 2 slots (depth 1: while layer i computes, i+1 is read), then the head when it fits
        # (its whole size saved every token), then whole layers spread over the depth (each pinned layer is bytes
        # not read per token: measured, a pinned layer is worth more than a third slot, which only absorbs compute
        # jitter), then more depth from what is left.
        # (a head no larger than a slot goes before the second slot: it saves bytes, the slot only overlap)
        small_head = head_pin_bytes <= layer_slot
        if no_head or (small_head and free - layer_slot >= head_pin_bytes):
            free -= head_pin_bytes
            head_pinned = True
        slots = 1 + min(1, max(0, free // layer_slot - 1), max_window_depth)
        rest = free - slots * layer_slot
        if not head_pinned and rest >= head_pin_bytes:
            rest -= head_pin_bytes
            head_pinned = True
        n_pin = max(0, min(len(layer_groups) - (slots if head_pinned else slots - 1), rest // max(1, layer_slot)))
        if n_pin:
            step = len(layer_groups) / n_pin
            for i in sorted({min(len(layer_groups) - 1, int(k * step + step / 2)) for k in range(n_pin)}):
                g = layer_groups[i]
                pinned.append(g)
                streamed.remove(g)
                rest -= gsize[g]
        n_items = len(streamed) + (0 if head_pinned else 1)
        while rest >= layer_slot and slots - 1 < max_window_depth and slots < n_items:
            slots += 1
            rest -= layer_slot
        if streamed:
            layer_slot = max(gsize[s] for s in streamed)
        slots = min(slots, n_items)
        depth = max(0, slots - 1)
        n_cache = 0
        expert_slot = 0
        router_tensors = []
        router_bytes = 0
    head_streamed = not head_pinned
    if head_pinned and not no_head:
        pinned = [EMBED, HEAD] + pinned if tied else [HEAD] + pinned
    embed_streamed = EMBED not in pinned and (stage is None or stage.embed)
    if head_streamed:
        chunk_rows = hg.rows_fitting(layer_slot, rows_per_block)
    if (streamed or head_streamed) and depth == 0:
        notes.append("window depth 0: no read-ahead fits, every layer read waits (raise the budget for overlap)")
    pinned_bytes = sum(gsize[g] for g in pinned)
    stream_bytes = sum(groups[g].nbytes for g in streamed)
    if head_streamed:
        stream_bytes += sum(hg.read_bytes(r, min(hg.rows, r + chunk_rows)) for r in range(0, hg.rows, chunk_rows))
    if embed_streamed:
        stream_bytes += eg.read_bytes(0, 1)
    pinned_tensor_list = tuple(router_tensors) + ((FINAL_NORM,) if head_streamed else ())
    return MemoryPlan(
        **common, pinned_groups=tuple(pinned), pinned_group_bytes=pinned_bytes,
        pinned_tensors=pinned_tensor_list, pinned_tensor_bytes=router_bytes + (norm_copy if head_streamed else 0),
        hot_experts=tuple(hot), streamed_layers=tuple(layer_of(g) for g in streamed), window_depth=depth,
        layer_slot_bytes=layer_slot if (streamed or head_streamed) else 0, expert_cache_slots=n_cache,
        expert_slot_bytes=expert_slot, io_staging_bytes=staging, streamed_bytes_per_token=stream_bytes,
        notes=tuple(notes), neuron_layers=tuple(layer_of(g) for g in ffn_groups), neuron_capacity=n_cap,
        neuron_bundle_bytes=n_bundle, neuron_predictor_bytes=n_pred,
        embed_streamed=embed_streamed, head_streamed=head_streamed, head_chunk_rows=chunk_rows if head_streamed else 0)
