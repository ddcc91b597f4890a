"""BufferPool: the one block of memory every streamed or pinned weight lives in, sized by the memory plan.

One anonymous ``mmap`` (page-aligned, so O_DIRECT can read straight into it; pages cost memory only once touched)
is carved at construction into:

* a **pinned** region, handed out by :meth:`BufferPool.alloc_pinned` with a bump pointer (never freed);
* fixed-size **slot classes** (``"layer"``: the window, ``"expert"``: the expert cache), handed out by
  :meth:`BufferPool.alloc` / :meth:`BufferPool.free`. Fixed slots cannot fragment, so a plan that fits at load
  fits forever.

The pool never grows. Asking for more than the plan reserved raises :class:`PoolExhausted`, which is a bug in the
caller (the runtime and its plan disagree), not a user error.
"""
from __future__ import annotations

import mmap
import threading
from dataclasses import dataclass

import numpy as np

from ..runtime.bundle.constants import ALIGNMENT, align_up


class PoolExhausted(RuntimeError):
    """An allocation beyond what the memory plan reserved (a bug: the runtime and its plan disagree)."""


@dataclass(frozen=True)
class Slot:
    """One fixed-size buffer of a slot class: ``buf`` is a page-aligned uint8 array of ``len == slot size``."""

    cls: str
    index: int
    buf: np.ndarray


class BufferPool:
    """A fixed arena: ``pinned_bytes`` of bump-allocated memory plus ``slots[cls] = (slot_bytes, count)``."""

    def __init__(self, pinned_bytes: int, slots: dict[str, tuple[int, int]]) -> None:
        self.pinned_capacity = align_up(max(0, pinned_bytes), ALIGNMENT)
        self.slot_sizes = {c: align_up(s, ALIGNMENT) for c, (s, n) in slots.items() if n > 0 and s > 0}
        self.slot_counts = {c: n for c, (s, n) in slots.items() if n > 0 and s > 0}
        self.capacity = self.pinned_capacity + sum(self.slot_sizes[c] * self.slot_counts[c] for c in self.slot_sizes)
        self._map = mmap.mmap(-1, max(self.capacity, ALIGNMENT), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._arena = np.frombuffer(self._map, dtype=np.uint8)
        self._lock = threading.Lock()
        self._pinned_used = 0
        self._free: dict[str, list[int]] = {}
        self._slots: dict[str, list[Slot]] = {}
        pos = self.pinned_capacity
        for c, size in self.slot_sizes.items():
            self._slots[c] = []
            for i in range(self.slot_counts[c]):
                self._slots[c].append(Slot(c, i, self._arena[pos: pos + size]))
                pos += size
            self._free[c] = list(range(self.slot_counts[c] - 1, -1, -1))
        self.peak_slots_in_use = {c: 0 for c in self.slot_sizes}

    # -- pinned ------------------------------------------------------------------------------------------------
    def alloc_pinned(self, nbytes: int, align: int = ALIGNMENT) -> np.ndarray:
        """A uint8 array of ``nbytes`` from the pinned region (aligned to ``align``); never freed."""
        with self._lock:
            start = align_up(self._pinned_used, align)
            if start + nbytes > self.pinned_capacity:
                raise PoolExhausted(f"pinned region exhausted: {start + nbytes} > {self.pinned_capacity} bytes "
                                    "(the memory plan under-counted pinned weights)")
            self._pinned_used = start + nbytes
            return self._arena[start: start + nbytes]

    @property
    def pinned_used(self) -> int:
        return self._pinned_used

    # -- slots -------------------------------------------------------------------------------------------------
    def slot_size(self, cls: str) -> int:
        return self.slot_sizes.get(cls, 0)

    def n_slots(self, cls: str) -> int:
        return self.slot_counts.get(cls, 0)

    def free_slots(self, cls: str) -> int:
        with self._lock:
            return len(self._free.get(cls, ()))

    def alloc(self, cls: str) -> Slot:
        """A free slot of class ``cls``; raises PoolExhausted when all are in use (caller must evict first)."""
        with self._lock:
            free = self._free.get(cls)
            if not free:
                raise PoolExhausted(f"no free {cls!r} slot ({self.slot_counts.get(cls, 0)} reserved by the plan, "
                                    "all in use)")
            s = self._slots[cls][free.pop()]
            used = self.slot_counts[cls] - len(free)
            if used > self.peak_slots_in_use[cls]:
                self.peak_slots_in_use[cls] = used
            return s

    def free(self, slot: Slot) -> None:
        """Return ``slot`` to its class."""
        with self._lock:
            free = self._free[slot.cls]
            if slot.index in free:
                raise PoolExhausted(f"double free of {slot.cls!r} slot {slot.index}")
            free.append(slot.index)

    def close(self) -> None:
        """Drop the arena (views handed out become invalid; only call when nothing uses them)."""
        self._slots.clear()
        self._free.clear()
        del self._arena
        try:
            self._map.close()
        except BufferError:  # numpy views still alive somewhere: the GC frees the map with them
            pass
