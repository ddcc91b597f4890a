"""The one interface through which the decoder loop gets its weights, and its resident implementation.

The engine asks for whole streaming groups (``embed``, ``layers.{i}``, ``layers.{i}.experts.{e}``, ``head``) in
the order it computes; a source may block until the bytes are there. Resident mode reads everything once at load;
the streaming sources of :mod:`edgespool.offload` implement the same protocol with a budgeted buffer pool.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from ...kernels.quant import QTensor
from ..bundle.reader import Bundle
from ..bundle.config import ModelConfig


@runtime_checkable
class WeightSource(Protocol):
    """What the decoder loop needs from weight storage."""

    config: ModelConfig

    def get(self, group: str) -> dict[str, QTensor]:
        """Return the tensors of ``group`` (blocking until they are in memory). Valid until ``release(group)``."""
        ...

    def release(self, group: str) -> None:
        """The engine is done with ``group`` for this step; a streaming source may evict it."""
        ...

    def hint(self, groups: list[str]) -> None:
        """Groups the engine expects to need soon (prefetch hint; may be ignored)."""
        ...

    def on_hidden(self, layer: int, hidden) -> None:
        """Called by the engine with the hidden state (``[T, H]`` float32, post-attention residual) just before the
        FFN/MoE block of ``layer``; a streaming source may apply layer+1's router to it to prefetch experts."""
        ...

    def close(self) -> None:
        """Release files, threads and buffers."""
        ...


class ResidentWeights:
    """Every group read once at load (CRC-checked) and kept in memory."""

    def __init__(self, bundle: Bundle, verify: bool = True) -> None:
        assert bundle.config is not None
        self.config = bundle.config
        self.bundle = bundle
        self._groups = {g: bundle.read_group(g, verify=verify) for g in bundle.groups}
        self.resident_bytes = sum(g.nbytes for g in bundle.groups.values())

    def get(self, group: str) -> dict[str, QTensor]:
        return self._groups[group]

    def release(self, group: str) -> None:
        return None

    def hint(self, groups: list[str]) -> None:
        return None

    def on_hidden(self, layer: int, hidden) -> None:
        return None

    def close(self) -> None:
        self._groups.clear()
