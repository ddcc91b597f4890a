"""Import a TFLite model (``.tflite`` flatbuffer, batch 1, NHWC) into the CNN graph IR.

Tensors: float32, float16 and int8/uint8 (constants dequantised to float32: f16 weights behind DEQUANTIZE, int8
weights with per-tensor or per-channel scales, int32 biases with their scale). Activations are computed in
float32: a fully-quantised model is imported as its dequantised float graph (QUANTIZE / DEQUANTIZE of activations
become identities); edgespool's int8 path then calibrates its own int8 parameters.

Ops: CONV_2D, DEPTHWISE_CONV_2D (SAME / VALID, strides, dilation, fused RELU / RELU6 / RELU_N1_TO_1), ADD, MUL,
PAD (channel padding -> a 1x1 conv with an [I; 0] weight, exact; spatial zero padding folded into the next
conv / average pool), MAX_POOL_2D, AVERAGE_POOL_2D, MEAN over H and W, RESHAPE, CONCATENATION, FULLY_CONNECTED
(weights permuted from NHWC to CHW flattening), RELU, RELU6, RELU_N1_TO_1, LOGISTIC, HARD_SWISH, DEQUANTIZE,
QUANTIZE. Anything else: UnsupportedModelError naming the file, op and operator.

Outputs: the IR has one output. Every TFLite output is an index array into it (``TfliteCnn.outputs``): a single
4-D output is the IR tensor itself (TFLite's NHWC order = the index array); several outputs, or outputs reached
through NHWC reshapes/concats (BlazeFace's heads), become one IR output = the channel concat of the flattened
head tensors, and :meth:`TfliteCnn.split` gathers the TFLite tensors back out of it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import ModelFormatError, OptionError, UnsupportedModelError
from ...runtime.bundle.cnn_graph import CnnGraph, Node, node_output_shape
from .tflite_fb import TfModel, TfOperator, TfTensor, read_tflite

OPS = {0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE",
       9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 19: "RELU", 20: "RELU_N1_TO_1",
       21: "RELU6", 22: "RESHAPE", 34: "PAD", 40: "MEAN", 114: "QUANTIZE", 117: "HARD_SWISH"}
OTHER_NAMES = {5: "DEPTH_TO_SPACE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX", 28: "TANH", 41: "SUB", 42: "DIV",
               49: "SPLIT", 53: "TRANSPOSE", 54: "PRELU", 60: "PADV2", 83: "PACK", 97: "RESIZE_NEAREST_NEIGHBOR",
               45: "STRIDED_SLICE", 65: "SLICE", 39: "MAXIMUM", 57: "MINIMUM", 100: "MIRROR_PAD", 126: "BATCH_MATMUL"}
FUSED = {0: None, 1: ("clip", 0.0, float("inf")), 2: ("clip", -1.0, 1.0), 3: ("clip", 0.0, 6.0)}
CLIPS = {19: (0.0, float("inf")), 20: (-1.0, 1.0), 21: (0.0, 6.0)}


@dataclass
class TfliteCnn:
    """An imported TFLite model: the IR graph and, per TFLite output, (name, shape, index array into the IR
    output flattened in CHW order)."""

    graph: CnnGraph
    outputs: list[tuple[str, tuple[int, ...], np.ndarray]]
    qparams: dict[str, tuple[float, int]] = field(default_factory=dict)  # IR tensor -> the model's int8 (s, zp)

    def int8_ranges(self) -> dict[str, tuple[float, float]]:
        """The float range [(qmin - zp) * s, (qmax - zp) * s] of every IR tensor the model quantises itself
        (int8 / uint8 activations): fed to ``quantize_cnn`` these give back the model's own scales and zero
        points (uint8 ones shifted by 128)."""
        return {k: ((-128 - z) * s, (127 - z) * s) for k, (s, z) in self.qparams.items()}

    def split(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """The TFLite output tensors (their names, shapes and NHWC order) from the IR output ``y``."""
        flat = np.asarray(y).reshape(-1)
        return {name: flat[idx].reshape(shape) for name, shape, idx in self.outputs}


@dataclass
class _Act:  # a 4-D [1, H, W, C] TFLite activation = IR tensor [C, H, W] (``pads``: a pending spatial zero PAD)
    name: str
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass
class _Vec:  # a [1, N] TFLite activation = IR tensor [N]
    name: str


@dataclass
class _Tail:  # a tensor made by NHWC reshapes/concats: index array into the flat CHW values of ``segments``
    idx: np.ndarray
    segments: dict[str, int]  # IR tensor -> offset of its flat values


def same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow SAME padding along one axis: (before, after)."""
    keff = (k - 1) * d + 1
    out = -(-size // s)
    total = max((out - 1) * s + keff - size, 0)
    return total // 2, total - total // 2


class _Importer:
    def __init__(self, m: TfModel) -> None:
        self.m = m
        self.nodes: list[Node] = []
        self.vals: dict[int, Any] = {}
        self.names: set[str] = set()
        self.seg_next = 0
        self.segs: dict[str, int] = {}

    # -- helpers -----------------------------------------------------------------------------------------------
    def err(self, op: TfOperator, msg: str) -> UnsupportedModelError:
        t = self.m.tensors[op.outputs[0]].name if op.outputs else "?"
        return UnsupportedModelError(f"{self.m.path}: {self._opname(op)} (operator #{op.index}, output {t!r}): {msg}")

    def _opname(self, op: TfOperator) -> str:
        if op.opcode < 0:
            return f"custom op {op.custom!r}"
        return OPS.get(op.opcode) or OTHER_NAMES.get(op.opcode) or f"builtin op {op.opcode}"

    def uniq(self, name: str) -> str:
        base, k = name, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def const(self, op: TfOperator, k: int, what: str) -> np.ndarray:
        """Input ``k`` of ``op`` as a float32 constant (dequantised), or an error."""
        if k >= len(op.inputs) or op.inputs[k] < 0:
            raise self.err(op, f"has no {what} input")
        t = self.m.tensors[op.inputs[k]]
        v = self.vals.get(t.index)
        if isinstance(v, np.ndarray):
            return v
        raise self.err(op, f"{what} {t.name!r} must be a constant tensor")

    def dequant(self, t: TfTensor) -> np.ndarray | None:
        d = self.m.data(t)
        if d is None:
            return None
        if t.type in (3, 9, 7, 2) and t.scale.size and float(np.max(np.abs(t.scale))) > 0:
            shp = [1] * d.ndim
            if t.scale.size > 1:
                if d.ndim == 0 or t.qdim >= d.ndim or d.shape[t.qdim] != t.scale.size:
                    raise ModelFormatError(f"{self.m.path}: tensor {t.name!r}: {t.scale.size} scales do not match "
                                           f"dimension {t.qdim} of {list(d.shape)}")
                shp[t.qdim] = t.scale.size
            zp = t.zero_point if t.zero_point.size else np.zeros(1, np.int64)
            return ((d.astype(np.float64) - zp.reshape(shp if zp.size > 1 else [1] * d.ndim))
                    * t.scale.astype(np.float64).reshape(shp)).astype(np.float32)
        if t.type in (0, 1, 10):
            return d.astype(np.float32)
        return d  # plain integers (shapes, paddings, axes)

    def act_in(self, op: TfOperator, k: int = 0, allow_pad: bool = False) -> _Act:
        v = self.vals.get(op.inputs[k]) if k < len(op.inputs) else None
        if isinstance(v, _Vec):  # [1, N] -> [N, 1, 1]
            return _Act(self.reshape_node(v.name, (self.shape(v.name)[0], 1, 1)))
        if not isinstance(v, _Act):
            raise self.err(op, f"input {k} must be a 4-D [1, H, W, C] activation")
        if any(v.pads) and not allow_pad:
            raise self.err(op, "follows a spatial PAD; only a conv or average pool can absorb one")
        return v

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def emit(self, op: TfOperator | None, kind: str, ins: list[str], attrs: dict, weights: dict | None = None,
             name: str | None = None) -> str:
        out = self.uniq(name or (self.m.tensors[op.outputs[0]].name if op else "t"))
        n = Node(out, kind, ins, out, attrs, weights or {})
        self.shapes[out] = node_output_shape(n, [self.shapes[t] for t in ins], self.m.path)
        self.nodes.append(n)
        return out

    def reshape_node(self, src: str, shape: tuple[int, ...]) -> str:
        return self.emit(None, "reshape", [src], {"shape": tuple(int(v) for v in shape)}, name=f"{src}/reshape")

    def to_tail(self, v: Any, op: TfOperator) -> _Tail:
        if isinstance(v, _Tail):
            return v
        if isinstance(v, _Vec):
            name, idx_shape = v.name, None
        elif isinstance(v, _Act) and not any(v.pads):
            name, idx_shape = v.name, True
        else:
            raise self.err(op, "input must be an activation")
        if name not in self.segs:
            self.segs[name] = self.seg_next
            self.seg_next += int(np.prod(self.shape(name)))
        shp = self.shape(name)
        idx = self.segs[name] + np.arange(int(np.prod(shp)), dtype=np.int64)
        if idx_shape:  # CHW values seen in NHWC order
            idx = idx.reshape(shp).transpose(1, 2, 0)[None]
        else:
            idx = idx[None]
        return _Tail(idx, {name: self.segs[name]})

    def fuse_act(self, src: str, act: Any, exclusive: bool = True) -> str:
        """Apply a clamp to IR tensor ``src``: fused into its producer when that is the last node, has no clamp
        yet and (``exclusive``) nobody else reads the unclamped value; else an ``act`` node."""
        if act is None:
            return src
        p = self.nodes[-1] if self.nodes else None
        if exclusive and p is not None and p.output == src and p.op in ("conv", "gemm", "add", "mul") \
                and p.attrs.get("act") is None:
            p.attrs["act"] = act
            return src
        return self.emit(None, "act", [src], {"kind": "clip", "lo": float(act[1]), "hi": float(act[2])},
                         name=f"{src}/act")

    # -- ops -----------------------------------------------------------------------------------------------------
    def run(self) -> TfliteCnn:
        m = self.m
        if len(m.inputs) != 1:
            raise UnsupportedModelError(f"{m.path}: {len(m.inputs)} inputs; edgespool CNNs take one image input")
        t = m.tensors[m.inputs[0]]
        if len(t.shape) != 4 or t.shape[0] != 1 or min(t.shape) < 1:
            raise OptionError(f"{m.path}: input {t.name!r} has shape {list(t.shape)}; expected a static [1, H, W, C]")
        self.inp = self.uniq(t.name)
        self.in_shape = (t.shape[3], t.shape[1], t.shape[2])
        self.shapes: dict[str, tuple[int, ...]] = {self.inp: self.in_shape}
        self.readers: dict[int, int] = {}
        for op in m.operators:
            for i in op.inputs:
                self.readers[i] = self.readers.get(i, 0) + 1
        self.vals[t.index] = _Act(self.inp)
        self.qparams: dict[str, tuple[float, int]] = {}
        self.note_q(t.index, self.vals[t.index])
        for tt in m.tensors:
            if tt.index != t.index:
                d = self.dequant(tt)
                if d is not None:
                    self.vals[tt.index] = d
        for op in shortcuts_first(m.operators):
            if not op.outputs or op.outputs[0] < 0:
                raise ModelFormatError(f"{m.path}: operator #{op.index} has no output")
            v = self.vals[op.outputs[0]] = self.op(op)
            self.note_q(op.outputs[0], v)
        net = self.finish()
        net.qparams = {k: v for k, v in self.qparams.items() if k in self.shapes}
        return net

    def note_q(self, i: int, v: Any) -> None:
        """Remember tensor ``i``'s int8 parameters for the IR tensor it became (downstream ones win: a fused
        RELU's output parameters are the conv's in TFLite too)."""
        t = self.m.tensors[i]
        if isinstance(v, (_Act, _Vec)) and t.type in (3, 9) and t.scale.size == 1 and float(t.scale[0]) > 0:
            z = int(t.zero_point[0]) if t.zero_point.size else 0
            self.qparams[v.name] = (float(t.scale[0]), z - 128 if t.type == 3 else z)

    def opt(self, op: TfOperator, i: int, fmt: str, default: int | float) -> int | float:
        return op.options.scalar(i, fmt, default) if op.options is not None else default

    def op(self, op: TfOperator) -> Any:
        c = op.opcode
        m = self.m
        if c not in OPS:
            raise self.err(op, f"not supported; supported TFLite ops: {', '.join(sorted(OPS.values()))}")
        if c in (6, 114):  # DEQUANTIZE / QUANTIZE: of a constant -> float constant; of an activation -> identity
            v = self.vals.get(op.inputs[0])
            if v is None:
                raise self.err(op, "input is neither a constant nor a computed tensor")
            return v
        if c in (3, 4):
            return self.conv(op, depthwise=c == 4)
        if c in (1, 17):
            return self.pool(op, "avgpool" if c == 1 else "maxpool")
        if c in (0, 18):
            a, b = self.act_in(op, 0), self.act_in(op, 1)
            sa, sb = self.shape(a.name), self.shape(b.name)
            kind = "add" if c == 0 else "mul"
            if sa != sb and not (kind == "mul" and sb[1:] == (1, 1) and sb[0] == sa[0]):
                raise self.err(op, f"broadcasting {list(sa)} with {list(sb)} is not supported")
            y = self.emit(op, kind, [a.name, b.name], {"act": None})
            return _Act(self.fuse_act(y, FUSED.get(int(self.opt(op, 0, "b", 0)), "bad")))
        if c in CLIPS:
            src = self.vals.get(op.inputs[0])
            lo, hi = CLIPS[c]
            excl = self.readers.get(op.inputs[0], 0) == 1 and op.inputs[0] not in m.outputs
            if isinstance(src, _Vec):
                return _Vec(self.fuse_act(src.name, ("clip", lo, hi), excl))
            return _Act(self.fuse_act(self.act_in(op).name, ("clip", lo, hi), excl))
        if c in (14, 117):
            a = self.act_in(op)
            return _Act(self.emit(op, "act", [a.name], {"kind": "sigmoid" if c == 14 else "hardswish"}))
        if c == 34:
            return self.pad(op)
        if c == 40:
            axes = sorted(int(v) % 4 for v in np.asarray(self.const(op, 1, "axes")).reshape(-1))
            if axes != [1, 2] or len(m.tensors[op.outputs[0]].shape) != 4:
                raise self.err(op, f"only MEAN over H and W with keep_dims is supported (axes {axes})")
            return _Act(self.emit(op, "gap", [self.act_in(op).name], {}))
        if c == 9:
            return self.fully_connected(op)
        if c == 22:
            return self.reshape(op)
        if c == 2:
            return self.concat(op)
        raise self.err(op, "not supported")

    def _act_attr(self, op: TfOperator, field_index: int) -> Any:
        f = int(self.opt(op, field_index, "b", 0))
        if f not in FUSED:
            raise self.err(op, f"fused activation {f} is not supported (NONE, RELU, RELU_N1_TO_1, RELU6 are)")
        return FUSED[f]

    def conv(self, op: TfOperator, depthwise: bool) -> _Act:
        x = self.act_in(op, 0, allow_pad=True)
        w = self.const(op, 1, "filter")
        if w.ndim != 4:
            raise self.err(op, f"filter {list(w.shape)} is not 4-D")
        b = self.const(op, 2, "bias") if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        cin = self.shape(x.name)[0]
        padding = int(self.opt(op, 0, "b", 0))
        sw, sh = int(self.opt(op, 1, "i", 1)), int(self.opt(op, 2, "i", 1))
        if depthwise:
            act = self._act_attr(op, 4)
            dw, dh = int(self.opt(op, 5, "i", 1)), int(self.opt(op, 6, "i", 1))
            if w.shape[0] != 1 or w.shape[3] % cin:
                raise self.err(op, f"depthwise filter {list(w.shape)} does not fit {cin} input channels")
            wi, group = w[0].transpose(2, 0, 1)[:, None], cin  # [1, kh, kw, C*M] -> [C*M, 1, kh, kw]
        else:
            act = self._act_attr(op, 3)
            dw, dh = int(self.opt(op, 4, "i", 1)), int(self.opt(op, 5, "i", 1))
            if w.shape[3] == 0 or cin % w.shape[3]:
                raise self.err(op, f"filter {list(w.shape)} does not fit {cin} input channels")
            wi, group = w.transpose(0, 3, 1, 2), cin // w.shape[3]  # [O, kh, kw, I] -> [O, I, kh, kw]
        kh, kw = int(wi.shape[2]), int(wi.shape[3])
        _, h, wd = self.shape(x.name)
        h, wd = h + x.pads[0] + x.pads[2], wd + x.pads[1] + x.pads[3]
        if padding == 0:
            (pt, pb), (pl, pr) = same_pads(h, kh, sh, dh), same_pads(wd, kw, sw, dw)
        elif padding == 1:
            pt = pb = pl = pr = 0
        else:
            raise self.err(op, f"padding {padding} is neither SAME nor VALID")
        pads = (pt + x.pads[0], pl + x.pads[1], pb + x.pads[2], pr + x.pads[3])
        o = int(wi.shape[0])
        bias = np.zeros(o, np.float32) if b is None else np.asarray(b, np.float32).reshape(-1)
        if bias.size != o:
            raise self.err(op, f"bias has {bias.size} values for {o} output channels")
        y = self.emit(op, "conv", [x.name], {"kernel": (kh, kw), "stride": (sh, sw), "pads": pads,
                                              "dilation": (dh, dw), "group": group, "act": act},
                      {"w": np.ascontiguousarray(wi, np.float32), "b": bias})
        return _Act(y)

    def pool(self, op: TfOperator, kind: str) -> _Act:
        x = self.act_in(op, 0, allow_pad=kind == "avgpool")
        padding = int(self.opt(op, 0, "b", 0))
        sw, sh, fw, fh = (int(self.opt(op, i, "i", 1)) for i in (1, 2, 3, 4))
        _, h, wd = self.shape(x.name)
        h, wd = h + x.pads[0] + x.pads[2], wd + x.pads[1] + x.pads[3]
        if padding == 0:
            (pt, pb), (pl, pr) = same_pads(h, fh, sh), same_pads(wd, fw, sw)
        elif padding == 1:
            pt = pb = pl = pr = 0
        else:
            raise self.err(op, f"padding {padding} is neither SAME nor VALID")
        if any(x.pads) and padding == 0:
            raise self.err(op, "SAME padding after an explicit PAD is not supported for pooling")
        pads = (pt + x.pads[0], pl + x.pads[1], pb + x.pads[2], pr + x.pads[3])
        attrs = {"kernel": (fh, fw), "stride": (sh, sw), "pads": pads, "dilation": (1, 1),
                 "count_include_pad": 1 if any(x.pads) else 0}  # TFLite's SAME average excludes the padding
        y = self.emit(op, kind, [x.name], attrs)
        return _Act(self.fuse_act(y, self._act_attr(op, 5)))  # pools take no fused clamp: an act node

    def pad(self, op: TfOperator) -> _Act:
        x = self.act_in(op)
        p = np.asarray(self.const(op, 1, "paddings")).astype(np.int64)
        if p.shape != (4, 2) or (p < 0).any() or p[0].any():
            raise self.err(op, f"paddings {p.tolist()} must be [4, 2], non-negative, none on the batch")
        if op.options is not None or len(op.inputs) > 2:
            pass  # PAD has no options; PADV2 (constant value) is a different opcode and refused
        spatial, chans = p[1:3].any(), p[3].any()
        if spatial and chans:
            raise self.err(op, "padding H/W and channels at once is not supported")
        if spatial:
            return _Act(x.name, (x.pads[0] + int(p[1, 0]), x.pads[1] + int(p[2, 0]), x.pads[2] + int(p[1, 1]),
                                 x.pads[3] + int(p[2, 1])))
        c = self.shape(x.name)[0]
        before, after = int(p[3, 0]), int(p[3, 1])
        w = np.zeros((before + c + after, c, 1, 1), np.float32)
        w[before + np.arange(c), np.arange(c), 0, 0] = 1.0
        y = self.emit(op, "conv", [x.name], {"kernel": (1, 1), "stride": (1, 1), "pads": (0, 0, 0, 0),
                                             "dilation": (1, 1), "group": 1, "act": None},
                      {"w": w, "b": np.zeros(before + c + after, np.float32)})
        return _Act(y)

    def fully_connected(self, op: TfOperator) -> _Vec:
        v = self.vals.get(op.inputs[0])
        w = self.const(op, 1, "weights")
        b = self.const(op, 2, "bias") if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        if w.ndim != 2:
            raise self.err(op, f"weights {list(w.shape)} are not 2-D")
        if isinstance(v, _Vec):
            src, wi = v.name, w
        else:
            tail = self.to_tail(v, op)
            if len(tail.segments) != 1:
                raise self.err(op, "input joins several tensors")
            src, off = next(iter(tail.segments.items()))
            n = int(np.prod(self.shape(src)))
            idx = tail.idx.reshape(-1) - off
            if idx.size != n or w.shape[1] != n or sorted(idx.tolist()) != list(range(n)):
                raise self.err(op, f"input ({idx.size} values) does not match weights {list(w.shape)}")
            wi = np.empty_like(w)
            wi[:, idx] = w  # TFLite flattens NHWC, the IR's gemm flattens CHW
        bias = np.zeros(w.shape[0], np.float32) if b is None else np.asarray(b, np.float32).reshape(-1)
        y = self.emit(op, "gemm", [src], {"act": None}, {"w": np.ascontiguousarray(wi, np.float32), "b": bias})
        return _Vec(self.fuse_act(y, self._act_attr(op, 0)))

    def reshape(self, op: TfOperator) -> Any:
        v = self.vals.get(op.inputs[0])
        new = self.m.tensors[op.outputs[0]].shape
        if isinstance(v, _Act) and not any(v.pads) and len(new) == 4 and new[0] == 1:
            c, h, w = self.shape(v.name)
            if (new[1], new[2], new[3]) == (h, w, c):
                return v
            if h == w == 1 and new[1] == new[2] == 1:
                return v
        if isinstance(v, _Vec) and len(new) == 2:
            return v
        if isinstance(v, _Vec) and len(new) == 4 and new[1] == new[2] == 1:
            return _Act(self.reshape_node(v.name, (int(new[3]), 1, 1)))
        tail = self.to_tail(v, op)
        if int(np.prod(new)) != tail.idx.size:
            raise self.err(op, f"cannot reshape {tail.idx.size} values to {list(new)}")
        return _Tail(tail.idx.reshape(new), tail.segments)

    def concat(self, op: TfOperator) -> Any:
        vs = [self.vals.get(i) for i in op.inputs]
        axis = int(self.opt(op, 0, "i", 0))
        act = self._act_attr(op, 1)
        out_rank = len(self.m.tensors[op.outputs[0]].shape)
        if all(isinstance(v, _Act) and not any(v.pads) for v in vs) and out_rank == 4 and axis % 4 == 3:
            y = self.emit(op, "concat", [v.name for v in vs], {})
            return _Act(y if act is None else self.fuse_act(y, act))
        if act is not None:
            raise self.err(op, "a fused activation on a non-channel concatenation is not supported")
        tails = [self.to_tail(v, op) for v in vs]
        segs: dict[str, int] = {}
        for t in tails:
            segs.update(t.segments)
        try:
            idx = np.concatenate([t.idx for t in tails], axis=axis)
        except (ValueError, np.exceptions.AxisError) as e:
            raise self.err(op, f"inputs do not concatenate on axis {axis} ({e})") from None
        return _Tail(idx, segs)

    # -- outputs -----------------------------------------------------------------------------------------------
    def finish(self) -> TfliteCnn:
        m = self.m
        outs = [(m.tensors[i].name, self.vals.get(i)) for i in m.outputs]
        for name, v in outs:
            if not isinstance(v, (_Act, _Vec, _Tail)) or (isinstance(v, _Act) and any(v.pads)):
                raise UnsupportedModelError(f"{m.path}: output {name!r} is not a computed activation")
        gname = Path(m.path).stem
        if len(outs) == 1 and isinstance(outs[0][1], (_Act, _Vec)):
            v = outs[0][1]
            g = CnnGraph(gname, self.inp, self.in_shape, v.name, self.nodes)
            shp = tuple(m.tensors[m.outputs[0]].shape)
            self.segs = {}
            self.seg_next = 0
            return TfliteCnn(g, [(outs[0][0], shp, self.to_tail(v, None).idx.reshape(-1))])
        tails = [(name, self.to_tail(v, None)) for name, v in outs]
        used = sorted({s for _, t in tails for s in t.segments}, key=lambda s: self.segs[s])
        new_off, flat_parts, off = {}, [], 0
        for s in used:
            n = int(np.prod(self.shape(s)))
            new_off[s] = off
            flat_parts.append(self.reshape_node(s, (n, 1, 1)))
            off += n
        # remap indices from the registry's offsets to the concat's
        remap = np.full(self.seg_next, -1, np.int64)
        for s in used:
            n = int(np.prod(self.shape(s)))
            remap[self.segs[s]: self.segs[s] + n] = new_off[s] + np.arange(n)
        out = flat_parts[0] if len(flat_parts) == 1 else self.emit(None, "concat", flat_parts, {},
                                                                    name="tflite_outputs")
        g = CnnGraph(gname, self.inp, self.in_shape, out, self.nodes)
        return TfliteCnn(g, [(name, tuple(int(v) for v in t.idx.shape), remap[t.idx.reshape(-1)])
                             for name, t in tails])


def shortcuts_first(ops: list[TfOperator]) -> list[TfOperator]:
    """The operators in another topological order: each PAD / MAX_POOL_2D (BlazeFace-style residual shortcuts)
    right after the producer of its input. Same values; the shortcut's input then dies at the main branch's
    depthwise conv, which can run in place, and the projection conv can add into the shortcut's buffer
    (``inplace_depthwise`` plans; out-of-place peaks are not raised by this on BlazeFace)."""
    out: list[TfOperator] = []
    hoisted: set[int] = set()
    for op in ops:
        if op.opcode not in (17, 34):
            out.append(op)
            continue
        src = op.inputs[0] if op.inputs else -1
        pos = next((j + 1 for j in range(len(out) - 1, -1, -1) if src in out[j].outputs), 0)
        while pos < len(out) and out[pos].index in hoisted:
            pos += 1
        out.insert(pos, op)
        hoisted.add(op.index)
    return out


def load_tflite(path: str | os.PathLike, input_shape: Sequence[int] | None = None) -> TfliteCnn:
    """Read and import a ``.tflite`` file (see module docstring). ``input_shape`` (C, H, W or 1, C, H, W), when
    given, must equal the model's (TFLite input shapes are static)."""
    p = Path(path)
    try:
        buf = p.read_bytes()
    except OSError as e:
        raise OptionError(f"{p}: cannot read ({e.strerror})") from None
    imp = _Importer(read_tflite(buf, str(p)))
    net = imp.run()
    if input_shape is not None:
        want = tuple(int(v) for v in input_shape)[-3:]
        if want != tuple(net.graph.input_shape):
            raise OptionError(f"--input-shape {list(input_shape)}: {p} has a fixed input "
                              f"[C, H, W] = {list(net.graph.input_shape)}")
    return net


def load_tflite_cnn(path: str | os.PathLike, input_shape: Sequence[int] | None = None) -> CnnGraph:
    """The IR graph of a ``.tflite`` file (see :func:`load_tflite` for its outputs' layout)."""
    return load_tflite(path, input_shape).graph


def bundle_outputs(bundle: Any, y: np.ndarray) -> dict[str, np.ndarray]:
    """The TFLite output tensors of a CNN bundle exported from a ``.tflite`` (``bundle``: a
    :class:`~edgespool.runtime.cnn.bundle.CnnBundle`) from its IR output ``y`` (manifest ``cnn.tflite_outputs``)."""
    c = bundle.manifest["cnn"]
    spec = c.get("tflite_outputs")
    if not spec:
        raise OptionError(f"{bundle.path}: not exported from a .tflite model (no tflite_outputs in its manifest)")
    want = {o["index"] for o in spec}
    found: dict[str, np.ndarray] = {}
    for g in bundle.bundle.iter_groups():
        for name, qt in bundle.bundle.read_group(g).items():
            if name in want:
                info = c["arrays"][name]
                found[name] = np.array(qt.data).view(np.dtype(info["dtype"])).reshape(info["shape"])
    flat = np.asarray(y).reshape(-1)
    return {o["name"]: flat[found[o["index"]]].reshape(o["shape"]) for o in spec}
