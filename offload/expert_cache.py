"""ExpertCache: MoE expert groups in a fixed number of pool slots, replaced by recency + frequency.

The default policy is LRFU (Lee et al., 2001): each expert carries a combined recency-frequency value
``CRF = sum over past uses of 2^(-lambda * age)`` (age in tokens); the slot freed is the one holding the expert
with the smallest CRF. ``lambda -> 0`` is LFU, large ``lambda`` approaches LRU; ``policy="lru"`` is plain LRU (the
baseline the predictor is measured against). History is kept for evicted experts too, so a frequently used
expert comes back with its weight.

Experts the current layer needs (``protect``) are never evicted to make room for a prefetch, and a prefetch
never evicts an expert predicted for the same upcoming layer. Layers are visited cyclically, once per token, so
with ``lrfu`` a cached expert is *stale* when its layer has been visited since it was last used (it was not
routed to at its latest chance) and *hot* otherwise (it was used at its layer's latest visit, and that layer has
not come round again). Victims are taken from stale experts first (lowest CRF); among hot experts (given
``num_layers``) the one whose layer comes round last goes (Belady's choice for the cyclic layer order; plain LRU
takes the least recent, which is the one needed soonest, and thrashes when the cache holds fewer experts than a
token uses: 0 % hits on the int4 benchmark model). A *predicted* prefetch may evict a hot expert only when the
cache is smaller than one token's experts (``working_set``; it must evict hot experts anyway): with a cache that
holds a whole token, letting predictions evict hot experts cost more hits than the predictions gained. (Plain LRU evicts the least recent expert, which in a cyclic order is the
one needed soonest: it thrashes when the cache holds fewer experts than a token uses.) Stats, per request: a *hit* was in memory (or
pinned) before the layer routed; a *predicted hit* was being read because the predictor named it a layer
earlier; a *lookahead miss* was read only once the layer's own routing was known (the reads of all its experts
then run in parallel); a *demand miss* was read when requested. Hit rate = (hits + predicted hits) / requests.
"""
from __future__ import annotations

import time

from ..kernels.quant import QTensor
from ..runtime.bundle.names import layer_of
from .buffer_pool import BufferPool
from .slot_entry import SlotEntry, SlotOwner
from .weight_store import WeightStore

POLICIES = ("lrfu", "lru")


class ExpertCache(SlotOwner):
    """Expert groups ``layers.{i}.experts.{e}`` streamed through ``pool``'s ``cls`` slots; ``pinned`` experts
    (hot experts of the plan) are served from memory without using a slot."""

    def __init__(self, store: WeightStore, pool: BufferPool, pinned: dict[str, dict[str, QTensor]] | None = None,
                 *, cls: str = "expert", policy: str = "lrfu", lam: float = 0.5, clock=None,
                 working_set: int = 0, num_layers: int = 0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"expert cache policy {policy!r}; valid: {', '.join(POLICIES)}")
        self.store = store
        self.pool = pool
        self.cls = cls
        self.capacity = pool.n_slots(cls)
        self.pinned = pinned or {}
        self.policy = policy
        self.lam = lam
        # experts one token routes to (MoE layers x top-k) and the model's layer count (0: unknown)
        self.working_set = working_set
        self.num_layers = num_layers
        self._cur_layer: int | None = None
        self._clock = clock or (lambda: 0.0)
        self.entries: dict[str, SlotEntry] = {}
        self._hist: dict[str, tuple[float, float]] = {}  # group -> (crf at t, t) ; for lru: (t, t)
        self._last_use: dict[str, float] = {}
        self._visit: dict[int, float] = {}  # layer -> clock of its latest visit
        self.protected: set[str] = set()
        self.upcoming: set[str] = set()
        # stats
        self.requests = 0
        self.pinned_hits = 0
        self.hits = 0
        self.predicted_hits = 0
        self.lookahead_misses = 0
        self.misses = 0
        self.prefetch_issued = 0
        self.prefetch_used = 0
        self.prefetch_wasted = 0
        self.prefetch_skipped = 0  # predicted reads not started: only hot experts could have been evicted
        self.stall_s = 0.0

    # -- scores -----------------------------------------------------------------------------------------------
    def _score(self, g: str) -> float:
        h = self._hist.get(g)
        if h is None:
            return float("-inf")
        if self.policy == "lru":
            return h[1]
        crf, t = h
        return crf * 2.0 ** (-self.lam * (self._clock() - t))

    def visit(self, layer: int) -> None:
        """The engine reached ``layer`` (its routing is known): experts of it not used from now on are stale."""
        now = self._clock()
        self._cur_layer = layer
        if self._visit.get(layer) != now:
            self._visit[layer] = now

    def _stale(self, g: str) -> bool:
        v = self._visit.get(layer_of(g))
        lu = self._last_use.get(g)
        return v is not None and (lu is None or lu < v)

    def _layer_dist(self, g: str) -> int:
        """Layers until expert ``g``'s layer is visited again, counted from the current layer (itself: L)."""
        return (layer_of(g) - self._cur_layer - 1) % self.num_layers + 1

    def _touch(self, g: str) -> None:
        now = self._clock()
        self._last_use[g] = now
        if self.policy == "lru":
            self._hist[g] = (now, now)
            return
        crf, t = self._hist.get(g, (0.0, now))
        self._hist[g] = (crf * 2.0 ** (-self.lam * (now - t)) + 1.0, now)

    # -- slots ------------------------------------------------------------------------------------------------
    def _evict(self, g: str) -> None:
        e = self.entries.pop(g)
        if e.prefetched:
            self.prefetch_wasted += 1
        self.pool.free(e.slot)

    def _exhausted(self) -> str:
        return (f"expert cache: all {self.capacity} slots are in use by the engine; it holds more experts at once "
                "than the memory plan allows (release each expert after use)")

    def _slot_for(self, g: str, demand: bool, hot_ok: bool = True):
        return self._take_slot(lambda: self._candidates(g, demand, hot_ok), lambda xs: min(xs, key=self._score),
                               demand, exclude=g)

    def _candidates(self, g: str, demand: bool, hot_ok: bool) -> list[str]:
        """The experts a read of ``g`` may evict now (evictable, not protected; LRFU: stale ones first)."""
        keep = self.protected | ({g} if demand else self.protected | self.upcoming)
        cands = [x for x, e in self.entries.items() if e.evictable and x not in keep]
        if self.policy == "lrfu" and cands:
            stale = [x for x in cands if self._stale(x)]
            if stale:
                cands = stale
            elif not hot_ok and self.capacity >= self.working_set:
                cands = []
            elif self.num_layers and self._cur_layer is not None:
                # only hot experts: Belady for the cyclic layer order, the one whose layer comes round last
                far = max(self._layer_dist(x) for x in cands)
                cands = [x for x in cands if self._layer_dist(x) == far]
        if not cands and demand:  # fall back to experts protected for this layer but not in use
            cands = [x for x, e in self.entries.items() if e.evictable and x != g]
        return cands

    # -- the engine's calls -----------------------------------------------------------------------------------
    def get(self, g: str) -> dict[str, QTensor]:
        """Tensors of expert group ``g``, blocking until read."""
        self.requests += 1
        self.visit(layer_of(g))
        if g in self.pinned:
            self.pinned_hits += 1
            self._touch(g)
            return self.pinned[g]
        e = self.entries.get(g)
        if e is None:
            self.misses += 1
            slot = self._slot_for(g, demand=True)
            e = SlotEntry(g, slot, self.store.submit(g, slot.buf, float("-inf")))
            self.entries[g] = e
        elif e.origin == "cached":
            self.hits += 1
        elif e.origin == "predicted":
            self.predicted_hits += 1
        else:
            self.lookahead_misses += 1
        t0 = time.perf_counter()
        try:
            tensors = e.wait(self.store)
        except BaseException:
            if self.entries.get(g) is e:
                self.entries.pop(g)
                self.pool.free(e.slot)
            raise
        self.stall_s += time.perf_counter() - t0
        if e.prefetched:
            self.prefetch_used += 1
            e.prefetched = False
        e.origin = "cached"
        e.refs += 1
        self._touch(g)
        return tensors

    def release(self, g: str) -> None:
        e = self.entries.get(g)
        if e is not None and e.refs > 0:
            e.refs -= 1

    def prefetch(self, groups: list[str], priority: float, *, predicted: bool = False) -> int:
        """Start reads for ``groups`` not in memory, evicting only unprotected colder experts; returns how many
        reads were started."""
        n = 0
        for g in groups:
            if g in self.pinned or g in self.entries:
                continue
            slot = self._slot_for(g, demand=False, hot_ok=not predicted)
            if slot is None:
                if predicted:
                    self.prefetch_skipped += 1
                break
            self.entries[g] = SlotEntry(g, slot, self.store.submit(g, slot.buf, priority), prefetched=True,
                                        origin="predicted" if predicted else "lookahead")
            self._last_use[g] = self._clock()  # fresh: stale only once its layer is visited without using it
            self.prefetch_issued += 1
            n += 1
        return n

    def stats(self) -> dict:
        served = self.hits + self.predicted_hits + self.pinned_hits
        return {
            "policy": self.policy, "capacity": self.capacity, "pinned": len(self.pinned),
            "requests": self.requests, "hits": self.hits, "pinned_hits": self.pinned_hits,
            "predicted_hits": self.predicted_hits, "lookahead_misses": self.lookahead_misses,
            "demand_misses": self.misses,
            "hit_rate": served / self.requests if self.requests else None,
            "cache_hit_rate": (self.hits + self.pinned_hits) / self.requests if self.requests else None,
            "prefetch_issued": self.prefetch_issued, "prefetch_used": self.prefetch_used,
            "prefetch_wasted": self.prefetch_wasted, "prefetch_skipped": self.prefetch_skipped,
            "stall_s": round(self.stall_s, 4),
        }

    def close(self) -> None:
        for g in list(self.entries):
            if self.entries[g].future.done():
                self._evict(g)
        self.entries.clear()
