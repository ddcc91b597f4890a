"""A small CNN graph IR (batch 1, CHW tensors) shared by the CNN importers, the patch planner and the executors.

Ops (``Node.op``) and their attributes:

* ``conv``    x -> y. weights ``w`` [O, I/group, kh, kw] float32, ``b`` [O]. attrs: kernel (kh, kw), stride
              (sh, sw), pads (top, left, bottom, right), dilation (dh, dw), group, act (see below).
              BatchNormalization is folded into the conv at import; a BatchNormalization that follows no conv
              becomes a 1x1 depthwise conv.
* ``maxpool`` / ``avgpool``  x -> y. attrs: kernel, stride, pads, dilation (1 for avgpool), count_include_pad.
* ``gap``     global average pool, [C, H, W] -> [C, 1, 1].
* ``gemm``    [..] -> [N]: flattens its input to K values; weights ``w`` [N, K], ``b`` [N]; attrs: act.
* ``reshape`` attrs: shape (the new shape without the batch dimension; same element order).
* ``add``     two tensors of one shape; attrs: act.
* ``mul``     [C, H, W] * [C, H, W] or [C, 1, 1] (squeeze-excite); attrs: act.
* ``concat``  channel concatenation of [Ci, H, W] tensors.
* ``act``     elementwise: attrs kind in relu / clip (lo, hi) / sigmoid / hardsigmoid (alpha, beta) / hardswish.

``act`` on conv/gemm/add/mul is a fused clamp: ``None``, or ``("clip", lo, hi)`` (Relu is ``("clip", 0, inf)``).
Nodes are stored in a topological order; every tensor has exactly one producer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ModelFormatError

SPATIAL_OPS = ("conv", "maxpool", "avgpool", "add", "mul", "concat", "act")  # ops that can run on a patch
OPS = SPATIAL_OPS + ("gap", "gemm", "reshape")
Shape = tuple[int, ...]


@dataclass
class Node:
    """One operator: ``inputs`` tensor names -> ``output`` tensor name, op attributes and float32 weights."""

    name: str
    op: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class CnnGraph:
    """A batch-1 CNN: one input [C, H, W], nodes in topological order, one output."""

    name: str
    input: str
    input_shape: Shape
    output: str
    nodes: list[Node]
    shapes: dict[str, Shape] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.infer_shapes()

    # -- structure ---------------------------------------------------------------------------------------------
    def producer(self) -> dict[str, Node]:
        """tensor name -> the node producing it."""
        return {n.output: n for n in self.nodes}

    def consumers(self) -> dict[str, list[int]]:
        """tensor name -> indices of the nodes reading it."""
        out: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for t in n.inputs:
                out.setdefault(t, []).append(i)
        return out

    def last_use(self) -> dict[str, int]:
        """tensor name -> index of the last node reading it (the graph output: len(nodes))."""
        last: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for t in n.inputs:
                last[t] = i
        last[self.output] = len(self.nodes)
        return last

    def nbytes(self, tensor: str, itemsize: int = 1) -> int:
        """Bytes of a whole tensor at ``itemsize`` bytes per element (1 = int8 activations)."""
        return int(np.prod(self.shapes[tensor])) * itemsize

    def infer_shapes(self) -> None:
        """Compute every tensor's shape; raises ModelFormatError on inconsistent shapes."""
        shapes: dict[str, Shape] = {self.input: tuple(int(v) for v in self.input_shape)}
        for n in self.nodes:
            for t in n.inputs:
                if t not in shapes:
                    raise ModelFormatError(f"{self.name}: node {n.name!r} reads tensor {t!r} before it is produced")
            shapes[n.output] = node_output_shape(n, [shapes[t] for t in n.inputs], self.name)
        if self.output not in shapes:
            raise ModelFormatError(f"{self.name}: graph output {self.output!r} is not produced by any node")
        self.shapes = shapes

    def inplace_candidate(self, i: int, last: dict[str, int]) -> bool:
        """Whether node ``i`` may write its output over its input (TinyEngine's in-place depthwise): a depthwise
        conv (channel multiplier 1) whose input dies at this node and is neither the network input (the caller's
        array) nor the network output. The caller also checks output size <= input size (for the boxes it runs)."""
        n = self.nodes[i]
        if n.op != "conv" or n.inputs[0] == self.input or n.output == self.output:
            return False
        c = self.shapes[n.inputs[0]][0]
        w = n.weights["w"]
        return int(n.attrs["group"]) == c and w.shape[0] == c and w.shape[1] == 1 and last.get(n.inputs[0]) == i

    def fused_residual(self, i: int, last: dict[str, int]) -> str | None:
        """The residual input ``r`` when pointwise conv ``i`` feeds only the next node, ``add(conv_i, r)``, and ``r``
        dies there (MCUNetV2/TinyEngine: the projection conv adds into the residual's buffer as it goes, channel
        by channel, so its output never exists on its own); else None."""
        n = self.nodes[i]
        if n.op != "conv" or i + 1 >= len(self.nodes) or n.output == self.output:
            return None
        a = self.nodes[i + 1]
        if (n.attrs["kernel"], n.attrs["stride"], tuple(n.attrs["pads"]), int(n.attrs["group"])) != (
                (1, 1), (1, 1), (0, 0, 0, 0), 1) or a.op != "add" or n.output not in a.inputs:
            return None
        r = a.inputs[1] if a.inputs[0] == n.output else a.inputs[0]
        if r == n.output or r == self.input or last.get(r) != i + 1 or last.get(n.output) != i + 1:
            return None
        return r

    # -- cost --------------------------------------------------------------------------------------------------
    def node_macs(self, node: Node, out_area: int | None = None) -> int:
        """Multiply-accumulates of ``node`` over ``out_area`` output pixels (default: its whole output)."""
        shp = self.shapes[node.output]
        area = out_area if out_area is not None else (shp[1] * shp[2] if len(shp) == 3 else 1)
        if node.op == "conv":
            o, ig, kh, kw = node.weights["w"].shape
            return int(o * ig * kh * kw * area)
        if node.op == "gemm":
            return int(node.weights["w"].size)
        if node.op in ("maxpool", "avgpool"):
            kh, kw = node.attrs["kernel"]
            return int(shp[0] * kh * kw * area)
        return 0

    def total_macs(self) -> int:
        """MACs of the whole graph (conv, gemm, pooling windows)."""
        return sum(self.node_macs(n) for n in self.nodes)

    def param_count(self) -> int:
        """Number of weight values."""
        return sum(int(w.size) for n in self.nodes for w in n.weights.values())


def conv_out(size: int, k: int, s: int, p0: int, p1: int, d: int) -> int:
    """Output length of a conv/pool along one axis."""
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


MAX_EXTENT = 1 << 16  # kernel / stride / pad / dilation / spatial size bound (far above any CNN)
MAX_ELEMENTS = 1 << 28  # elements of one activation tensor (1 GiB of float32)


def node_output_shape(n: Node, ins: list[Shape], where: str = "graph") -> Shape:
    """Output shape of node ``n`` given its input shapes (ModelFormatError when they do not fit, or when the
    output would exceed :data:`MAX_ELEMENTS` values)."""
    shp = _node_output_shape(n, ins, where)
    total = 1
    for v in shp:
        total *= int(v)
    if any(int(v) <= 0 for v in shp) or total > MAX_ELEMENTS:
        raise ModelFormatError(f"{where}: node {n.name!r} ({n.op}): output shape {list(shp)} is empty or beyond "
                               f"{MAX_ELEMENTS} values")
    return shp


def _node_output_shape(n: Node, ins: list[Shape], where: str = "graph") -> Shape:
    def bad(msg: str) -> ModelFormatError:
        return ModelFormatError(f"{where}: node {n.name!r} ({n.op}): {msg}")

    if not ins:
        raise bad("has no input")
    x = ins[0]
    if n.op in ("conv", "maxpool", "avgpool"):
        if len(x) != 3:
            raise bad(f"expects a [C, H, W] input, got {list(x)}")
        try:
            (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = (
                n.attrs["kernel"], n.attrs["stride"], n.attrs["pads"], n.attrs.get("dilation", (1, 1)))
        except (KeyError, TypeError, ValueError):
            raise bad("kernel_shape, strides, pads and dilations must be 2-D") from None
        for what, vals, lo in (("kernel_shape", (kh, kw), 1), ("strides", (sh, sw), 1), ("dilations", (dh, dw), 1),
                               ("pads", (pt, pl, pb, pr), 0)):
            if not all(isinstance(v, (int, np.integer)) and lo <= int(v) <= MAX_EXTENT for v in vals):
                raise bad(f"{what} {[int(v) for v in vals]} out of range ({lo}..{MAX_EXTENT})")
        oh, ow = conv_out(x[1], kh, sh, pt, pb, dh), conv_out(x[2], kw, sw, pl, pr, dw)
        if oh <= 0 or ow <= 0:
            raise bad(f"kernel {kh}x{kw} does not fit input {list(x)}")
        if n.op == "conv":
            w = n.weights["w"]
            g = int(n.attrs["group"])
            if g < 1 or w.ndim != 4 or w.shape[1] * g != x[0] or w.shape[0] % g:
                raise bad(f"weight {list(w.shape)} with group {g} does not match input channels {x[0]}")
            if tuple(int(v) for v in w.shape[2:]) != (int(kh), int(kw)):
                raise bad(f"kernel_shape {[int(kh), int(kw)]} does not match the weight {list(w.shape)}")
            b = n.weights.get("b")
            if b is not None and tuple(b.shape) != (int(w.shape[0]),):
                raise bad(f"bias {list(b.shape)} does not match {int(w.shape[0])} output channels")
            return (int(w.shape[0]), oh, ow)
        return (x[0], oh, ow)
    if n.op == "gap":
        return (x[0], 1, 1)
    if n.op == "gemm":
        k = int(np.prod(x))
        w = n.weights["w"]
        if w.ndim != 2 or w.shape[1] != k or w.shape[0] < 1:
            raise bad(f"weight {list(w.shape)} does not match {k} input features")
        b = n.weights.get("b")
        if b is not None and b.size not in (1, int(w.shape[0])):
            raise bad(f"bias {list(b.shape)} does not match {int(w.shape[0])} outputs")
        return (int(w.shape[0]),)
    if n.op == "reshape":
        shp = tuple(int(v) for v in n.attrs["shape"])
        if int(np.prod(shp)) != int(np.prod(x)):
            raise bad(f"cannot reshape {list(x)} to {list(shp)}")
        return shp
    if n.op == "add":
        if ins[0] != ins[1]:
            raise bad(f"input shapes differ: {list(ins[0])} vs {list(ins[1])} (broadcasting Add is not supported)")
        return x
    if n.op == "mul":
        y = ins[1]
        if y != x and not (len(y) == 3 and y[0] == x[0] and y[1:] == (1, 1)):
            raise bad(f"supports [C,H,W] * [C,H,W] or [C,1,1]; got {list(x)} * {list(y)}")
        return x
    if n.op == "concat":
        if any(len(s) != 3 or s[1:] != x[1:] for s in ins):
            raise bad(f"channel concat needs equal H, W: {[list(s) for s in ins]}")
        return (sum(s[0] for s in ins), x[1], x[2])
    if n.op == "act":
        return x
    raise bad(f"unknown op {n.op!r}")


def clip_bounds(act: Any) -> tuple[float, float]:
    """(lo, hi) of a fused activation (``None`` -> (-inf, inf))."""
    if act is None:
        return (-math.inf, math.inf)
    return (float(act[1]), float(act[2]))
