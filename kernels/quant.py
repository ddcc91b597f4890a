"""Quantisation formats for the kernels: the scheme registry (:mod:`edgespool.runtime.bundle.schemes`, where the
formats are defined, one object per scheme) and the float64-free numpy reference ``linear`` every kernel is
checked against. The layout on flash is the layout the kernels read.
"""
from __future__ import annotations

import numpy as np

from ..runtime.bundle.schemes import (BITS, SCHEMES, QTensor, Scheme, dequantize, get_scheme, quantize,
                                      unpack_int4)

__all__ = ["BITS", "SCHEMES", "QTensor", "Scheme", "dequantize", "get_scheme", "quantize", "unpack_int4", "linear"]


def linear(x: np.ndarray, w: QTensor, bias: np.ndarray | None = None) -> np.ndarray:
    """Reference y = x @ W.T (+ bias) for a 2-D weight in any scheme; x is ``[..., in]`` float32."""
    y = x @ dequantize(w).T
    if bias is not None:
        y = y + bias
    return y
