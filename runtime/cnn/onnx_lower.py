"""Lower a range of a :class:`CnnGraph` (whole map or one patch's boxes) to an ONNX model for onnxruntime.

This is the fast CPU path: onnxruntime's kernels (MLAS: NCHWc f32 convolutions, VNNI/sdot int8) run the same
graph IR the numpy executor runs, either whole (layer by layer) or one patch of stage 1 at a time.

Boxes: every tensor of the segment has a box ``(y0, y1, x0, x1)`` in its full map's coordinates (the whole map for
layer-by-layer). A conv/pool node's input is sliced to the rows/columns its output box reads (clipped to the map)
and the part of the window outside the map becomes the node's explicit ``pads`` -- the layer's own padding, so a
patch computes exactly the numbers the whole map gives (the executor's rule, :mod:`.executor`).

int8 (``quant`` given) is lowered so that onnxruntime does the numpy int8 executor's arithmetic exactly:

* int8 tensors travel as uint8 (value + 128, zero points + 128): onnxruntime's u8 x s8 kernels are its fast
  ones (VNNI / sdot); the arithmetic is unchanged (``(x + 128) - (zp + 128) = x - zp``).
* conv: ``QLinearConv`` with x_scale = y_scale = 1 and per-channel w_scale = the float32 requantisation
  multiplier, int32 bias: onnxruntime computes ``clamp(rint(float32(acc + bias) * mult) + zp)`` -- the same
  expression as :func:`.executor._requant`; the fused activation clamp is an int8 ``Clip``.
* add: ``com.microsoft.QLinearAdd`` (A/B scales = our float32 multipliers, C scale 1); its rounding is the
  numpy executor's by definition (:mod:`.qadd`) + an int8 ``Clip`` for a fused activation.
* mul / concat / avgpool / gap / gemm: integer or exact-float steps (Cast, Sub zero point, Mul by the float32
  multiplier, Round = half to even, Add zero point, Clip, Cast) in the numpy executor's order; LUT activations are
  a ``Gather`` (hard-swish / hard-sigmoid: DQ -> act -> Q where checked exact, :mod:`.act_lower`); maxpool is an int8 ``MaxPool``.

Tensors carry a leading batch dimension of 1 ([1, C, h, w]; [1, N] for vectors).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ...errors import OptionError
from ..bundle.cnn_graph import CnnGraph, Node
from .executor import _avg_counts, _window_src

if TYPE_CHECKING:
    import onnx

    from .quant import QuantCnn

Box = tuple[int, int, int, int]
OPSET = 17


def opsets() -> list:
    """Opset imports of a lowered model: ONNX 17 and com.microsoft (QLinearAdd)."""
    from onnx import helper

    return [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]


class _Builder:
    """Collects ONNX nodes and initializers with unique names."""

    def __init__(self, weights_u8: bool | None = None) -> None:
        from onnx import helper, numpy_helper

        self.h, self.nh = helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []
        self.cache: dict[tuple[int, str], tuple[np.ndarray, str]] = {}
        self.k = 0
        self.float_acts: frozenset[str] = frozenset()  # act nodes lowered as DQ -> act -> Q instead of a Gather
        # int8 conv / gemm weights as uint8 (exact u8 x u8 kernels): by default on x86 without VNNI (see _conv_weights)
        self.weights_u8 = (not cpu_has_vnni()) if weights_u8 is None else bool(weights_u8)

    def name(self, hint: str) -> str:
        self.k += 1
        return f"{hint}__{self.k}"

    def const(self, arr: np.ndarray, hint: str) -> str:
        key = (id(arr), hint)
        if isinstance(arr, np.ndarray) and arr.size > 16 and key in self.cache:
            return self.cache[key][1]  # the same weight array in another patch: one initializer
        n = self.name(hint)
        self.inits.append(self.nh.from_array(np.asarray(arr), n))
        if isinstance(arr, np.ndarray) and arr.size > 16:
            self.cache[key] = (arr, n)  # keeps ``arr`` alive so its id is not reused
        return n

    def op(self, op_type: str, inputs: Sequence[str], hint: str, **attrs) -> str:
        out = self.name(hint)
        self.nodes.append(self.h.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot products that onnxruntime's u8 x s8 kernels use without saturation: x86-64
    AVX-512 VNNI or AVX-VNNI (from /proc/cpuinfo), or any non-x86 CPU (aarch64: sdot / or widening, exact)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _conv_weights(w: np.ndarray, as_u8: bool) -> tuple[np.ndarray, int]:
    """(QLinearConv weight, its zero point): int8 as is, or uint8 = w + 128 with zero point 128 (same products).
    Without VNNI, MLAS's x86 u8 x s8 kernels (vpmaddubsw) saturate int16 pair sums; its u8 x u8 kernels widen to
    int16 first (exact), so the lowering keeps bit-exactness there at some speed."""
    if not as_u8:
        return w, 0
    return (w.astype(np.int16) + U8).astype(np.uint8), U8


def _depthwise(n: Node, w: np.ndarray) -> bool:
    """A depthwise conv (one input and one output channel per group). MLAS's depthwise u8 x s8 kernels widen
    before they multiply (no int16 pair sums), so these keep int8 weights even where :func:`_conv_weights` stores
    the others as uint8: exact, and ~20% faster than the u8 x u8 path at 112x112 on an AVX2-only CPU; checked
    with saturating extremes (all weights +-127, inputs 255) in ``tests/test_cnn_ort_runner.py``."""
    return int(n.attrs["group"]) == w.shape[0] and w.shape[1] == 1


def full_box(graph: CnnGraph, t: str) -> Box:
    s = graph.shapes[t]
    return (0, s[1], 0, s[2]) if len(s) == 3 else (0, 1, 0, 1)


def _crop(b: _Builder, x: str, have: Box, want: Box, hint: str) -> str:
    """Slice ``x`` (holding box ``have``) down to ``want`` (inside it)."""
    if have == want:
        return x
    if want[0] < have[0] or want[1] > have[1] or want[2] < have[2] or want[3] > have[3]:
        raise OptionError(f"{hint}: box {want} is outside the view {have}")
    starts = np.array([want[0] - have[0], want[2] - have[2]], np.int64)
    ends = starts + np.array([want[1] - want[0], want[3] - want[2]], np.int64)
    return b.op("Slice", [x, b.const(starts, "st"), b.const(ends, "en"), b.const(np.array([2, 3], np.int64), "ax")],
                hint + "_crop")


def _window(node: Node, out_box: Box, hw: tuple[int, int]) -> tuple[Box, list[int]]:
    """(clipped input box to read, ONNX pads [top, left, bottom, right]) for ``out_box`` of a conv/pool."""
    (r0, r1), (c0, c1) = _window_src(node, out_box)
    H, W = hw
    want = (max(r0, 0), min(r1, H), max(c0, 0), min(c1, W))
    return want, [max(0, -r0), max(0, -c0), max(0, r1 - H), max(0, c1 - W)]


def _f32_clamp(b: _Builder, x: str, act, hint: str) -> str:
    if act is None:
        return x
    lo, hi = float(act[1]), float(act[2])
    if lo == 0.0 and math.isinf(hi):
        return b.op("Relu", [x], hint + "_relu")
    ins = [x, b.const(np.float32(lo if math.isfinite(lo) else -np.inf), "lo"),
           b.const(np.float32(hi if math.isfinite(hi) else np.inf), "hi")]
    return b.op("Clip", ins, hint + "_clip")


# -- int8 helpers ---------------------------------------------------------------------------------------------------
U8 = 128  # int8 values travel as uint8 = int8 + 128 (onnxruntime's fast u8 x s8 kernels); zero points shift too


def _u8(v: int) -> np.ndarray:
    """An int8 value (zero point, clamp bound) as the uint8 the lowered graph uses."""
    return np.array(int(v) + U8, np.uint8)


def _f(v: float) -> np.ndarray:
    return np.array(v, np.float32)


def _to_f32_centered(b: _Builder, x: str, zp: int, hint: str) -> str:
    """float32(x) - zp (exact)."""
    xf = b.op("Cast", [x], hint + "_f", to=1)
    return b.op("Sub", [xf, b.const(_f(zp + U8), "zp")], hint + "_c")


def _requant_f32(b: _Builder, v: str, zo: int, lo: int, hi: int, hint: str) -> str:
    """int8(clip(rint(v) + zo, lo, hi)) of a float32 tensor ``v`` (as uint8: + 128)."""
    r = b.op("Round", [v], hint + "_rnd")
    r = b.op("Add", [r, b.const(_f(zo + U8), "zo")], hint + "_zo")
    r = b.op("Clip", [r, b.const(_f(lo + U8), "lo"), b.const(_f(hi + U8), "hi")], hint + "_clip")
    return b.op("Cast", [r], hint + "_u8", to=2)


# -- per-node lowering ----------------------------------------------------------------------------------------------
def _lower_node(b: _Builder, g: CnnGraph, n: Node, ins: list[tuple[str, Box]], out_box: Box,
                q: "QuantCnn | None") -> str:
    """ONNX for ``out_box`` of node ``n`` from its inputs (ONNX name, box); returns the output's ONNX name."""
    op, hint = n.op, n.name.replace("/", "_")
    if op in ("conv", "maxpool", "avgpool"):
        x, have = ins[0]
        want, pads = _window(n, out_box, g.shapes[n.inputs[0]][1:])
        x = _crop(b, x, have, want, hint)
        kw = dict(kernel_shape=list(n.attrs["kernel"]), strides=list(n.attrs["stride"]), pads=pads)
        if op == "conv":
            kw.update(dilations=list(n.attrs.get("dilation", (1, 1))), group=int(n.attrs["group"]))
            if q is None:
                y = b.op("Conv", [x, b.const(n.weights["w"], "w"), b.const(n.weights["b"], "b")], hint, **kw)
                return _f32_clamp(b, y, n.attrs.get("act"), hint)
            qn = q.nodes[n.name]
            zi, zo = q.tensors[n.inputs[0]][1], q.tensors[n.output][1]
            o = qn["w"].shape[0]
            w, wz = _conv_weights(qn["w"], b.weights_u8 and not _depthwise(n, qn["w"]))
            y = b.op("QLinearConv", [x, b.const(_f(1.0), "xs"), b.const(_u8(zi), "xz"), b.const(w, "w"),
                                     b.const(np.asarray(qn["mult"], np.float32).reshape(o), "ws"),
                                     b.const(np.full(o, wz, w.dtype), "wz"), b.const(_f(1.0), "ys"),
                                     b.const(_u8(zo), "yz"), b.const(qn["bias"].astype(np.int32), "b")], hint, **kw)
            lo, hi = qn.get("clamp", (-128, 127))
            if (lo, hi) != (-128, 127):
                y = b.op("Clip", [y, b.const(_u8(lo), "lo"), b.const(_u8(hi), "hi")], hint + "_clamp")
            return y
        if op == "maxpool":
            kw["dilations"] = list(n.attrs.get("dilation", (1, 1)))
            return b.op("MaxPool", [x], hint, **kw)
        cip = int(n.attrs.get("count_include_pad", 0))
        if q is None:
            return b.op("AveragePool", [x], hint, count_include_pad=cip, **kw)
        return _avgpool_int8(b, g, n, x, out_box, pads, kw, q)
    if op in ("add", "mul", "concat", "act"):
        se = [op == "mul" and k == 1 and g.shapes[t][1:] == (1, 1) and g.shapes[n.output][1:] != (1, 1)
              for k, t in enumerate(n.inputs)]  # squeeze-excite scale [C,1,1]: broadcast, never cropped
        xs = [x if s else _crop(b, x, have, out_box, hint) for s, (x, have) in zip(se, ins)]
        return _eltwise(b, n, xs, hint, q)
    x = ins[0][0]
    if op == "gap":
        if q is None:
            return b.op("GlobalAveragePool", [x], hint)
        qn, (_, zi), (_, zo) = q.nodes[n.name], q.tensors[n.inputs[0]], q.tensors[n.output]
        _, h, w = g.shapes[n.inputs[0]]
        s = b.op("ReduceSum", [_to_f32_centered(b, x, zi, hint), b.const(np.array([2, 3], np.int64), "ax")], hint,
                 keepdims=1)
        v = b.op("Div", [b.op("Mul", [s, b.const(_f(qn["mult"]), "m")], hint + "_m"), b.const(_f(h * w), "n")],
                 hint + "_d")
        lo, hi = qn.get("clamp", (-128, 127))
        return _requant_f32(b, v, zo, lo, hi, hint)
    if op == "gemm":
        flat = b.op("Flatten", [x], hint + "_flat", axis=1)
        if q is None:
            y = b.op("Gemm", [flat, b.const(n.weights["w"], "w"), b.const(n.weights["b"].reshape(-1), "b")], hint,
                     transB=1)
            return _f32_clamp(b, y, n.attrs.get("act"), hint)
        qn, (_, zi), (_, zo) = q.nodes[n.name], q.tensors[n.inputs[0]], q.tensors[n.output]
        wt, wz = _conv_weights(np.ascontiguousarray(qn["w"].T), b.weights_u8)
        acc = b.op("MatMulInteger", [flat, b.const(wt, "wT"), b.const(_u8(zi), "xz"), b.const(np.array(wz, wt.dtype),
                                                                                          "wz")], hint)
        acc = b.op("Add", [acc, b.const(qn["bias"].astype(np.int32).reshape(-1), "b")], hint + "_b")
        v = b.op("Mul", [b.op("Cast", [acc], hint + "_f", to=1), b.const(np.asarray(qn["mult"], np.float32), "m")],
                 hint + "_m")
        lo, hi = qn.get("clamp", (-128, 127))
        return _requant_f32(b, v, zo, lo, hi, hint)
    if op == "reshape":
        return b.op("Reshape", [x, b.const(np.array((1,) + tuple(n.attrs["shape"]), np.int64), "shape")], hint)
    raise OptionError(f"node {n.name!r}: op {op!r} has no onnxruntime lowering")


ACC_BAND_BYTES = 1 << 20  # default cap on one int8 conv's int32 accumulator map with uint8 weights


def acc_band_bytes(weights_u8: bool, quant: "QuantCnn | None") -> int:
    """Default row-band cap for :func:`lower_segment`: with uint8 weights (x86 without VNNI) onnxruntime's
    QLinearConv cannot take its symmetric path (signed weights, zero point 0, requantisation fused per tile) and
    allocates an int32 accumulator buffer for the *whole* output (4 B per output element: 4.8 MB for
    MobileNetV2's 96x112x112 expansion conv) plus its output before requantising; such convs are lowered as row
    bands of at most ``ACC_BAND_BYTES`` of accumulators, joined by ``Concat`` (same numbers). 0 (off) otherwise."""
    return ACC_BAND_BYTES if quant is not None and weights_u8 else 0


def _lower_banded(b: _Builder, g: CnnGraph, n: Node, ins: list[tuple[str, Box]], out_box: Box,
                  q: "QuantCnn | None", band_bytes: int) -> str:
    """:func:`_lower_node`, except that an int8 conv whose int32 accumulators over ``out_box`` exceed
    ``band_bytes`` is computed as row bands of ``out_box`` (each reads its own input rows, as a patch does) joined
    along H by ``Concat``."""
    y0, y1, x0, x1 = out_box
    if n.op != "conv" or q is None or band_bytes <= 0:
        return _lower_node(b, g, n, ins, out_box, q)
    acc = 4 * g.shapes[n.output][0] * (y1 - y0) * (x1 - x0)
    nb = min(-(-acc // band_bytes), y1 - y0)
    if nb <= 1:
        return _lower_node(b, g, n, ins, out_box, q)
    cuts = [y0 + (y1 - y0) * k // nb for k in range(nb + 1)]
    parts = [_lower_node(b, g, n, ins, (r0, r1, x0, x1), q) for r0, r1 in zip(cuts, cuts[1:])]
    return b.op("Concat", parts, n.name.replace("/", "_") + "_bands", axis=2)


def _avgpool_int8(b: _Builder, g: CnnGraph, n: Node, x: str, out_box: Box, pads: list[int], kw: dict,
                  q: "QuantCnn") -> str:
    """sum of (x - zp) over the window (a ones depthwise conv: exact integer sums in float32) * mult / count."""
    qn, (_, zi), (_, zo) = q.nodes[n.name], q.tensors[n.inputs[0]], q.tensors[n.output]
    c = g.shapes[n.inputs[0]][0]
    kh, kwd = n.attrs["kernel"]
    ones = np.ones((c, 1, kh, kwd), np.float32)
    s = b.op("Conv", [_to_f32_centered(b, x, zi, n.name), b.const(ones, "ones")], n.name + "_sum", group=c,
             kernel_shape=kw["kernel_shape"], strides=kw["strides"], pads=pads)

    counts = _avg_counts(n, out_box, g.shapes[n.inputs[0]][1:]).astype(np.float32)[None, None]
    v = b.op("Div", [b.op("Mul", [s, b.const(_f(qn["mult"]), "m")], n.name + "_m"), b.const(counts, "cnt")],
             n.name + "_d")
    return _requant_f32(b, v, zo, -128, 127, n.name)


def _eltwise(b: _Builder, n: Node, xs: list[str], hint: str, q: "QuantCnn | None") -> str:
    op = n.op
    if q is None:
        if op == "add":
            return _f32_clamp(b, b.op("Add", xs, hint), n.attrs.get("act"), hint)
        if op == "mul":
            return _f32_clamp(b, b.op("Mul", xs, hint), n.attrs.get("act"), hint)
        if op == "concat":
            return b.op("Concat", xs, hint, axis=1)
        k = n.attrs["kind"]
        if k == "clip":
            return _f32_clamp(b, xs[0], ("clip", n.attrs["lo"], n.attrs["hi"]), hint)
        if k == "sigmoid":
            return b.op("Sigmoid", xs, hint)
        if k == "hardsigmoid":
            return b.op("HardSigmoid", xs, hint, alpha=float(n.attrs["alpha"]), beta=float(n.attrs["beta"]))
        if k == "hardswish":
            return b.op("HardSwish", xs, hint)
        if k == "softmax":  # NCHW: channels are axis 1
            beta = float(n.attrs.get("beta", 1.0))
            src = xs[0] if beta == 1.0 else b.op("Mul", [xs[0], b.const(np.float32(beta), "beta")], hint + "_beta")
            return b.op("Softmax", [src], hint, axis=1)
        raise OptionError(f"node {n.name!r}: unknown activation {k!r}")
    qn = q.nodes.get(n.name, {})
    zin = [q.tensors[t][1] for t in n.inputs]
    zo = q.tensors[n.output][1]
    lo, hi = qn.get("clamp", (-128, 127))
    if op == "add":  # one fused node; its rounding is the numpy executor's (.qadd)
        y = b.op("QLinearAdd", [xs[0], b.const(_f(qn["m1"]), "m1"), b.const(_u8(zin[0]), "za"), xs[1],
                                b.const(_f(qn["m2"]), "m2"), b.const(_u8(zin[1]), "zb"), b.const(_f(1.0), "sc"),
                                b.const(_u8(zo), "zc")], hint, domain="com.microsoft")
        if (lo, hi) != (-128, 127):
            y = b.op("Clip", [y, b.const(_u8(lo), "lo"), b.const(_u8(hi), "hi")], hint + "_clamp")
        return y
    if op == "mul":
        ai = [b.op("Sub", [b.op("Cast", [x], hint + "_i", to=6), b.const(np.array(z + U8, np.int32), "zp")], hint + "_c")
              for x, z in zip(xs, zin)]
        p = b.op("Cast", [b.op("Mul", ai, hint)], hint + "_f", to=1)
        return _requant_f32(b, b.op("Mul", [p, b.const(_f(qn["mult"]), "m")], hint + "_m"), zo, lo, hi, hint)
    if op == "concat":
        parts = [_requant_f32(b, b.op("Mul", [_to_f32_centered(b, x, z, hint), b.const(_f(m), "m")], hint + "_m"),
                              zo, -128, 127, hint) for x, z, m in zip(xs, zin, qn["mults"])]
        return b.op("Concat", parts, hint, axis=1)
    if n.name in b.float_acts:  # hard-swish / hard-sigmoid checked equal to the table (.act_lower)
        from .act_lower import float_chain

        return float_chain(b, n, xs[0], q, hint)
    idx = b.op("Cast", [xs[0]], hint + "_i", to=6)  # uint8 = int8 + 128: the LUT index
    lut = (qn["lut"].astype(np.int16) + U8).astype(np.uint8)
    return b.op("Gather", [b.const(lut, "lut"), idx], hint, axis=0)


# -- segments -------------------------------------------------------------------------------------------------------
def onnx_shape(graph: CnnGraph, t: str, box: Box) -> list[int]:
    s = graph.shapes[t]
    if len(s) == 3:
        return [1, s[0], box[1] - box[0], box[3] - box[2]]
    return [1] + list(s)


def input_quantizer(graph: CnnGraph, quant: "QuantCnn") -> "onnx.ModelProto":
    """float32 [1, C, H, W] network input -> the int8 input (carried as uint8): ``QuantizeLinear``, which divides
    in float32 and rounds half to even, as :meth:`.quant.QuantCnn.quantize_input` does."""
    from onnx import TensorProto, helper

    b = _Builder()
    s, z = quant.tensors[graph.input]
    y = b.op("QuantizeLinear", ["x", b.const(_f(s), "s"), b.const(_u8(z), "z")], "q")
    shp = onnx_shape(graph, graph.input, full_box(graph, graph.input))
    gp = helper.make_graph(b.nodes, "quantize_input", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shp)],
                           [helper.make_tensor_value_info(y, TensorProto.UINT8, shp)], b.inits)
    return helper.make_model(gp, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def _float_acts(graph: CnnGraph, quant: "QuantCnn | None", given: frozenset[str] | None) -> frozenset[str]:
    if quant is None:
        return frozenset()
    if given is not None:
        return given
    from .act_lower import exact_float_acts

    return exact_float_acts(graph, quant)


def lower_segment(graph: CnnGraph, start: int, end: int, inputs: dict[str, Box], boxes: dict[str, Box],
                  outputs: Sequence[str], quant: "QuantCnn | None" = None, name: str = "segment",
                  float_acts: frozenset[str] | None = None, weights_u8: bool | None = None,
                  band_bytes: int | None = None) -> "onnx.ModelProto":
    """ONNX model of nodes ``start..end-1``: graph inputs ``inputs`` (tensor -> the box the fed array holds), every
    produced tensor computed over ``boxes[tensor]`` (default: the whole map), model outputs ``outputs``.
    ``band_bytes``: int8 convs whose int32 accumulator map would exceed it run in row bands (see
    :func:`acc_band_bytes`, the default; 0 = never).
    ``weights_u8``: int8 conv / gemm weights as uint8 + 128 (None: when :func:`cpu_has_vnni` is false; False forces
    int8 weights, onnxruntime's fast u8 x s8 kernels, which without VNNI saturate int16 pair sums: not exact).
    ``float_acts``: int8 act nodes to lower as DQ -> act -> Q (default: those :func:`.act_lower.exact_float_acts`
    finds exact)."""
    from onnx import TensorProto, helper

    b = _Builder(weights_u8)
    b.float_acts = _float_acts(graph, quant, float_acts)
    elem = TensorProto.UINT8 if quant is not None else TensorProto.FLOAT
    env: dict[str, tuple[str, Box]] = {}
    g_in = []
    for t, box in inputs.items():
        nm = b.name("in_" + t.replace("/", "_"))
        env[t] = (nm, box)
        g_in.append(helper.make_tensor_value_info(nm, elem, onnx_shape(graph, t, box)))
    bands = acc_band_bytes(b.weights_u8, quant) if band_bytes is None else band_bytes
    for n in graph.nodes[start:end]:
        ob = boxes.get(n.output, full_box(graph, n.output))
        y = _lower_banded(b, graph, n, [env[t] for t in n.inputs], ob, quant, bands)
        env[n.output] = (y, ob)
    g_out = []
    for t in outputs:
        nm, box = env[t]
        ident = b.op("Identity", [nm], "out_" + t.replace("/", "_"))
        g_out.append(helper.make_tensor_value_info(ident, elem, onnx_shape(graph, t, box)))
    gp = helper.make_graph(b.nodes, name, g_in, g_out, b.inits)
    return helper.make_model(gp, opset_imports=opsets(), ir_version=8,
                             producer_name="edgespool")


def _patch_grid(regions: Sequence[dict[str, Box]], t: str) -> list[list[int]]:
    """Patch indices of ``regions`` as rows of a grid over tensor ``t`` (row-major, boxes tiling the map)."""
    rows: dict[int, list[int]] = {}
    for k, reg in enumerate(regions):
        rows.setdefault(reg[t][0], []).append(k)
    return [sorted(ks, key=lambda k: regions[k][t][2]) for _, ks in sorted(rows.items())]


def lower_patched(graph: CnnGraph, split: int, regions: Sequence[dict[str, Box]],
                  quant: "QuantCnn | None" = None, float_acts: frozenset[str] | None = None,
                  weights_u8: bool | None = None) -> "onnx.ModelProto":
    """The whole patch-based network as one ONNX model: stage 1 (nodes ``0..split``) for every patch of
    ``regions`` in patch order from the whole input, the patches joined into the stage-1 output T by spatial
    ``Concat`` (each grid row along W, then the rows along H), then stage 2 over T. Same numbers as
    :func:`lower_patches` + a stage-2 :func:`lower_segment` (the concat only moves values); one session call,
    and onnxruntime keeps its NHWC / NCHWc layout across the join instead of converting every patch back."""
    from onnx import TensorProto, helper

    b = _Builder(weights_u8)
    b.float_acts = _float_acts(graph, quant, float_acts)
    elem = TensorProto.UINT8 if quant is not None else TensorProto.FLOAT
    ib = full_box(graph, graph.input)
    g_in = [helper.make_tensor_value_info("x", elem, onnx_shape(graph, graph.input, ib))]
    t = graph.nodes[split].output
    outs: list[str] = []
    for reg in regions:
        env: dict[str, tuple[str, Box]] = {graph.input: ("x", ib)}
        for n in graph.nodes[: split + 1]:
            env[n.output] = (_lower_node(b, graph, n, [env[s] for s in n.inputs], reg[n.output], quant),
                             reg[n.output])
        outs.append(env[t][0])
    rows = [r[0] if len(r) == 1 else b.op("Concat", r, "join_w", axis=3)
            for r in ([outs[k] for k in ks] for ks in _patch_grid(regions, t))]
    joined = rows[0] if len(rows) == 1 else b.op("Concat", rows, "join_h", axis=2)
    env = {t: (joined, full_box(graph, t))}
    bands = acc_band_bytes(b.weights_u8, quant)
    for n in graph.nodes[split + 1:]:
        env[n.output] = (_lower_banded(b, graph, n, [env[s] for s in n.inputs], full_box(graph, n.output), quant,
                                       bands), full_box(graph, n.output))
    y = b.op("Identity", [env[graph.output][0]], "out")
    g_out = [helper.make_tensor_value_info(y, elem, onnx_shape(graph, graph.output, full_box(graph, graph.output)))]
    gp = helper.make_graph(b.nodes, "patched", g_in, g_out, b.inits)
    return helper.make_model(gp, opset_imports=opsets(), ir_version=8, producer_name="edgespool")


def lower_patches(graph: CnnGraph, split: int, regions: Sequence[dict[str, Box]], input_box: Box,
                  quant: "QuantCnn | None" = None, float_acts: frozenset[str] | None = None,
                  weights_u8: bool | None = None) -> "onnx.ModelProto":
    """One ONNX model computing stage 1 (nodes ``0..split``) for every patch of ``regions``, in patch order, from one
    input holding ``input_box`` of the network input; output ``k`` is patch ``k`` of the stage-1 output. Weights
    are shared initializers (one copy for all patches). ``float_acts``: as :func:`lower_segment`."""
    from onnx import TensorProto, helper

    b = _Builder(weights_u8)
    b.float_acts = _float_acts(graph, quant, float_acts)
    elem = TensorProto.UINT8 if quant is not None else TensorProto.FLOAT
    g_in = [helper.make_tensor_value_info("x", elem, onnx_shape(graph, graph.input, input_box))]
    t = graph.nodes[split].output
    g_out = []
    for k, reg in enumerate(regions):
        env: dict[str, tuple[str, Box]] = {graph.input: ("x", input_box)}
        for n in graph.nodes[: split + 1]:
            env[n.output] = (_lower_node(b, graph, n, [env[s] for s in n.inputs], reg[n.output], quant),
                             reg[n.output])
        y = b.op("Identity", [env[t][0]], f"patch{k}")
        g_out.append(helper.make_tensor_value_info(y, elem, onnx_shape(graph, t, reg[t])))
    gp = helper.make_graph(b.nodes, "stage1_patches", g_in, g_out, b.inits)
    return helper.make_model(gp, opset_imports=opsets(), ir_version=8,
                             producer_name="edgespool")
