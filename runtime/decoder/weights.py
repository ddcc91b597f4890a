"""The one interface through which the decoder loop gets its weights, and its resident implementation.

The engine asks for whole streaming groups (``embed``, ``layers.{i}``, ``layers.{i}.experts.{e}``, ``head``) in
the order it computes; a source may block until the bytes are there. Resident mode reads everything once at load;
the streaming sources of :mod:`edgespool.offload` implement the same protocol with a budgeted buffer pool.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

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
    """Every group kept in memory for the whole run.

    ``mmap=True`` (the default, like llama.cpp's default load) maps ``weights.bin`` read-only: loading costs no
    reads, the kernel pages weights in on first use (the page cache holds them, shared and reclaimable), and each
    group's CRC32 is verified the first time the engine asks for it (``verify``). ``mmap=False`` reads every
    group into private memory at load with one checked read each, verifying all CRCs up front."""

    def __init__(self, bundle: Bundle, verify: bool = True, mmap: bool = True) -> None:
        assert bundle.config is not None
        self.config = bundle.config
        self.bundle = bundle
        self.verify = verify
        self.resident_bytes = sum(g.nbytes for g in bundle.groups.values())
        self._map: np.ndarray | None = None
        self._groups: dict[str, dict[str, QTensor]] = {}
        if mmap and self.resident_bytes:
            self._map = np.memmap(bundle.weights_path, dtype=np.uint8, mode="r")
        else:
            self._groups = {g: bundle.read_group(g, verify=verify) for g in bundle.groups}

    def get(self, group: str) -> dict[str, QTensor]:
        got = self._groups.get(group)
        if got is None:
            g = self.bundle.groups[group]  # KeyError for an unknown group, as before
            if self._map is None:
                raise KeyError(group)
            buf = self._map[g.offset: g.offset + g.nbytes]
            got = self._groups[group] = {n: self.bundle.tensor_from_buffer(n, buf, g.offset, self.verify)
                                         for n in g.tensors}
        return got

    def release(self, group: str) -> None:
        return None

    def hint(self, groups: list[str]) -> None:
        return None

    def on_hidden(self, layer: int, hidden) -> None:
        return None

    def close(self) -> None:
        self._groups.clear()
        self._map = None
