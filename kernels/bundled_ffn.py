"""FFN compute over row-column neuron bundles (the ``neuron_bundles`` layout of
:mod:`edgespool.runtime.bundle.ffn_geometry`): the dense reference over every neuron and the gated FFN of a set of
unpacked bundle vectors (what a neuron window computes)."""
from __future__ import annotations

import numpy as np

from ..runtime.bundle.ffn_geometry import NeuronBundles, unpack_bundles
from ..runtime.bundle.schemes import QTensor
from .linear import BLOCK_BYTES, dequantize_rows_into
from .swiglu import ACTIVATIONS
from .table import REFERENCE, KernelTable


def linear_t(x: np.ndarray, w: QTensor) -> np.ndarray:
    """``x @ W`` for ``x`` ``[T, I]`` and a 2-D weight ``w`` ``[I, H]`` (the down projection stored as columns):
    ``[T, H]``, dequantising at most :data:`~edgespool.kernels.linear.BLOCK_BYTES` of rows at a time."""
    I, H = (int(v) for v in w.shape)
    x = np.asarray(x, np.float32).reshape(-1, I)
    if w.scheme == "f32":  # stored as float32 already: no dequantisation block needed
        return x @ w.data
    y = np.zeros((x.shape[0], H), np.float32)
    step = max(1, BLOCK_BYTES // (4 * H))
    buf = np.empty(min(I, step) * H, np.float32)
    nib = np.empty(min(I, step) * H, np.uint8)
    for r0 in range(0, I, step):
        r1 = min(I, r0 + step)
        y += x[:, r0:r1] @ dequantize_rows_into(w, r0, r1, buf, nib)
    return y


def bundled_ffn(x: np.ndarray, gate: QTensor, up: QTensor, down_t: QTensor, act: str = "relu",
                pre: np.ndarray | None = None, *, kernels: KernelTable = REFERENCE) -> np.ndarray:
    """Gated FFN ``down(act(gate x) * up x)`` of ``x`` ``[T, H]`` from bundle vectors (``down_t`` = ``down.T``,
    ``[I, H]``) -> ``[T, H]``. ``pre``: the gate pre-activations ``[T, I]`` when already computed (a predictor).
    The gate and up products go through ``kernels.linear``."""
    h = ACTIVATIONS[act](kernels.linear(x, gate) if pre is None else pre)
    h *= kernels.linear(x, up)
    return linear_t(h, down_t)


def dense_bundled_ffn(x: np.ndarray, t: NeuronBundles, act: str = "relu", *,
                      kernels: KernelTable = REFERENCE) -> np.ndarray:
    """The FFN of all neurons of a bundled tensor (resident or pinned): neuron blocks of at most
    :data:`~edgespool.kernels.linear.BLOCK_BYTES` of bundles are unpacked and multiplied in turn (bounded
    temporaries, no second copy of the weights). Equals the matrix layout's FFN up to float summation order (and,
    for int8/int4, the per-neuron quantisation of ``down``)."""
    geo = t.geometry
    x = np.asarray(x, np.float32)
    y = np.zeros((*x.shape[:-1], geo.hidden), np.float32)
    step = max(1, BLOCK_BYTES // geo.bundle_bytes)
    for r0 in range(0, geo.neurons, step):
        y += bundled_ffn(x, *unpack_bundles(geo, t.data[r0: r0 + step]), act=act, kernels=kernels)
    return y
