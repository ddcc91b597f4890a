"""Per-model kernel selection: a :class:`KernelTable` says which linear kernel runs for each weight scheme and which
attention kernel runs, for one loaded model.

Nothing here is process-global: every piece of code that computes (the engine, the FFN helpers, a streaming
source's neuron windows, the memory plan's workspace estimate) is handed the table of the model it works for, so
two models loaded in one process (one with compiled TVM kernels, one without, or with different compiled kernels)
never see each other's kernels, and closing one leaves the other untouched. :data:`REFERENCE` is the numpy-only
table (the default everywhere); :meth:`edgespool.kernels.tvm_backend.TvmKernels.table` builds one with a bundle's
compiled kernels over a base table. A table is immutable (frozen, read-only mapping); derive another with
:meth:`KernelTable.replace`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .attention import AttentionKernel
from .attention import attention as reference_attention
from .linear import REFERENCE_KERNELS, LinearKernel, apply_linear, kernels_workspace_bytes
from .quant import QTensor


@dataclass(frozen=True, eq=False)
class KernelTable:
    """The kernels one model runs with.

    ``linear_kernels``: scheme -> kernel computing ``x @ W.T`` for a 2-D weight (the numpy references of
    :mod:`edgespool.kernels.linear` overridden by compiled ones; stored as a read-only mapping).
    ``attention_kernel``: an optional compiled attention callable with
    :func:`edgespool.kernels.attention.attention`'s arguments that returns None when it does not fit (the numpy
    reference then runs). ``description``: which kernels and why (shown by ``edgespool run``).
    ``backend``: the object the compiled kernels came from (e.g. a ``TvmKernels``, for its call and fallback
    counters), or None."""

    linear_kernels: Mapping[str, LinearKernel]
    attention_kernel: AttentionKernel | None = None
    description: str = "numpy reference kernels"
    backend: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "linear_kernels", MappingProxyType(dict(self.linear_kernels)))

    def linear(self, x: np.ndarray, w: QTensor, bias: QTensor | np.ndarray | None = None) -> np.ndarray:
        """``x @ W.T + bias`` in float32 through this table's kernel for ``w.scheme`` (semantics and errors of
        :func:`edgespool.kernels.linear.linear`). ``x`` is ``[..., in]``, ``w`` a 2-D :class:`QTensor`
        ``[out, in]``, ``bias`` an optional ``[out]`` vector (array or QTensor). Returns ``[..., out]``."""
        return apply_linear(self.linear_kernels, x, w, bias)

    def linear_many(self, x: np.ndarray, ws: list[QTensor],
                    biases: list[QTensor | np.ndarray | None] | None = None) -> list[np.ndarray]:
        """``[self.linear(x, w, b) for w, b in zip(ws, biases)]``: the products of one input with several weights
        (a layer's q / k / v, gate / up). When every weight's scheme routes to this table's compiled ``backend``
        and it has ``linear_multi`` (the C block kernels: one thread-pool dispatch, ``x`` rounded once), that runs
        them together, with the same results as one call each; otherwise one :meth:`linear` per weight (so a
        table with wrapped kernels, e.g. the timed one of ``edgespool bench``, sees every call)."""
        biases = biases or [None] * len(ws)
        multi = getattr(self.backend, "linear_multi", None)
        if multi is not None and all(isinstance(self.linear_kernels.get(w.scheme), RoutedLinear)
                                     and self.linear_kernels[w.scheme].kernels is self.backend for w in ws):
            ys = multi(x, ws)
            if ys is not None:
                for i, b in enumerate(biases):
                    if b is not None:
                        ys[i] = ys[i] + (b.dequantize() if isinstance(b, QTensor) else b)
                return ys
        return [self.linear(x, w, b) for w, b in zip(ws, biases)]

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
                  sliding_window: int | None = None, scale: float | None = None,
                  softcap: float | None = None) -> np.ndarray:
        """Causal GQA (see :func:`edgespool.kernels.attention.attention`): the compiled kernel when this table has
        one and it returns a result, else the numpy reference (always with a score ``softcap``: compiled kernels
        have none)."""
        kern = self.attention_kernel
        if kern is not None and not softcap:
            out = kern(q, k, v, q_pos, k_pos, sliding_window, scale)
            if out is not None:
                return out
        return reference_attention(q, k, v, q_pos, k_pos, sliding_window, scale, softcap)

    def workspace_bytes(self) -> int:
        """Workspace the memory plan reserves for this table's linear kernels: the largest declared
        ``workspace_bytes`` of its kernels, at least the reference kernels' row-block scratch."""
        return kernels_workspace_bytes(self.linear_kernels)

    def replace(self, **changes: Any) -> KernelTable:
        """A copy with some fields changed (``linear_kernels``, ``attention_kernel``, ``description``,
        ``backend``)."""
        return dataclasses.replace(self, **changes)


class RoutedLinear:
    """A :class:`KernelTable` linear entry for a compiled backend: ``backend.linear(x, w)`` when it serves the
    weight (it returns None when it does not), else the base table's kernel for the scheme."""

    def __init__(self, backend: Any, fallback: Any):
        self.kernels = backend
        self.fallback = fallback
        # the fallback may still run: reserve what it needs (KernelTable.workspace_bytes reads this)
        self.workspace_bytes = int(getattr(fallback, "workspace_bytes", 0) or 0)

    def __call__(self, x: np.ndarray, w: QTensor) -> np.ndarray:
        y = self.kernels.linear(x, w)
        return self.fallback(x, w) if y is None else y


# The numpy-only table: immutable, the default wherever a table is not given.
REFERENCE = KernelTable(REFERENCE_KERNELS, None, "numpy reference kernels")
