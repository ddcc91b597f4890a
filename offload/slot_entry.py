"""SlotEntry: one weight group occupying one pool slot, with the read that fills it (shared by the layer window
and the expert cache)."""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from ..kernels.quant import QTensor
from .buffer_pool import Slot
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
