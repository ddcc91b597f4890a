"""SlotEntry: one weight group occupying one pool slot, with the read that fills it (shared by the layer window
and the expert cache)."""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Hashable

from ..kernels.quant import QTensor
from .buffer_pool import BufferPool, PoolExhausted, Slot
from .weight_store import WeightStore


@dataclass(eq=False)
class SlotEntry:
    """A group in a slot. ``refs`` > 0 while the engine uses it; the slot may be reused only when ``refs == 0``
    and the read has finished (a read in flight still writes into the slot)."""

    group: str
    slot: Slot
    future: Future
    refs: int = 0
    prefetched: bool = False  # loaded ahead of a request and not yet requested
    origin: str = "demand"  # why it was read: demand | lookahead | predicted | window; "cached" once used
    tensors: dict[str, QTensor] | None = field(default=None, repr=False)
    read_s: float = 0.0

    @property
    def ready(self) -> bool:
        return self.future.done()

    @property
    def evictable(self) -> bool:
        return self.refs == 0 and self.future.done()

    def wait(self, store: WeightStore) -> dict[str, QTensor]:
        """Block until the read is done (StorageError on failure/timeout) and return the tensors."""
        if self.tensors is None:
            res = store.wait(self.group, self.future)
            self.tensors = res.tensors
            self.read_s = res.record.t1 - res.record.t0
        return self.tensors



class SlotOwner:
    """What the layer window and the expert cache share: ``entries`` (key -> :class:`SlotEntry`) in ``pool`` slots
    of class ``cls``, filled by ``store``; the subclass says how an entry leaves (``_evict``) and what to say when
    the engine holds every slot (``_exhausted``)."""

    entries: dict[Hashable, SlotEntry]
    store: WeightStore
    pool: BufferPool
    cls: str

    def _evict(self, key: Hashable) -> None:
        raise NotImplementedError

    def _exhausted(self) -> str:
        raise NotImplementedError

    def _take_slot(self, candidates: Callable[[], list], pick: Callable[[list], Hashable], demand: bool,
                   exclude: Hashable = None) -> Slot | None:
        """A slot for a new entry: a free one; else evict ``pick(candidates())`` (the evictable entries the owner
        lets go now); else, for a demand read with every slot busy (reads in flight), wait for the read of the
        unused entry ``pick`` chooses among them (a failed read frees its slot all the same) and reuse its slot.
        None when a read ahead finds no slot; PoolExhausted when the engine holds every slot (a bug)."""
        if self.pool.free_slots(self.cls):
            return self.pool.alloc(self.cls)
        cands = candidates()
        if not cands:
            if not demand:
                return None
            cands = [k for k, e in self.entries.items() if e.refs == 0 and k != exclude]
            if not cands:
                raise PoolExhausted(self._exhausted())
            victim = pick(cands)
            try:
                self.entries[victim].wait(self.store)
            except Exception:  # noqa: BLE001 - a failed read-ahead: its slot is free all the same
                pass
            self._evict(victim)
            return self.pool.alloc(self.cls)
        self._evict(pick(cands))
        return self.pool.alloc(self.cls)
