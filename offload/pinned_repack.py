"""Pinned weight groups of a streaming run in the kernels' own layout, inside the bytes the plan gave them.

The resident engine hands every weight to the kernels' ``prepare_weight`` (the C block kernels' x16 repacking:
measured 11.15 vs 5.07 GB/s of weights on one Xeon core, 14.1 vs 9.0 on a Zen 3 core, for the 1.5B's decode).
A streaming run's pinned groups live in its buffer pool, sized by the memory plan, so they cannot take a second,
packed copy. :func:`repack_in_place` packs a group's tensors, then lays the packed tensors and the untouched ones
(norms, biases) back into the group's own pool region, 64-byte aligned; where they do not fit in it the group stays
in the stored layout. The only extra memory is transient, while a group is repacked at load: the packed copies of
that one group's tensors. Streamed groups (window slots, experts, neuron windows) stay stored: their slots are
refilled every token."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..kernels.quant import QTensor

ALIGN = 64


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def repack_in_place(tensors: dict[str, QTensor], buf: np.ndarray,
                    prepare: Callable[[QTensor], QTensor]) -> dict[str, QTensor] | None:
    """``tensors`` (views into the uint8 region ``buf``) with every tensor ``prepare`` repacks moved into the
    packed layout inside ``buf``; None (nothing changed, ``buf`` untouched) when ``prepare`` packs none of them or
    the group's packed + untouched tensors do not fit ``buf``."""
    from ..kernels.block_pack import PackedQTensor

    packed = {n: prepare(t) for n, t in tensors.items()}
    packed = {n: p for n, p in packed.items() if type(p) is PackedQTensor}
    if not packed:
        return None
    base = (-buf.ctypes.data) % ALIGN  # the region's first 64-byte aligned byte
    layout: list[tuple[str, str, np.ndarray]] = []  # (tensor, part, bytes to place)
    for n, t in tensors.items():
        if n in packed:
            layout.append((n, "packed", packed[n].data))
        else:  # copies: the writes below overwrite the region these views point into
            layout.append((n, "data", np.ascontiguousarray(t.data).copy()))
            if t.scale is not None:
                layout.append((n, "scale", np.ascontiguousarray(t.scale).copy()))
    if base + sum(_aligned(a.nbytes) for _, _, a in layout) > buf.nbytes:
        return None
    out: dict[str, QTensor] = {}
    parts: dict[str, dict[str, np.ndarray]] = {}
    off = base
    for n, part, a in layout:
        view = buf[off: off + a.nbytes]
        view[:] = a.reshape(-1).view(np.uint8)
        parts.setdefault(n, {})[part] = view
        off += _aligned(a.nbytes)
    for n, t in tensors.items():
        got = parts[n]
        if "packed" in got:
            p = packed[n]
            out[n] = PackedQTensor(t, got["packed"], p.lib, p.code)
        else:
            data = got["data"].view(t.data.dtype).reshape(t.data.shape)
            scale = None if t.scale is None else got["scale"].view(t.scale.dtype).reshape(t.scale.shape)
            out[n] = QTensor(t.scheme, tuple(t.shape), data, scale, t.group_size)
    return out
