"""In-place kernels of the numpy CNN executor (TinyEngine / MCUNetV2 buffer tricks), channel chunk by channel chunk.

* in-place depthwise: output channels ``[c0, c1)`` are computed into a small scratch block, then stored at the
  *front* of the input's own buffer (packed [C, oh, ow]). Output chunk ``[c0, c1)`` lands at flat positions
  ``< c1 * oh * ow <= c1 * h * w``, i.e. over input channels ``< c1`` that are already consumed, so no input value
  is overwritten before it is read.
* fused residual: a pointwise conv feeding ``add(conv, r)`` where ``r`` dies at the add: output channels
  ``[c0, c1)`` of the conv are computed, added to ``r``'s channels ``[c0, c1)`` (the add's own arithmetic) and stored
  over ``r``'s buffer the same way; the conv's output never exists as a whole tensor.

Scratch (one chunk of ``CHUNK`` channels, plus the kernels' own im2col/float64 scratch for it) is kernel scratch,
not counted in the activation memory (MCUNetV2's definition). The numbers are exactly the out-of-place kernels'.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from ..bundle.cnn_graph import Node

if TYPE_CHECKING:
    from .executor import View
    from .quant import QuantCnn

CHUNK = 16  # channels per scratch block
Box = tuple[int, int, int, int]
Compute = Callable[[Node, list["View"], Box, "QuantCnn | None"], np.ndarray]


def _sliced(node: Node, q: "QuantCnn | None", c0: int, c1: int, depthwise: bool) -> tuple[Node, "QuantCnn | None"]:
    """``node`` restricted to output channels [c0, c1) (and, for depthwise, to those input channels)."""
    attrs = dict(node.attrs, group=c1 - c0) if depthwise else node.attrs
    w = {k: v[c0:c1] for k, v in node.weights.items()}
    sub = Node(node.name, node.op, node.inputs, node.output, attrs, w)
    if q is None:
        return sub, None
    from .quant import QuantCnn

    qn = dict(q.nodes[node.name])
    for k in ("w", "bias", "mult"):
        if isinstance(qn.get(k), np.ndarray) and qn[k].ndim:
            qn[k] = qn[k][c0:c1]
    return sub, QuantCnn(q.tensors, {node.name: qn})


def _storage(v: "View") -> np.ndarray:
    if not v.data.flags.c_contiguous:
        raise RuntimeError("in-place kernel needs a contiguous input buffer")
    return v.data.reshape(-1)


def depthwise_inplace(compute: Compute, node: Node, x: "View", out_box: Box, q: "QuantCnn | None") -> np.ndarray:
    """Depthwise conv ``node`` over ``out_box`` written over ``x``'s buffer; returns the output (a view of it)."""
    from .executor import View

    c = x.data.shape[0]
    oh, ow = out_box[1] - out_box[0], out_box[3] - out_box[2]
    flat = _storage(x)
    for c0 in range(0, c, CHUNK):
        c1 = min(c, c0 + CHUNK)
        sub, sq = _sliced(node, q, c0, c1, True)
        blk = compute(sub, [View(x.data[c0:c1], x.y0, x.x0)], out_box, sq)
        flat[c0 * oh * ow: c1 * oh * ow] = blk.reshape(-1)
    return flat[: c * oh * ow].reshape(c, oh, ow)


def conv_add_inplace(compute: Compute, conv: Node, add: Node, h: "View", r: "View", out_box: Box,
                     q: "QuantCnn | None") -> np.ndarray:
    """``add(conv(h), r)`` over ``out_box`` written over ``r``'s buffer; returns the add's output (a view of it)."""
    from .executor import View

    o = conv.weights["w"].shape[0]
    oh, ow = out_box[1] - out_box[0], out_box[3] - out_box[2]
    flat = _storage(r)
    first = add.inputs[0] == conv.output
    for c0 in range(0, o, CHUNK):
        c1 = min(o, c0 + CHUNK)
        sub, sq = _sliced(conv, q, c0, c1, False)
        y = View(compute(sub, [h], out_box, sq), out_box[0], out_box[2])
        rr = View(r.data[c0:c1], r.y0, r.x0)
        blk = compute(add, [y, rr] if first else [rr, y], out_box, q)
        flat[c0 * oh * ow: c1 * oh * ow] = blk.reshape(-1)
    return flat[: o * oh * ow].reshape(o, oh, ow)
