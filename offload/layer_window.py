"""LayerWindow: TPI-LLM-style sliding window over the streamed layers of a model.

While layer ``i`` computes, the next ``k`` streamed layers (cyclically: after the last layer come the first ones
of the next token) are read into the window's slots. ``k`` adapts to the measured times: with ``r`` the mean read
time of a layer and ``c`` the mean time between two streamed layers' requests (the compute that can hide a read),
``k = clamp(ceil(r / c), 1, slots - 1)``: one read ahead when compute hides it, deeper when reads are slower so the
device always has queued work. Replacement is Belady's for a cyclic order: the slot freed is the one whose next use
is farthest away, and a prefetch never evicts a layer needed sooner than the one it reads.

A streamed head takes part in the cycle: with ``head`` (a :class:`HeadStream`), positions ``num_layers ..
num_layers + n_chunks - 1`` are the head's row chunks, read into the same slots, so the first chunks are read while
the last layers compute and the first layers of the next token while the last chunks do.
"""
from __future__ import annotations

import math
import time

from ..kernels.quant import QTensor
from ..runtime.bundle.names import layer_group
from ..schedulers.row_geometry import RowGeometry
from .buffer_pool import BufferPool
from .slot_entry import SlotEntry, SlotOwner
from .weight_store import WeightStore

_EMA = 0.3


class HeadStream:
    """The head's row chunks as window items: chunk ``c`` is rows ``[c * rows, (c + 1) * rows)`` of ``geo``'s
    tensor, read with :meth:`WeightStore.submit_rows`."""

    def __init__(self, store: WeightStore, geo: RowGeometry, rows: int) -> None:
        self.store, self.geo, self.rows = store, geo, rows
        self.n_chunks = -(-geo.rows // rows)

    def bounds(self, c: int) -> tuple[int, int]:
        return c * self.rows, min(self.geo.rows, (c + 1) * self.rows)

    def name(self, c: int) -> str:
        return f"{self.geo.tensor}[{c}]"

    def submit(self, c: int, buf, priority: float):
        r0, r1 = self.bounds(c)
        return self.store.submit_rows(self.geo, r0, r1, buf, priority, self.name(c))


class LayerWindow(SlotOwner):
    """Streams ``layers.{i}`` groups for the indices in ``layers`` (in compute order) through ``pool`` slots."""

    def __init__(self, store: WeightStore, pool: BufferPool, layers: tuple[int, ...], num_layers: int, *,
                 cls: str = "layer", adaptive: bool = True, clock=None, head: "HeadStream | None" = None) -> None:
        self.store = store
        self.pool = pool
        self.cls = cls
        self.head = head
        self.n_layers = num_layers
        n_chunks = head.n_chunks if head is not None else 0
        self.order = sorted(layers) + [num_layers + c for c in range(n_chunks)]
        self.streamed = set(self.order)
        self.num_layers = num_layers + n_chunks  # the cycle length
        self.n_slots = pool.n_slots(cls)
        self.max_depth = max(0, min(self.n_slots - 1, len(self.order) - 1))
        self.adaptive = adaptive
        self.depth = min(1, self.max_depth) if adaptive else self.max_depth
        self.entries: dict[int, SlotEntry] = {}
        self.cur: int | None = None
        self._clock = clock  # callable -> float "need time" used as I/O priority
        self._last_get_t: float | None = None
        self.read_s_ema: float | None = None
        self.interval_s_ema: float | None = None
        # stats
        self.requests = 0
        self.ready_hits = 0  # the layer was already in memory
        self.inflight_hits = 0  # its read had been started ahead but was not finished
        self.misses = 0  # not even started: a demand read
        self.stall_s = 0.0  # time get() spent waiting for reads
        self.depth_hist: dict[int, int] = {}

    @staticmethod
    def group(i: int) -> str:
        return layer_group(i)

    def _dist(self, layer: int) -> int:
        """Layers until ``layer`` is next needed, counted from the current layer (the current one itself: L)."""
        cur = -1 if self.cur is None else self.cur
        return (layer - cur - 1) % self.num_layers + 1

    def _priority(self, layer: int) -> float:
        base = self._clock() if self._clock else 0.0
        return base + self._dist(layer)

    # -- slot management --------------------------------------------------------------------------------------
    def _evict(self, layer: int) -> None:
        e = self.entries.pop(layer)
        self.pool.free(e.slot)

    def _exhausted(self) -> str:
        return (f"layer window: all {self.n_slots} slots are in use by the engine; it holds more layers than the "
                "memory plan allows (release each layer after computing it)")

    def _slot_for(self, layer: int, demand: bool):
        """A slot for ``layer``: evict the evictable layer needed last (a read ahead only one needed after
        ``layer``); with every slot busy, a demand read waits for the farthest read-ahead to land and reuses its
        slot."""
        d = self._dist(layer)
        return self._take_slot(
            lambda: [l for l, e in self.entries.items() if e.evictable and (demand or self._dist(l) > d)],
            lambda xs: max(xs, key=self._dist), demand)

    def _load(self, layer: int, demand: bool) -> SlotEntry | None:
        slot = self._slot_for(layer, demand)
        if slot is None:
            return None
        pri = float("-inf") if demand else self._priority(layer)
        if layer >= self.n_layers:
            assert self.head is not None
            c = layer - self.n_layers
            g = self.head.name(c)
            fut = self.head.submit(c, slot.buf, pri)
        else:
            g = self.group(layer)
            fut = self.store.submit(g, slot.buf, pri)
        e = SlotEntry(g, slot, fut, prefetched=not demand)
        self.entries[layer] = e
        return e

    def upcoming(self) -> list[int]:
        """The next ``depth`` streamed layers after the current layer, in the order they will be needed."""
        if not self.order or self.depth == 0:
            return []
        return sorted((l for l in self.order if l != self.cur), key=self._dist)[: self.depth]

    def advance(self, layer: int) -> None:
        """The engine is now at ``layer`` (a pinned one): move the read-ahead along."""
        self.cur = layer
        self.prefetch()

    def prefetch(self) -> None:
        """Start reads for the next ``depth`` streamed layers after the current one (no-op when they are loaded)."""
        for layer in self.upcoming():
            if layer in self.entries:
                continue
            if self._load(layer, demand=False) is None:
                break

    # -- the engine's calls -----------------------------------------------------------------------------------
    def get(self, layer: int) -> dict[str, QTensor]:
        """Tensors of ``layers.{layer}``, blocking until read; starts the read-ahead of the following layers."""
        now = time.perf_counter()
        if self._last_get_t is not None:
            iv = now - self._last_get_t
            self.interval_s_ema = iv if self.interval_s_ema is None else (1 - _EMA) * self.interval_s_ema + _EMA * iv
        self.requests += 1
        e = self.entries.get(layer)
        if e is None:
            self.misses += 1
            e = self._load(layer, demand=True)
        elif e.ready:
            self.ready_hits += 1
        else:
            self.inflight_hits += 1
        assert e is not None
        t0 = time.perf_counter()
        try:
            tensors = e.wait(self.store)
        except BaseException:
            if layer in self.entries:
                self._evict(layer)
            raise
        t1 = time.perf_counter()
        self.stall_s += t1 - t0
        self._last_get_t = t1
        e.refs += 1
        e.prefetched = False
        self.cur = layer
        self._adapt(e.read_s)
        self.prefetch()
        return tensors

    def release(self, layer: int) -> None:
        """The engine is done with ``layers.{layer}`` for this step: its slot may be reused for read-ahead."""
        e = self.entries.get(layer)
        if e is None or e.refs == 0:
            return
        e.refs -= 1
        if e.refs == 0:
            self.prefetch()

    def _adapt(self, read_s: float) -> None:
        if read_s > 0:
            self.read_s_ema = read_s if self.read_s_ema is None else (1 - _EMA) * self.read_s_ema + _EMA * read_s
        if self.adaptive and self.read_s_ema and self.interval_s_ema:
            want = math.ceil(self.read_s_ema / max(self.interval_s_ema, 1e-6))
            self.depth = max(min(1, self.max_depth), min(self.max_depth, want))
        elif not self.adaptive:
            self.depth = self.max_depth
        self.depth_hist[self.depth] = self.depth_hist.get(self.depth, 0) + 1

    def stats(self) -> dict:
        return {
            "streamed_layers": len(self.order), "slots": self.n_slots, "depth": self.depth,
            "max_depth": self.max_depth, "depth_histogram": dict(sorted(self.depth_hist.items())),
            "requests": self.requests, "ready_hits": self.ready_hits, "inflight_hits": self.inflight_hits,
            "misses": self.misses, "stall_s": round(self.stall_s, 4),
            "read_s_mean": self.read_s_ema, "interval_s_mean": self.interval_s_ema,
        }

    def close(self) -> None:
        for layer in list(self.entries):
            e = self.entries[layer]
            if e.future.done():
                self._evict(layer)
        self.entries.clear()
