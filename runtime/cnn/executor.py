"""CNN executors (numpy): layer by layer, and patch-based (MCUNetV2) following a :class:`PatchPlan`.

Every kernel computes an output *box* of a node from input *views* (a view is an array holding rows
[y0, y0 + h) and columns [x0, x0 + w) of a full [C, H, W] tensor). Positions outside the full tensor are the
layer's padding (0 for conv/avgpool, -inf for maxpool), so a patch gives exactly the numbers the whole-map
computation gives at the same positions.

Two numeric modes:

* f32: float32 throughout (conv accumulates in float32 via BLAS).
* int8: real integer inference with per-output-channel symmetric int8 weights and per-tensor asymmetric int8
  activations (TFLite-style; parameters from :mod:`.quant`). Accumulators are exact integers (computed in
  float64, which is exact here) plus an int32 bias; requantisation is ``q = clamp(rint(float32(acc) * m) + zp)``
  with a float32 multiplier ``m`` -- the same operations, in the same order, as the generated C kernels
  (:mod:`edgespool.exporters.cnn.mcu_c`), so both give bit-identical int8 results.

Memory accounting: the executor tracks the activation arrays it actually holds (inputs, outputs, residual
branches, the stage-1 output buffer, the network input) and reports, per node, the bytes held while it runs; kernel
scratch (im2col, float64 accumulators) is not included. For int8 this is MCUNetV2's peak activation memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ...errors import OptionError
from ..bundle.cnn_graph import CnnGraph, Node

if TYPE_CHECKING:
    from ...schedulers.patch_plan import PatchPlan
    from .quant import QuantCnn

Box = tuple[int, int, int, int]


@dataclass
class View:
    """Rows [y0, y0+h) and columns [x0, x0+w) of a full [C, H, W] tensor (``data`` is [C, h, w])."""

    data: np.ndarray
    y0: int = 0
    x0: int = 0

    @property
    def box(self) -> Box:
        return (self.y0, self.y0 + self.data.shape[1], self.x0, self.x0 + self.data.shape[2])

    def crop(self, box: Box) -> np.ndarray:
        """The part of this view covering ``box`` (which must lie inside it)."""
        y0, y1, x0, x1 = box
        vy0, vy1, vx0, vx1 = self.box
        if y0 < vy0 or y1 > vy1 or x0 < vx0 or x1 > vx1:
            raise RuntimeError(f"box {box} is outside view {self.box}")
        return self.data[:, y0 - vy0: y1 - vy0, x0 - vx0: x1 - vx0]


@dataclass
class RunResult:
    """Output of a run and the memory the executor held."""

    output: np.ndarray
    peak_bytes: int
    per_node: list[tuple[str, int]] = field(default_factory=list)  # bytes held while each node ran (worst patch)
    macs: int = 0  # MACs actually executed (patched stage 1 includes the halo recomputation)


def _gather(v: View, rows: tuple[int, int], cols: tuple[int, int], hw: tuple[int, int], fill: float,
            dtype: np.dtype) -> np.ndarray:
    """[C, rows, cols] from view ``v`` where positions outside [0, H) x [0, W) are ``fill`` (padding)."""
    a, b = rows
    c, d = cols
    H, W = hw
    ia, ib, ic, id_ = max(a, 0), min(b, H), max(c, 0), min(d, W)
    inner = v.crop((ia, ib, ic, id_)).astype(dtype, copy=False)
    if (ia, ib, ic, id_) == (a, b, c, d):
        return inner
    out = np.full((v.data.shape[0], b - a, d - c), fill, dtype=dtype)
    out[:, ia - a: ib - a, ic - c: id_ - c] = inner
    return out


def _window_src(node: Node, out_box: Box) -> tuple[tuple[int, int], tuple[int, int]]:
    (kh, kw), (sh, sw), (pt, pl, _, _), (dh, dw) = (node.attrs["kernel"], node.attrs["stride"], node.attrs["pads"],
                                                  node.attrs.get("dilation", (1, 1)))
    y0, y1, x0, x1 = out_box
    return ((y0 * sh - pt, (y1 - 1) * sh - pt + (kh - 1) * dh + 1),
            (x0 * sw - pl, (x1 - 1) * sw - pl + (kw - 1) * dw + 1))


def _taps(p: np.ndarray, node: Node, oh: int, ow: int):
    """Yield (ky, kx, strided slice of padded input p) for every kernel tap."""
    (kh, kw), (sh, sw), (dh, dw) = node.attrs["kernel"], node.attrs["stride"], node.attrs.get("dilation", (1, 1))
    for ky in range(kh):
        for kx in range(kw):
            yield ky, kx, p[:, ky * dh: ky * dh + sh * (oh - 1) + 1: sh, kx * dw: kx * dw + sw * (ow - 1) + 1: sw]


def conv_valid(p: np.ndarray, w: np.ndarray, node: Node, oh: int, ow: int) -> np.ndarray:
    """Convolution of an already padded input ``p`` [C, Hp, Wp] with ``w`` [O, C/g, kh, kw] (no bias) in p's
    dtype (float32, or float64 holding exact integers)."""
    g = int(node.attrs["group"])
    o, ig, kh, kw = w.shape
    c = p.shape[0]
    if g == c and ig == 1:  # depthwise (channel multiplier o // c)
        m = o // c
        xr = p if m == 1 else np.repeat(p, m, axis=0)
        acc = np.zeros((o, oh, ow), dtype=p.dtype)
        for ky, kx, sl in _taps(xr, node, oh, ow):
            acc += w[:, 0, ky, kx, None, None] * sl
        return acc
    if kh == kw == 1 and node.attrs["stride"] == (1, 1) and g == 1:
        return (w.reshape(o, ig) @ p.reshape(c, -1)).reshape(o, oh, ow)
    cols = np.stack([sl for _, _, sl in _taps(p, node, oh, ow)], axis=1)  # [C, kh*kw, oh, ow]
    cols = cols.reshape(g, ig * kh * kw, oh * ow)
    out = np.matmul(w.reshape(g, o // g, ig * kh * kw), cols)
    return out.reshape(o, oh, ow)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def act_f32(node: Node, x: np.ndarray) -> np.ndarray:
    """Elementwise activation of an ``act`` node in float32."""
    k = node.attrs["kind"]
    if k == "clip":
        return np.clip(x, node.attrs["lo"], node.attrs["hi"]).astype(np.float32)
    if k == "sigmoid":
        return _sigmoid(x).astype(np.float32)
    if k == "hardsigmoid":
        return np.clip(node.attrs["alpha"] * x + node.attrs["beta"], 0, 1).astype(np.float32)
    if k == "hardswish":
        return (x * np.clip(x + 3.0, 0, 6) / 6.0).astype(np.float32)
    if k == "softmax":  # over channels (axis 0 of CHW: pointwise in space, so patches need no halo)
        z = (x - x.max(axis=0, keepdims=True)) * np.float32(node.attrs.get("beta", 1.0))
        e = np.exp(z)
        return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)
    raise OptionError(f"node {node.name!r}: unknown activation {k!r}")


def _clamp_f32(node: Node, y: np.ndarray) -> np.ndarray:
    act = node.attrs.get("act")
    if act is not None:
        y = np.clip(y, act[1], act[2])
    return y.astype(np.float32, copy=False)


# -- float32 kernels ------------------------------------------------------------------------------------------------
def compute_f32(node: Node, ins: list[View], out_box: Box, in_shapes: list[tuple[int, ...]]) -> np.ndarray:
    """float32 output box ``out_box`` of ``node`` from input views."""
    op = node.op
    y0, y1, x0, x1 = out_box
    oh, ow = y1 - y0, x1 - x0
    if op in ("conv", "maxpool", "avgpool"):
        hw = in_shapes[0][1:]
        rows, cols = _window_src(node, out_box)
        if op == "conv":
            p = _gather(ins[0], rows, cols, hw, 0.0, np.float32)
            y = conv_valid(p, node.weights["w"], node, oh, ow) + node.weights["b"][:, None, None]
            return _clamp_f32(node, y)
        if op == "maxpool":
            p = _gather(ins[0], rows, cols, hw, -np.inf, np.float32)
            return np.max(np.stack([sl for _, _, sl in _taps(p, node, oh, ow)]), axis=0)
        p = _gather(ins[0], rows, cols, hw, 0.0, np.float32)
        s = np.sum(np.stack([sl for _, _, sl in _taps(p, node, oh, ow)]), axis=0)
        return (s / _avg_counts(node, out_box, hw)).astype(np.float32)
    if op == "add":
        return _clamp_f32(node, ins[0].crop(out_box) + ins[1].crop(out_box))
    if op == "mul":
        b = ins[1].data if in_shapes[1][1:] == (1, 1) else ins[1].crop(out_box)
        return _clamp_f32(node, ins[0].crop(out_box) * b)
    if op == "concat":
        return np.concatenate([v.crop(out_box) for v in ins], axis=0)
    if op == "act":
        return act_f32(node, ins[0].crop(out_box))
    if op == "gap":
        return ins[0].data.mean(axis=(1, 2), keepdims=True, dtype=np.float32)
    if op == "gemm":
        return _clamp_f32(node, node.weights["w"] @ ins[0].data.reshape(-1) + node.weights["b"])
    if op == "reshape":
        return ins[0].data.reshape(node.attrs["shape"])
    raise OptionError(f"node {node.name!r}: unknown op {op!r}")


def _avg_counts(node: Node, out_box: Box, hw: tuple[int, ...]) -> np.ndarray:
    """Number of summed positions per output pixel of an average pool ([oh, ow])."""
    (kh, kw) = node.attrs["kernel"]
    y0, y1, x0, x1 = out_box
    if node.attrs.get("count_include_pad", 0):
        return np.full((y1 - y0, x1 - x0), float(kh * kw), dtype=np.float32)
    rows, cols = _window_src(node, out_box)
    ones = View(np.ones((1, hw[0], hw[1]), np.float32))
    p = _gather(ones, rows, cols, (hw[0], hw[1]), 0.0, np.float32)
    return np.sum(np.stack([sl for _, _, sl in _taps(p, node, y1 - y0, x1 - x0)]), axis=0)[0]


# -- int8 kernels ---------------------------------------------------------------------------------------------------
def _requant(acc: np.ndarray, mult: np.ndarray | np.float32, zp: int, lo: int, hi: int) -> np.ndarray:
    """int8 = clamp(rint(float32(acc) * mult) + zp, lo, hi) (the C kernels' exact arithmetic)."""
    v = acc.astype(np.float32) * mult
    return np.clip(np.rint(v) + zp, lo, hi).astype(np.int8)


def compute_int8(node: Node, ins: list[View], out_box: Box, in_shapes: list[tuple[int, ...]],
                 q: "QuantCnn") -> np.ndarray:
    """int8 output box ``out_box`` of ``node`` from int8 input views (see module docstring)."""
    op = node.op
    qn = q.nodes.get(node.name, {})
    zo = q.tensors[node.output][1]
    lo, hi = qn.get("clamp", (-128, 127))
    y0, y1, x0, x1 = out_box
    oh, ow = y1 - y0, x1 - x0
    zin = [q.tensors[t][1] for t in node.inputs]
    if op in ("conv", "avgpool", "maxpool"):
        hw = in_shapes[0][1:]
        rows, cols = _window_src(node, out_box)
        if op == "maxpool":
            p = _gather(ins[0], rows, cols, hw, -128, np.int8)
            return np.max(np.stack([sl for _, _, sl in _taps(p, node, oh, ow)]), axis=0).astype(np.int8)
        xv = View(ins[0].data.astype(np.float64) - zin[0], ins[0].y0, ins[0].x0)
        p = _gather(xv, rows, cols, hw, 0.0, np.float64)
        if op == "conv":
            acc = conv_valid(p, qn["w"].astype(np.float64), node, oh, ow) + qn["bias"].astype(np.float64)[:, None,
                                                                                                            None]
            return _requant(acc, qn["mult"][:, None, None], zo, lo, hi)
        s = np.sum(np.stack([sl for _, _, sl in _taps(p, node, oh, ow)]), axis=0)
        n = _avg_counts(node, out_box, hw)
        v = (s.astype(np.float32) * qn["mult"]) / n.astype(np.float32)
        return np.clip(np.rint(v) + zo, lo, hi).astype(np.int8)
    if op == "add":
        from .qadd import qlinear_add  # onnxruntime QLinearAdd's arithmetic (fused multiply-adds)

        return qlinear_add(ins[0].crop(out_box), ins[1].crop(out_box), zin[0], zin[1], zo, qn["m1"], qn["m2"], lo, hi)
    if op == "mul":
        a = ins[0].crop(out_box).astype(np.int32) - zin[0]
        bb = ins[1].data if in_shapes[1][1:] == (1, 1) else ins[1].crop(out_box)
        b = bb.astype(np.int32) - zin[1]
        return _requant(a * b, qn["mult"], zo, lo, hi)
    if op == "concat":
        parts = []
        for v, z, m in zip(ins, zin, qn["mults"]):
            parts.append(_requant(v.crop(out_box).astype(np.int32) - z, np.float32(m), zo, -128, 127))
        return np.concatenate(parts, axis=0)
    if op == "act":
        return qn["lut"][ins[0].crop(out_box).astype(np.int32) + 128]
    if op == "gap":
        x = ins[0].data
        s = (x.astype(np.int64) - zin[0]).sum(axis=(1, 2), keepdims=True)
        v = (s.astype(np.float32) * qn["mult"]) / np.float32(x.shape[1] * x.shape[2])
        return np.clip(np.rint(v) + zo, lo, hi).astype(np.int8)
    if op == "gemm":
        x = ins[0].data.reshape(-1).astype(np.float64) - zin[0]
        acc = qn["w"].astype(np.float64) @ x + qn["bias"].astype(np.float64)
        return _requant(acc, qn["mult"], zo, lo, hi)
    if op == "reshape":
        return ins[0].data.reshape(node.attrs["shape"])
    raise OptionError(f"node {node.name!r}: unknown op {op!r}")


# -- executors ------------------------------------------------------------------------------------------------------
class CnnRunner:
    """Runs a :class:`CnnGraph` in f32, or in int8 when given a :class:`QuantCnn`."""

    def __init__(self, graph: CnnGraph, quant: "QuantCnn | None" = None) -> None:
        self.graph = graph
        self.quant = quant
        self.last = graph.last_use()

    @property
    def mode(self) -> str:
        return "int8" if self.quant is not None else "f32"

    def _prep_input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if tuple(x.shape) != tuple(self.graph.input_shape):
            raise OptionError(f"input shape {list(x.shape)} does not match the model's "
                              f"{list(self.graph.input_shape)} (C, H, W)")
        if self.quant is not None:
            return self.quant.quantize_input(x)
        return np.ascontiguousarray(x)

    def _finish(self, y: np.ndarray) -> np.ndarray:
        if self.quant is not None:
            s, z = self.quant.tensors[self.graph.output]
            return ((y.astype(np.float32) - z) * np.float32(s)).astype(np.float32)
        return y

    def _compute(self, node: Node, ins: list[View], out_box: Box) -> np.ndarray:
        shapes = [self.graph.shapes[t] for t in node.inputs]
        if self.quant is not None:
            return compute_int8(node, ins, out_box, shapes, self.quant)
        return compute_f32(node, ins, out_box, shapes)

    def _cq(self, node: Node, ins: list[View], out_box: Box, q: "QuantCnn | None") -> np.ndarray:
        shapes = [self.graph.shapes[t] for t in node.inputs]
        return compute_int8(node, ins, out_box, shapes, q) if q is not None else compute_f32(node, ins, out_box,
                                                                                            shapes)

    def _step(self, i: int, live: dict[str, View], ob: Box, done: dict[int, np.ndarray], inplace: bool,
              stop: int, t: str | None = None) -> tuple[np.ndarray | None, bool]:
        """Node ``i`` over box ``ob``: (output or None when fused into the next add, whether it takes new memory).
        ``inplace``: the planner's in-place rules (:mod:`.inplace`), same conditions, same sizes."""
        g, n = self.graph, self.graph.nodes[i]
        if i in done:  # an add already computed in place by the pointwise conv before it
            return done.pop(i), False
        if inplace:
            from .inplace import conv_add_inplace, depthwise_inplace

            area = (ob[1] - ob[0]) * (ob[3] - ob[2])
            r = g.fused_residual(i, self.last) if i + 1 < stop else None
            if r is not None and r in live and n.weights["w"].shape[0] * area <= live[r].data.size:
                done[i + 1] = conv_add_inplace(self._cq, n, g.nodes[i + 1], live[n.inputs[0]], live[r], ob,
                                               self.quant)
                return None, False
            if n.output != t and g.inplace_candidate(i, self.last) and \
                    n.weights["w"].shape[0] * area <= live[n.inputs[0]].data.size:
                return depthwise_inplace(self._cq, n, live[n.inputs[0]], ob, self.quant), False
        return self._compute(n, [live[s] for s in n.inputs], ob), True

    def _full_box(self, t: str) -> Box:
        s = self.graph.shapes[t]
        return (0, s[1], 0, s[2]) if len(s) == 3 else (0, 1, 0, 1)

    def _run_layers_from(self, live: dict[str, View], start: int, base: int = 0,
                         record: list[tuple[str, int]] | None = None, collect: dict | None = None,
                         inplace: bool = False) -> int:
        """Layer-by-layer from node ``start`` with ``live`` tensors; returns the peak bytes held (+ ``base``)."""
        peak = 0
        g = self.graph
        done: dict[int, np.ndarray] = {}
        for i in range(start, len(g.nodes)):
            n = g.nodes[i]
            out, new = self._step(i, live, self._full_box(n.output), done, inplace, len(g.nodes))
            held = base + sum(v.data.nbytes for v in live.values()) + (out.nbytes if new and out is not None else 0)
            peak = max(peak, held)
            if record is not None:
                record.append((n.name, held))
            if out is not None:
                live[n.output] = View(out)
            if collect is not None and out is not None:
                collect[n.output] = out
            for t in [t for t in live if self.last.get(t, -1) <= i]:
                del live[t]
        return peak

    def run_layers(self, x: np.ndarray, collect: dict[str, np.ndarray] | None = None,
                   inplace_depthwise: bool = False) -> RunResult:
        """Whole-graph, layer-by-layer execution. ``collect`` (optional) receives every tensor;
        ``inplace_depthwise``: the in-place buffer tricks (:mod:`.inplace`)."""
        xi = self._prep_input(x)
        live = {self.graph.input: View(xi)}
        if collect is not None:
            collect[self.graph.input] = xi
        rec: list[tuple[str, int]] = []
        peak = self._run_layers_from(live, 0, record=rec, collect=collect, inplace=inplace_depthwise)
        return RunResult(self._finish(live[self.graph.output].data), peak, rec, self.graph.total_macs())

    def run_patched(self, x: np.ndarray, plan: "PatchPlan") -> RunResult:
        """Stage 1 patch by patch into the stage-1 output buffer, then the rest layer by layer."""
        g = self.graph
        if not plan.is_patched:
            return self.run_layers(x, inplace_depthwise=plan.inplace_depthwise)
        split = plan.split_index
        if plan.model != g.name or split >= len(g.nodes):
            raise OptionError(f"patch plan for {plan.model!r} does not match graph {g.name!r}")
        xi = self._prep_input(x)
        t = g.nodes[split].output
        tbuf = np.zeros(g.shapes[t], dtype=xi.dtype)
        stage1 = g.nodes[: split + 1]
        rec = [0] * len(stage1)
        macs = 0
        for reg in plan.patch_regions():
            ib = reg[g.input]
            if plan.input_resident:
                live: dict[str, View] = {g.input: View(xi)}
            else:  # the input arrives patch by patch: hold only this patch's region
                live = {g.input: View(np.ascontiguousarray(View(xi).crop(ib)), ib[0], ib[2])}
            done: dict[int, np.ndarray] = {}
            for i, n in enumerate(stage1):
                ob = reg[n.output]
                out, new = self._step(i, live, ob, done, plan.inplace_depthwise, split, t)
                macs += g.node_macs(n, (ob[1] - ob[0]) * (ob[3] - ob[2]))
                held = tbuf.nbytes + sum(v.data.nbytes for v in live.values())
                if n.output == t:
                    tbuf[:, ob[0]: ob[1], ob[2]: ob[3]] = out  # written straight into the stage-1 buffer
                elif out is not None:
                    held += out.nbytes if new else 0
                    live[n.output] = View(out, ob[0], ob[2])
                rec[i] = max(rec[i], held)
                keep = g.input if plan.input_resident else None  # a resident input stays for the next patches
                for s in [s for s in live if self.last.get(s, -1) <= i and s != keep]:
                    del live[s]
        record = [(n.name, b) for n, b in zip(stage1, rec)]
        live = {t: View(tbuf)}
        peak2 = self._run_layers_from(live, split + 1, record=record, inplace=plan.inplace_depthwise)
        macs += sum(g.node_macs(n) for n in g.nodes[split + 1:])
        return RunResult(self._finish(live[g.output].data), max(max(rec), peak2), record, macs)
