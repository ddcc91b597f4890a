"""Import a TFLite model (``.tflite`` flatbuffer, batch 1, NHWC) into the CNN graph IR.

Tensors: float32, float16 and int8/uint8 (constants dequantised to float32: f16 weights behind DEQUANTIZE, int8
weights with per-tensor or per-channel scales, int32 biases with their scale). Activations are computed in
float32: a fully-quantised model is imported as its dequantised float graph (QUANTIZE / DEQUANTIZE of activations
become identities); edgespool's int8 path then calibrates its own int8 parameters.

Ops: CONV_2D, DEPTHWISE_CONV_2D (SAME / VALID, strides, dilation, fused RELU / RELU6 / RELU_N1_TO_1), ADD, MUL,
PAD (channel padding -> a 1x1 conv with an [I; 0] weight, exact; spatial zero padding folded into the next
conv / average pool), MAX_POOL_2D, AVERAGE_POOL_2D, MEAN over H and W, RESHAPE, CONCATENATION, FULLY_CONNECTED
(weights permuted from NHWC to CHW flattening), SLICE and STRIDED_SLICE (of reshaped/concatenated output heads:
exact index gathers), SOFTMAX (channels; f32 only: the int8 path refuses it), RELU, RELU6, RELU_N1_TO_1, LOGISTIC, HARD_SWISH, DEQUANTIZE,
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
from .tflite_ops import CLIPS, OPS, OTHER_NAMES, LayerOps, _Act, _Tail, _Vec


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


class _Importer(LayerOps):
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

    def const(self, op: TfOperator, k: int, what: str, ints: bool = False) -> np.ndarray:
        """Input ``k`` of ``op`` as a constant: float32 (dequantised) weights, or (``ints``) plain integers."""
        if k >= len(op.inputs) or op.inputs[k] < 0:
            raise self.err(op, f"has no {what} input")
        t = self.m.tensors[op.inputs[k]]
        v = self.vals.get(t.index)
        if not isinstance(v, np.ndarray):
            raise self.err(op, f"{what} {t.name!r} must be a constant tensor")
        if (v.dtype.kind in "iu") != ints:
            raise self.err(op, f"{what} {t.name!r} is {t.type_name}: expected "
                           + ("integers" if ints else "float or quantised int8 values"))
        return v

    def finite(self, t: TfTensor, f: np.ndarray) -> np.ndarray:
        if not np.isfinite(f).all():
            raise ModelFormatError(f"{self.m.path}: constant tensor {t.name!r} {list(t.shape)} has non-finite values "
                                   "(inf / NaN): the file is corrupt")
        return f

    def dequant(self, t: TfTensor) -> np.ndarray | None:
        d = self.m.data(t)
        if d is None:
            return None
        if t.type in (3, 9, 7, 2) and t.scale.size and float(np.max(np.abs(t.scale))) > 0:
            shp = [1] * d.ndim
            zp = t.zero_point if t.zero_point.size else np.zeros(1, np.int64)
            if t.scale.size > 1 or zp.size > 1:
                if not 0 <= t.qdim < d.ndim or d.shape[t.qdim] != t.scale.size or zp.size not in (1, t.scale.size):
                    raise ModelFormatError(f"{self.m.path}: tensor {t.name!r}: {t.scale.size} scales / {zp.size} "
                                           f"zero points do not match dimension {t.qdim} of {list(d.shape)}")
                shp[t.qdim] = t.scale.size
            with np.errstate(over="ignore", invalid="ignore"):
                f = ((d.astype(np.float64) - zp.reshape(shp if zp.size > 1 else [1] * d.ndim))
                     * t.scale.astype(np.float64).reshape(shp)).astype(np.float32)
            return self.finite(t, f)
        if t.type in (0, 1, 10):
            with np.errstate(over="ignore", invalid="ignore"):
                return self.finite(t, d.astype(np.float32))
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
        if not op.inputs or op.inputs[0] < 0:
            raise self.err(op, "has no input tensor")
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
            return _Act(self.fuse_act(y, self._act_attr(op, 0)))
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
            axes = sorted(int(v) % 4 for v in np.asarray(self.const(op, 1, "axes", ints=True)).reshape(-1))
            if axes != [1, 2] or len(m.tensors[op.outputs[0]].shape) != 4:
                raise self.err(op, f"only MEAN over H and W with keep_dims is supported (axes {axes})")
            return _Act(self.emit(op, "gap", [self.act_in(op).name], {}))
        if c == 9:
            return self.fully_connected(op)
        if c == 54:
            return self.prelu(op)
        if c == 22:
            return self.reshape(op)
        if c == 2:
            return self.concat(op)
        if c == 25:  # SOFTMAX over the last (channel) axis, f32 only
            beta = float(self.opt(op, 0, "f", 1.0))
            v = self.vals.get(op.inputs[0])
            if isinstance(v, _Vec):
                n = int(np.prod(self.shape(v.name)))
                y = self.emit(op, "act", [self.reshape_node(v.name, (n, 1, 1))], {"kind": "softmax", "beta": beta})
                return _Vec(self.reshape_node(y, (n,)))
            return _Act(self.emit(op, "act", [self.act_in(op).name], {"kind": "softmax", "beta": beta}))
        if c in (45, 65):
            return self.slice(op, strided=c == 45)
        raise self.err(op, "not supported")


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
            idx = self.to_tail(v, None).idx.reshape(-1)
            if any(d < 1 for d in shp) or int(np.prod(shp)) != idx.size:
                raise ModelFormatError(f"{m.path}: output {outs[0][0]!r} is declared {list(shp)} but computes "
                                       f"{idx.size} values")
            return TfliteCnn(g, [(outs[0][0], shp, idx)])
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
    :class:`~edgespool.runtime.cnn.bundle.CnnBundle`) from its IR output ``y`` (manifest ``cnn.tflite_outputs``);
    see :meth:`CnnBundle.tflite_outputs`."""
    return bundle.tflite_outputs(y)
