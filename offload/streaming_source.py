"""StreamingWeights: the :class:`~edgespool.runtime.decoder.weights.WeightSource` that runs a model in a memory budget.

It combines the pieces of :mod:`edgespool.offload` under one :class:`~edgespool.schedulers.memory_plan.MemoryPlan`:

* one :class:`BufferPool` sized by the plan (pinned region + ``layer`` slots + ``expert`` slots); no weight byte
  lives anywhere else;
* a :class:`WeightStore` doing the reads (O_DIRECT, background threads, priority by when a group is needed);
* the plan's pinned groups, read once at load;
* a :class:`LayerWindow` for the streamed ``layers.{i}`` groups;
* for bundles with row-column bundled FFNs (``--ffn-layout bundled``) a :class:`NeuronFFN`: neuron windows that
  read only newly active neurons, with the exact predictor (gate rows pinned);
* for MoE models an :class:`ExpertCache` plus an :class:`ExpertPredictor` driven by ``on_hidden``: the current
  layer's exact experts are read at once, in parallel (*lookahead*), and the next MoE layer's likely experts are
  read one layer ahead (*prediction*).

Exactness: every tensor handed out holds exactly the bytes of the weights file (the same bytes
:class:`~edgespool.runtime.decoder.weights.ResidentWeights` holds), and an unfinished or failed read is never handed out;
a cache miss or a wrong prediction only costs time.

The engine's contract: ``get(g)`` returns tensors valid until ``release(g)``; at most one layer group and the
plan's expert slots may be held at once (holding more raises :class:`PoolExhausted`, a bug).
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np

from ..errors import BudgetError, BundleError
from ..kernels.quant import QTensor
from ..kernels.table import REFERENCE, KernelTable
from ..runtime.bundle.reader import Bundle
from ..runtime.bundle.constants import align_up
from ..runtime.bundle.config import ModelConfig
from ..runtime.bundle.ffn_geometry import ffn_group, ffn_tensor
from ..runtime.bundle.names import (EMBED, FINAL_NORM, HEAD, expert_group, is_expert_group, layer_group, layer_of,
                                    parse_group)
from ..schedulers.row_geometry import row_geometry
from ..schedulers.memory_plan import MemoryPlan, plan_memory
from ..targets.profiles import get_target
from .buffer_pool import BufferPool
from .expert_cache import ExpertCache
from .expert_predictor import ExpertPredictor
from .layer_window import HeadStream, LayerWindow
from .neuron_ffn import NeuronFFN
from .weight_store import WeightStore


class StreamingWeights:
    """Weights of ``bundle`` streamed under ``plan`` (see the module docstring).

    Options: ``io_threads`` (I/O threads, default 2), ``direct`` (None: O_DIRECT when the filesystem allows it;
    True: require it; False: buffered + DONTNEED), ``verify`` (``"first"``: CRC-check each group's first read;
    True: every read; False: none), ``rate_limiter`` (an object
    with ``acquire(nbytes)``, for emulated bandwidth), ``predict`` (next-layer expert prediction), ``lookahead``
    (read the current layer's routed experts in parallel as soon as ``on_hidden`` gives the hidden state),
    ``cache_policy`` (``lrfu`` or ``lru``), ``adaptive_window`` (TPI-LLM depth adaptation; False = always the
    plan's depth), ``read_timeout_s``, ``fault`` (a read fault hook for tests), ``kernels`` (the model's
    :class:`~edgespool.kernels.table.KernelTable`: the neuron windows compute with it, as the engine does).
    """

    def __init__(self, bundle: Bundle, plan: MemoryPlan, *, io_threads: int = 2, direct: bool | None = None,
                 verify: bool | str = "first", rate_limiter: Any = None, predict: bool = True, lookahead: bool = True,
                 cache_policy: str = "lrfu", adaptive_window: bool = True, read_timeout_s: float | None = None,
                 fault=None, predict_extra: int = 0, predict_min_prob: float = 0.3, neuron_window: int = 5,
                 neuron_io_threads: int = 4, kernels: KernelTable = REFERENCE) -> None:
        if bundle.config is None:
            raise BundleError(f"{bundle.path}: streaming needs a decoder bundle")
        self.config: ModelConfig = bundle.config
        self.bundle = bundle
        self.plan = plan
        self.kernels = kernels
        self._check_plan()
        slots = {"layer": (plan.layer_slot_bytes, plan.layer_slots),
                 "expert": (plan.expert_slot_bytes, plan.expert_cache_slots)}
        self.pool = BufferPool(plan.pinned_group_bytes + plan.pinned_tensor_bytes + plan.io_staging_bytes
                               + plan.neuron_predictor_bytes + plan.neuron_window_bytes, slots)
        kw = {} if read_timeout_s is None else {"read_timeout_s": read_timeout_s}
        self.store = WeightStore(bundle, io_threads=io_threads, direct=direct, verify=verify,
                                 rate_limiter=rate_limiter, fault=fault, **kw)
        self._step = 0
        self._layer = 0
        self._last_layer_get = -1
        self._n_layers = self.config.num_layers if plan.stage is None else plan.stage.num_layers  # layers run a step
        self.lookahead = lookahead
        self._staging: np.ndarray | None = None
        self._embed_geo = row_geometry(bundle, EMBED)
        self._head_geo = row_geometry(bundle, plan.head_tensor or EMBED)
        self._final_norm: np.ndarray | None = None
        try:
            t0 = time.perf_counter()
            self._pinned = self._read_pinned()
            self._staging = self.pool.alloc_pinned(plan.io_staging_bytes)
            if plan.head_streamed:
                self._final_norm = self._pinned_f32(FINAL_NORM)
            if verify is not False:  # tensors read only in row ranges: CRC-checked once, now, through a slot
                self._verify_row_tensors()
            self.neurons: NeuronFFN | None = None
            if plan.neuron_layers:  # row-column bundled FFNs: neuron windows with the exact predictor
                self.neurons = NeuronFFN(bundle, self.store, self.pool, plan.neuron_layers, plan.neuron_capacity,
                                         window=neuron_window, io_threads=neuron_io_threads,
                                         verify=verify is not False, act=self.config.hidden_act,
                                         kernels=kernels)
            self.load_s = time.perf_counter() - t0
            head = HeadStream(self.store, self._head_geo, plan.head_chunk_rows) if plan.head_streamed else None
            self.window = LayerWindow(self.store, self.pool, plan.streamed_layers, self.config.num_layers,
                                      adaptive=adaptive_window, clock=self.clock, head=head)
            self.cache: ExpertCache | None = None
            self.predictor: ExpertPredictor | None = None
            if self.config.is_moe:
                hot = {g: self._pinned[g] for g in self._pinned if is_expert_group(g)}
                run = range(self.config.num_layers) if plan.stage is None else range(plan.stage.start, plan.stage.stop)
                n_moe = sum(1 for i in run if self.config.is_moe_layer(i))
                self.cache = ExpertCache(self.store, self.pool, hot, policy=cache_policy, clock=self.clock,
                                         working_set=n_moe * self.config.num_experts_per_tok,
                                         num_layers=self.config.num_layers)
                routers = self._read_routers()
                if routers:
                    self.predictor = ExpertPredictor(self.config, routers, extra=predict_extra,
                                                     min_prob=predict_min_prob)
            self.predict = predict and self.predictor is not None
            self.window.prefetch()  # the first streamed layers start reading while the prompt is prepared
        except BaseException:
            self.store.close()
            raise

    # -- load ---------------------------------------------------------------------------------------------------
    def _check_plan(self) -> None:
        b, p = self.bundle, self.plan
        for g in p.pinned_groups:
            if g not in b.groups:
                raise BudgetError(f"memory plan pins group {g!r} that {b.path} does not have (plan made for another "
                                  "bundle?)")
        for i in p.streamed_layers:
            g = layer_group(i)
            if g not in b.groups or align_up(b.groups[g].nbytes) > p.layer_slot_bytes:
                raise BudgetError(f"memory plan does not fit group {g!r} of {b.path} (plan made for another bundle?)")
        if b.config is not None and b.config.is_moe:
            own = [g for g in b.groups if is_expert_group(g) and (p.stage is None or p.stage.has_group(g, False))]
            biggest = max(align_up(b.groups[g].nbytes) for g in own)
            pinned = set(p.pinned_groups)
            all_pinned = all(g in pinned for g in own)
            if not all_pinned and (biggest > p.expert_slot_bytes or p.expert_cache_slots < 1):
                raise BudgetError(f"memory plan has no expert slots fitting {b.path} (plan made for another bundle?)")
        covered = (set(p.pinned_groups) | {layer_group(i) for i in p.streamed_layers}
                   | {ffn_group(i) for i in p.neuron_layers} | ({EMBED} if p.embed_streamed else set())
                   | ({HEAD} if p.head_streamed else set())
                   | ({EMBED} if p.head_streamed and p.head_tensor == EMBED else set()))
        if p.head_streamed and not p.layer_slots:
            raise BudgetError(f"memory plan streams the head of {b.path} but has no window slot for it")
        tied = p.head_tensor == EMBED
        missing = [g for g in b.groups if parse_group(g).kind != "expert" and g not in covered
                   and (p.stage is None or p.stage.has_group(g, tied))]  # a pipeline stage: only its own groups
        if missing:
            raise BudgetError(f"memory plan covers neither pinning nor streaming of {missing[:3]} in {b.path}")

    def _read_pinned(self) -> dict[str, dict[str, QTensor]]:
        futs = []
        self._pinned_bufs: dict[str, np.ndarray] = {}
        for g in self.plan.pinned_groups:
            buf = self.pool.alloc_pinned(self.store.read_nbytes(g))
            self._pinned_bufs[g] = buf
            futs.append((g, self.store.submit(g, buf, float("-inf"))))
        return {g: self.store.wait(g, f).tensors for g, f in futs}

    def set_prepare(self, fn) -> None:
        """When the plan pins EVERY layer of the run (a share that fits; only embedding rows or the head may
        stream), repack the dense layer groups into the kernels' layout (``fn``: their ``prepare_weight``) inside
        their own pool regions (:func:`~edgespool.offload.pinned_repack.repack_in_place`): the resident engine's
        layout and numbers (its logits within 1e-5). A plan that streams layers keeps every layer stored: one
        layout for all layers of a run, because the two layouts' products differ by ~1e-6 (float summation order)
        and the int8 activation rounding of later layers amplifies that (0.5 logits on SmolLM2 after 30 layers), so
        runs that pin different layers (a board and its stages) would no longer agree. Embedding, head and
        experts stay stored."""
        from ..runtime.bundle.names import parse_group
        from .pinned_repack import repack_in_place

        if fn is None or self.plan.streamed_layers or self.plan.neuron_layers:
            return
        for g in list(self._pinned):
            if g not in self._pinned_bufs or parse_group(g).kind != "layer":
                continue
            got = repack_in_place(self._pinned[g], self._pinned_bufs[g], fn)
            if got is not None:
                self._pinned[g] = got

    def _pinned_f32(self, name: str) -> np.ndarray:
        """A float32 copy of tensor ``name`` in the pinned region, read through the staging buffer."""
        assert self._staging is not None
        f32 = self.store.read_tensor(name, self._staging).dequantize()
        dest = self.pool.alloc_pinned(f32.nbytes, 64).view(np.float32).reshape(f32.shape)
        dest[...] = f32
        return dest

    def _verify_row_tensors(self) -> None:
        """CRC-check the streamed embedding table and head once (their per-token reads are row ranges)."""
        geos = []
        if self.plan.embed_streamed:
            geos.append(self._embed_geo)
        if self.plan.head_streamed and self._head_geo.tensor != self._embed_geo.tensor:
            geos.append(self._head_geo)
        if not geos:
            return
        slot = self.pool.alloc("layer") if self.plan.layer_slots else None
        try:
            buf = slot.buf if slot is not None else self._staging
            assert buf is not None
            for g in geos:
                self.store.verify_tensor(g, buf)
        finally:
            if slot is not None:
                self.pool.free(slot)

    def _read_routers(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        names = [n for n in self.plan.pinned_tensors if n != FINAL_NORM]
        if not names:
            return {}
        staging = self._staging
        out: dict[int, list[np.ndarray]] = {}
        for name in names:
            qt = self.store.read_tensor(name, staging)
            f32 = qt.dequantize()
            dest = self.pool.alloc_pinned(f32.nbytes, 64).view(np.float32).reshape(f32.shape)
            dest[...] = f32
            out.setdefault(layer_of(name), []).append(dest)
        return {i: (v[0], v[1]) for i, v in out.items()}

    # -- clock ----------------------------------------------------------------------------------------------------
    def clock(self) -> float:
        """Model time in forward passes (step + layer fraction): recency for the cache, need time for I/O."""
        return self._step + self._layer / max(1, self.config.num_layers)

    # -- WeightSource ---------------------------------------------------------------------------------------------
    @staticmethod
    def _parse(group: str) -> tuple[int | None, bool]:
        n = parse_group(group)
        return n.layer, n.layer is not None and not n.is_layer

    def get(self, group: str) -> dict[str, QTensor]:
        """Tensors of ``group`` (blocking until they are in memory); valid until :meth:`release`."""
        layer, is_expert = self._parse(group)
        if layer is not None and not is_expert:
            if layer < self._last_layer_get or self._last_layer_get < 0 or self._n_layers == 1:
                self._step += 1
            self._last_layer_get = self._layer = layer
        t = self._pinned.get(group)
        if t is not None:
            if layer is not None and not is_expert:
                self.window.advance(layer)
            return t
        if layer is None or group not in self.bundle.groups:
            raise BundleError(f"{self.bundle.path}: no weight group {group!r}")
        if self.neurons is not None and group == ffn_group(layer):
            return {ffn_tensor(layer): self.neurons.view(layer)}
        if is_expert:
            assert self.cache is not None
            return self.cache.get(group)
        return self.window.get(layer)

    def embed_rows(self, tokens: np.ndarray) -> np.ndarray:
        """float32 embedding rows ``[T, H]`` of ``tokens``: from the pinned table, or read from storage one row at a
        time (the row's 4 KiB-aligned span of each part through the staging buffer)."""
        t = self._pinned.get(EMBED)
        if t is not None:
            return t[EMBED].rows(tokens)
        assert self._staging is not None
        geo = self._embed_geo
        toks = np.asarray(tokens).reshape(-1)
        uniq, where = np.unique(toks, return_inverse=True)  # a token repeated in the prompt is read once
        rows = np.empty((len(uniq), geo.width), np.float32)
        for i, tok in enumerate(uniq):
            qt = self.store.read_rows(geo, int(tok), int(tok) + 1, self._staging, f"embedding row {int(tok)}")
            rows[i] = qt.dequantize()[0]
        return rows[where.reshape(-1)]

    def head_norm(self) -> np.ndarray:
        """The final norm's weight (float32)."""
        if self._final_norm is not None:
            return self._final_norm
        return self._pinned[HEAD][FINAL_NORM].dequantize()

    def head_chunks(self) -> Iterator[tuple[int, QTensor]]:
        """The head as ``(first row, rows)`` pieces in row order: the pinned tensor whole, or the streamed head's
        row chunks through the layer window (each valid until the next one is asked for)."""
        p = self.plan
        if not p.head_streamed:
            g = EMBED if p.head_tensor == EMBED else HEAD
            yield 0, self._pinned[g][p.head_tensor]
            return
        L = self.config.num_layers
        for c in range(-(-self._head_geo.rows // p.head_chunk_rows)):
            self._layer = L
            t = self.window.get(L + c)
            try:
                yield c * p.head_chunk_rows, t[p.head_tensor]
            finally:
                self.window.release(L + c)

    def release(self, group: str) -> None:
        """The engine is done with ``group`` for this step; its slot may be reused."""
        if group in self._pinned:
            return
        layer, is_expert = self._parse(group)
        if layer is None:
            return
        if is_expert:
            if self.cache is not None:
                self.cache.release(group)
        else:
            self.window.release(layer)

    def hint(self, groups: list[str]) -> None:
        """Expert groups the engine is about to request: read them now, in parallel."""
        if self.cache is None:
            return
        ex = [g for g in groups if is_expert_group(g) and g not in self._pinned]
        if ex:
            self.cache.protected |= set(ex)
            self.cache.prefetch(ex, self.clock())

    def on_hidden(self, layer: int, hidden) -> None:
        """Before the MoE block of ``layer``: read its routed experts now; predict and prefetch the next layer's."""
        if self.predictor is None or self.cache is None or layer not in self.predictor.w:
            return
        self._layer = layer
        h = np.asarray(hidden, dtype=np.float32)
        used = [expert_group(layer, e) for e in self.predictor.route(layer, h)]
        self.cache.visit(layer)
        self.cache.protected = set(used)
        self.cache.upcoming = set()
        if self.lookahead:
            self.cache.prefetch(used, self.clock())
        if self.predict:
            j = self.predictor.next_layer(layer)
            if j is not None:
                room = self.cache.capacity - len(used)
                pred = [expert_group(j, e) for e in self.predictor.predict(j, h, room)]
                self.cache.upcoming = set(pred)
                self.cache.prefetch(pred, self.clock() + 1.0 / max(1, self.config.num_layers), predicted=True)

    def close(self) -> None:
        """Stop I/O and drop the buffers."""
        self.store.close()
        if self.neurons is not None:
            self.neurons.close()
        self.window.close()
        if self.cache is not None:
            self.cache.close()
        self._pinned.clear()

    # -- reporting ------------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters for ``edgespool bench``: bytes read, reads, window and cache behaviour, prediction accuracy."""
        recs = list(self.store.records)
        return {
            "io_mode": self.store.mode,
            "io_threads": self.store.io_threads,
            "bytes_read": self.store.bytes_read,
            "group_reads": len(recs),
            "read_busy_s": round(sum(r.t1 - r.t0 for r in recs), 4),
            "load_s": round(self.load_s, 4),
            "pool_bytes": self.pool.capacity,
            "pinned_bytes_used": self.pool.pinned_used,
            "peak_slots_in_use": dict(self.pool.peak_slots_in_use),
            "window": self.window.stats(),
            "expert_cache": self.cache.stats() if self.cache else None,
            "predictor": self.predictor.stats() if self.predictor and self.predict else None,
            "neuron_window": self.neurons.stats() if self.neurons is not None else None,
        }


_PLAN_KEYS = ("max_context", "max_batch_tokens", "max_window_depth", "hot_experts", "workspace", "neuron_capacity",
              "kv_dtype", "logits_rows", "reserved_bytes", "reserved_for", "stage")


def open_streaming(bundle: Bundle, budget: int | str, *, target: str | None = None, verify: bool | str = True,
                   plan: MemoryPlan | None = None, kernels: KernelTable = REFERENCE,
                   **options: Any) -> StreamingWeights:
    """Plan ``bundle`` into ``budget`` for ``target`` (default host) and open a :class:`StreamingWeights`.
    ``kernels``: the model's kernel table (the plan reserves its workspace; the neuron windows compute with it).

    ``verify=True`` means CRC-check each group's first read (``"always"``: every read). Options named like
    :func:`plan_memory`'s keywords (max_context, max_batch_tokens, max_window_depth, hot_experts, workspace) go to
    the planner, the rest to :class:`StreamingWeights`. Raises BudgetError naming the minimum when it does not fit.
    """
    plan_kw = {k: options.pop(k) for k in _PLAN_KEYS if k in options}
    if plan is None:
        plan = plan_memory(bundle, get_target(target or "host"), budget, kernels=kernels, **plan_kw)
    return StreamingWeights(bundle, plan, verify="first" if verify is True else verify, kernels=kernels, **options)
