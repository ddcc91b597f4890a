"""The one linear-layer entry point of the decoder loop: ``y = x @ W.T (+ bias)`` for a weight in any scheme.

Every matrix product of the engine goes through :func:`linear`, so a faster kernel (TVM-compiled per target, CuPy,
a fused int4 GEMV) plugs in by registering itself for a scheme in :data:`KERNELS` and nothing else changes. The
default for every scheme is the numpy reference: f32 weights are used as they are, the other schemes are dequantised
to float32 (:func:`edgespool.kernels.quant.dequantize`) and multiplied with BLAS.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .quant import QTensor, dequantize

LinearKernel = Callable[[np.ndarray, QTensor], np.ndarray]


def _f32(x: np.ndarray, w: QTensor) -> np.ndarray:
    return x @ w.data.T


def _dequant(x: np.ndarray, w: QTensor) -> np.ndarray:
    return x @ dequantize(w).T


# scheme -> kernel computing x @ W.T for a 2-D weight; replace an entry to plug in a faster implementation.
KERNELS: dict[str, LinearKernel] = {
    "f32": _f32,
    "f16": _dequant,
    "int8": _dequant,
    "int4": _dequant,
}


def linear(x: np.ndarray, w: QTensor, bias: QTensor | np.ndarray | None = None) -> np.ndarray:
    """``x @ W.T + bias`` in float32. ``x`` is ``[..., in]`` float32, ``w`` a 2-D :class:`QTensor` of logical
    shape ``[out, in]``, ``bias`` an optional ``[out]`` vector (array or QTensor). Returns ``[..., out]`` float32."""
    try:
        kernel = KERNELS[w.scheme]
    except KeyError:
        raise ValueError(f"no linear kernel for weight scheme {w.scheme!r}; known: {', '.join(KERNELS)}") from None
    y = kernel(x, w)
    if bias is not None:
        y = y + (bias.dequantize() if isinstance(bias, QTensor) else bias)
    return y
