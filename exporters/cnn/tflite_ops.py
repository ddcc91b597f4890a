"""The layer translations of the TFLite importer (:mod:`.from_tflite`): TFLite conv / pool / PAD /
FULLY_CONNECTED / RESHAPE / CONCATENATION operators -> CNN IR nodes, and the value kinds the importer tracks per
TFLite tensor (a 4-D activation, a [1, N] vector, or an NHWC reshape/concat "tail" = an index array)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ModelFormatError
from .tflite_fb import TfOperator

OPS = {0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE",
       9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 19: "RELU", 20: "RELU_N1_TO_1",
       21: "RELU6", 22: "RESHAPE", 34: "PAD", 40: "MEAN", 45: "STRIDED_SLICE", 54: "PRELU", 65: "SLICE",
       25: "SOFTMAX",
       114: "QUANTIZE", 117: "HARD_SWISH"}
OTHER_NAMES = {5: "DEPTH_TO_SPACE", 23: "RESIZE_BILINEAR", 28: "TANH", 41: "SUB", 42: "DIV",
               49: "SPLIT", 53: "TRANSPOSE", 60: "PADV2", 83: "PACK", 97: "RESIZE_NEAREST_NEIGHBOR",
               39: "MAXIMUM", 57: "MINIMUM", 100: "MIRROR_PAD", 126: "BATCH_MATMUL"}
FUSED = {0: None, 1: ("clip", 0.0, float("inf")), 2: ("clip", -1.0, 1.0), 3: ("clip", 0.0, 6.0)}
CLIPS = {19: (0.0, float("inf")), 20: (-1.0, 1.0), 21: (0.0, 6.0)}


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

class LayerOps:
    """Mixed into the importer, whose helpers (``err``, ``const``, ``act_in``, ``shape``, ``emit``, ``opt``,
    ``fuse_act``, ``to_tail``, ``reshape_node``, ``m``) these methods use."""

    def extent(self, op: TfOperator, what: str, *vals: int | float) -> list[int]:
        """Option values that must be in 1..65536 (ModelFormatError naming the op otherwise)."""
        out = [int(v) for v in vals]
        if not all(1 <= v <= 1 << 16 for v in out):
            raise ModelFormatError(f"{self.m.path}: operator #{op.index}: {what} {out} out of range (1..65536)")
        return out

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
        sw, sh = self.extent(op, "stride", self.opt(op, 1, "i", 1), self.opt(op, 2, "i", 1))
        if depthwise:
            act = self._act_attr(op, 4)
            dw, dh = self.extent(op, "dilation", self.opt(op, 5, "i", 1), self.opt(op, 6, "i", 1))
            if w.shape[0] != 1 or w.shape[3] % cin:
                raise self.err(op, f"depthwise filter {list(w.shape)} does not fit {cin} input channels")
            wi, group = w[0].transpose(2, 0, 1)[:, None], cin  # [1, kh, kw, C*M] -> [C*M, 1, kh, kw]
        else:
            act = self._act_attr(op, 3)
            dw, dh = self.extent(op, "dilation", self.opt(op, 4, "i", 1), self.opt(op, 5, "i", 1))
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
        sw, sh, fw, fh = self.extent(op, "stride / filter size", *(self.opt(op, i, "i", 1) for i in (1, 2, 3, 4)))
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
        p = np.asarray(self.const(op, 1, "paddings", ints=True)).astype(np.int64)
        if p.shape != (4, 2) or (p < 0).any() or (p > 1 << 16).any() or p[0].any():
            raise self.err(op, f"paddings {p.tolist()} must be [4, 2], in 0..65536, none on the batch")
        spatial, chans = p[1:3].any(), p[3].any()  # (PADV2, with a constant value, is another op: refused)
        if not (spatial or chans):
            return x
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

    def prelu(self, op: TfOperator) -> _Act:
        """PRELU with a per-channel (or scalar) alpha, written with IR ops, exact in float32:
        relu(x) + (-alpha) * relu(-x) (two 1x1 depthwise convs with weights -1 and -alpha, one add)."""
        x = self.act_in(op)
        a = np.asarray(self.const(op, 1, "alpha"), np.float32)
        c = self.shape(x.name)[0]
        if a.size == 1:
            a = np.full(c, float(a.reshape(-1)[0]), np.float32)
        elif a.size != c or a.shape[-1] != c:
            raise self.err(op, f"alpha {list(a.shape)} must be one value per channel ({c})")
        a = a.reshape(-1)
        y = self.m.tensors[op.outputs[0]].name
        relu = ("clip", 0.0, float("inf"))

        def dw(src: str, w: np.ndarray, act: Any, name: str) -> str:
            return self.emit(None, "conv", [src], {"kernel": (1, 1), "stride": (1, 1), "pads": (0, 0, 0, 0),
                                                   "dilation": (1, 1), "group": c, "act": act},
                             {"w": w.reshape(c, 1, 1, 1).astype(np.float32), "b": np.zeros(c, np.float32)},
                             name=name)

        neg = dw(x.name, -np.ones(c, np.float32), relu, f"{y}/relu_neg")  # relu(-x)
        scaled = dw(neg, -a, None, f"{y}/neg_alpha")  # -alpha * relu(-x) = alpha * min(x, 0)
        pos = self.emit(None, "act", [x.name], {"kind": "clip", "lo": 0.0, "hi": float("inf")}, name=f"{y}/relu")
        return _Act(self.emit(op, "add", [pos, scaled], {"act": None}))

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

    def slice(self, op: TfOperator, strided: bool) -> _Tail:
        """SLICE / STRIDED_SLICE (begin / end masks, shrink_axis; constant begin, end/size, strides): exact, as a
        slice of the index array of a "tail" (so only on the way to an output, like RESHAPE across NHWC); a slice
        of a 4-D activation's channels only (mediapipe's "channel_padding" crops) is a 1x1 conv with a 0/1
        selection weight, usable anywhere."""
        v = self.vals.get(op.inputs[0])
        if isinstance(v, _Act) and not any(v.pads):
            c, h, w = self.shape(v.name)
            key = self._slice_key(op, (1, h, w, c), strided)
            full = all(isinstance(k, slice) and np.array_equal(np.arange(n)[k], np.arange(n))
                       for k, n in zip(key[:3], (1, h, w)))
            if full and isinstance(key[3], slice) and 0 < np.arange(c)[key[3]].size:
                chans = np.arange(c)[key[3]]
                sel = np.zeros((chans.size, c, 1, 1), np.float32)
                sel[np.arange(chans.size), chans, 0, 0] = 1.0
                y = self.emit(op, "conv", [v.name], {"kernel": (1, 1), "stride": (1, 1), "pads": (0, 0, 0, 0),
                                                     "dilation": (1, 1), "group": 1, "act": None},
                              {"w": sel, "b": np.zeros(chans.size, np.float32)})
                return _Act(y)
        tail = self.to_tail(v, op)
        key = self._slice_key(op, tail.idx.shape, strided)
        try:
            idx = tail.idx[tuple(key)]
        except IndexError as e:
            raise self.err(op, f"slice out of range ({e})") from None
        want = tuple(self.m.tensors[op.outputs[0]].shape)
        if idx.size == 0 or (want and int(np.prod(want)) != idx.size):
            raise self.err(op, f"slice gives {list(idx.shape)}, the model declares {list(want)}")
        return _Tail(idx.reshape(want) if want else idx, tail.segments)

    def _slice_key(self, op: TfOperator, shape: tuple[int, ...], strided: bool) -> list[Any]:
        """The numpy index of a SLICE / STRIDED_SLICE over an input of ``shape``."""
        rank = len(shape)
        begin = [int(v) for v in np.asarray(self.const(op, 1, "begin", ints=True)).reshape(-1)]
        second = [int(v) for v in np.asarray(self.const(op, 2, "end" if strided else "size", ints=True)).reshape(-1)]
        steps = ([int(v) for v in np.asarray(self.const(op, 3, "strides", ints=True)).reshape(-1)]
                 if strided else [1] * rank)
        if not len(begin) == len(second) == len(steps) == rank:
            raise self.err(op, f"begin/end/strides have {len(begin)}/{len(second)}/{len(steps)} entries for a "
                           f"rank-{rank} input")
        bm = em = shrink = 0
        if strided:
            bm, em = int(self._opt(op, 0)), int(self._opt(op, 1))
            shrink = int(self._opt(op, 4))
            if self._opt(op, 2) or self._opt(op, 3) or self._opt(op, 5, "B"):
                raise self.err(op, "ellipsis_mask, new_axis_mask and offset are not supported")
        if 0 in steps:
            raise self.err(op, "a stride is 0")
        key: list[Any] = []
        for d in range(rank):
            n = shape[d]
            b = begin[d] + (n if begin[d] < 0 else 0)
            if not strided:
                key.append(slice(b, n if second[d] == -1 else b + second[d]))
            elif shrink >> d & 1:
                key.append(b)
            else:
                e = second[d] + (n if second[d] < 0 else 0)
                key.append(slice(None if bm >> d & 1 else b, None if em >> d & 1 else e, steps[d]))
        return key

    def _opt(self, op: TfOperator, i: int, fmt: str = "i") -> int | float:
        return op.options.scalar(i, fmt, 0) if op.options is not None else 0
