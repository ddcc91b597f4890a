"""Import an ONNX CNN (batch 1, NCHW) into the CNN graph IR (:mod:`edgespool.runtime.bundle.cnn_graph`).

Supported ONNX ops: Conv (grouped / depthwise / dilated / strided, auto_pad), BatchNormalization (folded into the
preceding Conv, else a 1x1 depthwise conv), Relu, Clip (Relu6), Sigmoid, HardSigmoid, HardSwish, Add, Mul (SE),
MaxPool, AveragePool, GlobalAveragePool, ReduceMean over H and W, Gemm, MatMul with a constant matrix, Flatten,
Reshape, Concat (channels), Identity, Dropout, Constant. Anything else raises UnsupportedModelError naming the op
and node. Relu/Clip following a Conv/Gemm/Add/Mul are fused into it as a clamp.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import ModelFormatError, OptionError, UnsupportedModelError
from ...runtime.bundle.cnn_graph import CnnGraph, Node

SUPPORTED_OPS = ("Conv", "BatchNormalization", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Add", "Mul",
                 "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Gemm", "MatMul", "Flatten",
                 "Reshape", "Concat", "Identity", "Dropout", "Constant")

# ONNX's input arity of each supported operator (min, max): a node outside it is malformed (onnxruntime refuses it)
ARITY = {"Conv": (2, 3), "BatchNormalization": (5, 5), "Relu": (1, 1), "Clip": (1, 3), "Sigmoid": (1, 1),
         "HardSigmoid": (1, 1), "HardSwish": (1, 1), "Add": (2, 2), "Mul": (2, 2), "MaxPool": (1, 1),
         "AveragePool": (1, 1), "GlobalAveragePool": (1, 1), "ReduceMean": (1, 2), "Gemm": (2, 3), "MatMul": (2, 2),
         "Flatten": (1, 1), "Reshape": (2, 2), "Concat": (1, 1 << 16), "Identity": (1, 1), "Dropout": (1, 3),
         "Constant": (0, 0)}

_POOL = {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides"}
# ONNX's attributes of each supported operator: an unknown one is a malformed node (onnxruntime refuses it)
ATTRIBUTES = {"Conv": {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"},
              "MaxPool": _POOL | {"storage_order"}, "AveragePool": _POOL | {"count_include_pad"},
              "BatchNormalization": {"epsilon", "momentum", "training_mode", "spatial"}, "Clip": {"min", "max"},
              "HardSigmoid": {"alpha", "beta"}, "ReduceMean": {"axes", "keepdims", "noop_with_empty_axes"},
              "Gemm": {"alpha", "beta", "transA", "transB"}, "Flatten": {"axis"}, "Reshape": {"allowzero"},
              "Concat": {"axis"}, "Dropout": {"seed", "ratio", "is_test"},
              "Constant": {"value", "value_float", "value_floats", "value_int", "value_ints", "value_string",
                           "value_strings", "sparse_value"}}


def _attrs(node: Any, where: str = "ONNX") -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        if not isinstance(a.name, str):  # protobuf hands back bytes for a name that is not valid UTF-8
            raise ModelFormatError(f"{where}: attribute name {a.name!r} is not valid "
                                   "UTF-8; the ONNX file is corrupt")
        v = helper.get_attribute_value(a)
        try:
            out[a.name] = v.decode() if isinstance(v, bytes) else v
        except UnicodeDecodeError:
            raise ModelFormatError(f"{where}: attribute {a.name!r} is not valid "
                                   "UTF-8; the ONNX file is corrupt") from None
    return out


def _resolve_input_shape(model_path: str, vi: Any, input_shape: Sequence[int] | None) -> tuple[int, int, int]:
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in vi.type.tensor_type.shape.dim]
    if input_shape is not None:
        shp = [int(v) for v in input_shape]
        if len(shp) == 3:
            shp = [1, *shp]
        if len(shp) != 4 or shp[0] != 1 or min(shp) <= 0:
            raise OptionError(f"--input-shape {list(input_shape)}: expected N,C,H,W with N=1 (or C,H,W)")
        if len(dims) != 4 or any(d is not None and d != s for d, s in zip(dims, shp)):
            raise OptionError(f"--input-shape {shp} contradicts input {vi.name!r} of {model_path} "
                              f"(declared {['?' if d is None else d for d in dims]})")
        return _bounded_chw(model_path, vi.name, (shp[1], shp[2], shp[3]))
    if len(dims) != 4:
        raise UnsupportedModelError(f"{model_path}: input {vi.name!r} has rank {len(dims)}; CNN import needs an "
                                    "NCHW image input")
    if any(d is None for d in dims):
        shown = ",".join("?" if d is None else str(d) for d in dims)
        raise OptionError(f"{model_path}: input {vi.name!r} has dynamic shape [{shown}]; pass --input-shape "
                          "1,C,H,W (e.g. 1,3,224,224)")
    if dims[0] != 1:
        raise UnsupportedModelError(f"{model_path}: input {vi.name!r} has batch {dims[0]}; only batch 1 is "
                                    "supported (re-export with batch 1 or pass --input-shape 1,C,H,W)")
    return _bounded_chw(model_path, vi.name, (dims[1], dims[2], dims[3]))


def _bounded_chw(model_path: str, name: str, chw: tuple[int, int, int]) -> tuple[int, int, int]:
    from ...runtime.bundle.cnn_graph import MAX_ELEMENTS, MAX_EXTENT

    if max(chw) > MAX_EXTENT or chw[0] * chw[1] * chw[2] > MAX_ELEMENTS:
        raise UnsupportedModelError(f"{model_path}: input {name!r} has shape {list(chw)}, beyond what a CNN import "
                                    f"plans for (each dimension <= {MAX_EXTENT}, <= {MAX_ELEMENTS} values)")
    return chw


def _pads(a: dict[str, Any], kernel: tuple[int, int], stride: tuple[int, int], dil: tuple[int, int],
          hw: tuple[int, int], where: str) -> tuple[int, int, int, int]:
    mode = a.get("auto_pad", "NOTSET")
    if mode in ("NOTSET", ""):
        p = list(a.get("pads", [0, 0, 0, 0]))
        if len(p) != 4:
            raise UnsupportedModelError(f"{where}: only 2-D pads are supported, got {p}")
        return (p[0], p[1], p[2], p[3])
    if mode == "VALID":
        return (0, 0, 0, 0)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        out: list[tuple[int, int]] = []
        for size, k, s, d in zip(hw, kernel, stride, dil):
            o = -(-size // s)
            total = max(0, (o - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            out.append((small, big) if mode == "SAME_UPPER" else (big, small))
        return (out[0][0], out[1][0], out[0][1], out[1][1])
    raise UnsupportedModelError(f"{where}: auto_pad {mode!r} is not supported")


def load_onnx_cnn(model_path: str | os.PathLike, input_shape: Sequence[int] | None = None, *,
                  drop_softmax: bool = False) -> CnnGraph:
    """Read an ONNX CNN file into a :class:`CnnGraph` (weights float32, BatchNorm folded, activations fused).

    ``input_shape`` (N,C,H,W with N=1, or C,H,W) fixes dynamic input dimensions; a dynamic input without it
    raises OptionError naming the input. ``drop_softmax``: import a trailing Softmax's input (the logits) instead
    of refusing the Softmax (see :mod:`.onnx_fold`).
    """
    import onnx
    from onnx import numpy_helper

    path = Path(model_path)
    if not path.exists():
        raise ModelFormatError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError / OSError subclasses
        raise ModelFormatError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    g = model.graph
    consts: dict[str, np.ndarray] = {}
    for init in g.initializer:
        try:
            consts[init.name] = numpy_helper.to_array(init)
        except Exception as e:  # noqa: BLE001 - onnx raises ValueError/TypeError/KeyError for a corrupt tensor
            raise ModelFormatError(f"{path}: initializer {init.name!r} is corrupt (dims {list(init.dims)}: "
                                   f"{str(e)[:160]})") from None
    real_inputs = [vi for vi in g.input if vi.name not in consts]
    if len(real_inputs) != 1:
        raise UnsupportedModelError(f"{path}: CNN import needs exactly one image input, found "
                                    f"{[vi.name for vi in real_inputs]}")
    if len(g.output) != 1:
        raise UnsupportedModelError(f"{path}: CNN import needs exactly one output, found {[o.name for o in g.output]}")
    in_vi = real_inputs[0]
    chw = _resolve_input_shape(str(path), in_vi, input_shape)
    from .onnx_fold import fold_cnn_onnx

    # shape arithmetic, written-out hard-swish, MatMul/Conv + constant bias, (opt-in) a trailing Softmax
    model, _ = fold_cnn_onnx(model, in_vi.name, chw, str(path), drop_softmax)
    g = model.graph
    for init in g.initializer:
        if init.name not in consts:
            consts[init.name] = numpy_helper.to_array(init)
    for n in g.node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_OPS:
            raise UnsupportedModelError(f"{path}: operator {n.op_type!r} (node {n.name or n.output[0]!r}) is not "
                                        f"supported; supported: {', '.join(SUPPORTED_OPS)}")
        bad_attr = [a.name for a in n.attribute if a.name not in ATTRIBUTES.get(n.op_type, set())]
        if bad_attr:
            raise ModelFormatError(f"{path}: node {n.name or (n.output[0] if n.output else '?')!r} ({n.op_type}) has "
                                   f"attribute {bad_attr[0]!r}, which ONNX {n.op_type} does not define")
        lo, hi = ARITY[n.op_type]
        if not lo <= len(n.input) <= hi:
            raise ModelFormatError(f"{path}: node {n.name or (n.output[0] if n.output else '?')!r} ({n.op_type}) has "
                                   f"{len(n.input)} inputs; ONNX {n.op_type} takes {lo}..{hi}")

    alias: dict[str, str] = {}  # tensor name -> the IR tensor it is identical to

    def t(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    nodes: list[Node] = []
    shapes: dict[str, tuple[int, ...]] = {in_vi.name: chw}

    def const(name: str, where: str) -> np.ndarray:
        if name not in consts:
            raise UnsupportedModelError(f"{where}: input {name!r} must be a constant (initializer)")
        return consts[name]

    def emit(node: Node) -> None:
        from ...runtime.bundle.cnn_graph import node_output_shape

        node.inputs = [t(i) for i in node.inputs]
        shapes[node.output] = node_output_shape(node, [shapes[i] for i in node.inputs], str(path))
        nodes.append(node)

    for n in g.node:
        where = f"{path}: node {(n.name or (n.output[0] if n.output else '?'))!r} ({n.op_type})"
        if not n.output:
            raise ModelFormatError(f"{where}: has no output")
        try:
            name = n.name or n.output[0]
            where = f"{path}: node {name!r} ({n.op_type})"
            a = _attrs(n, where)
            op = n.op_type
            ins = [i for i in n.input]
            out = n.output[0]
            if op == "Constant":
                consts[out] = numpy_helper.to_array(a["value"]) if "value" in a else np.asarray(
                    a.get("value_float", a.get("value_int", a.get("value_floats", a.get("value_ints")))))
                continue
            if op in ("Identity", "Dropout"):
                alias[out] = t(ins[0])
                continue
            x = t(ins[0]) if ins else ""
            if x not in shapes and op not in ("Constant",):
                if x in consts:
                    raise UnsupportedModelError(f"{where}: constant-only computation is not supported")
                raise ModelFormatError(f"{where}: reads unknown tensor {ins[0]!r}")
            xs = shapes[x]
            if op in ("Conv", "MaxPool", "AveragePool"):
                if len(xs) != 3:
                    raise UnsupportedModelError(f"{where}: needs a 4-D NCHW input")
                if op == "Conv":
                    w = const(ins[1], where).astype(np.float32)
                    if w.ndim != 4:
                        raise UnsupportedModelError(f"{where}: only 2-D convolutions are supported")
                    kernel = tuple(a.get("kernel_shape", w.shape[2:]))
                else:
                    kernel = tuple(a["kernel_shape"])
                    if a.get("ceil_mode", 0):
                        raise UnsupportedModelError(f"{where}: ceil_mode=1 pooling is not supported")
                stride = tuple(a.get("strides", [1, 1]))
                dil = tuple(a.get("dilations", [1, 1]))
                pads = _pads(a, kernel, stride, dil, (xs[1], xs[2]), where)
                attrs = {"kernel": kernel, "stride": stride, "pads": pads, "dilation": dil}
                if op == "Conv":
                    b = const(ins[2], where).astype(np.float32) if len(ins) > 2 and ins[2] else np.zeros(
                        w.shape[0], np.float32)
                    attrs.update(group=int(a.get("group", 1)), act=None)
                    emit(Node(name, "conv", [x], out, attrs, {"w": w, "b": b}))
                elif op == "MaxPool":
                    if a.get("storage_order", 0) or len(n.output) > 1 and n.output[1]:
                        raise UnsupportedModelError(f"{where}: MaxPool indices output is not supported")
                    emit(Node(name, "maxpool", [x], out, attrs))
                else:
                    if dil != (1, 1):
                        raise UnsupportedModelError(f"{where}: dilated AveragePool is not supported")
                    attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
                    emit(Node(name, "avgpool", [x], out, attrs))
            elif op == "BatchNormalization":
                scale, bias, mean, var = (const(i, where).astype(np.float64) for i in ins[1:5])
                eps = float(a.get("epsilon", 1e-5))
                k = scale / np.sqrt(var + eps)
                prod = nodes[-1] if nodes and nodes[-1].output == x else None
                used_elsewhere = any(x in nn.input for nn in g.node if nn is not n) or x in {o.name for o in g.output}
                if prod is not None and prod.op == "conv" and prod.attrs["act"] is None and not used_elsewhere:
                    prod.weights["w"] = (prod.weights["w"] * k[:, None, None, None]).astype(np.float32)
                    prod.weights["b"] = ((prod.weights["b"] - mean) * k + bias).astype(np.float32)
                    alias[out] = x
                else:
                    c = xs[0]
                    w = k.reshape(c, 1, 1, 1).astype(np.float32)
                    emit(Node(name, "conv", [x], out, {"kernel": (1, 1), "stride": (1, 1), "pads": (0, 0, 0, 0),
                                                       "dilation": (1, 1), "group": c, "act": None},
                              {"w": w, "b": (bias - mean * k).astype(np.float32)}))
            elif op in ("Relu", "Clip"):
                if op == "Relu":
                    lo, hi = 0.0, np.inf
                else:
                    lo = float(const(ins[1], where)) if len(ins) > 1 and ins[1] else float(a.get("min", -np.inf))
                    hi = float(const(ins[2], where)) if len(ins) > 2 and ins[2] else float(a.get("max", np.inf))
                emit(Node(name, "act", [x], out, {"kind": "clip", "lo": lo, "hi": hi}))
            elif op == "Sigmoid":
                emit(Node(name, "act", [x], out, {"kind": "sigmoid"}))
            elif op == "HardSigmoid":
                emit(Node(name, "act", [x], out, {"kind": "hardsigmoid", "alpha": float(a.get("alpha", 0.2)),
                                                  "beta": float(a.get("beta", 0.5))}))
            elif op == "HardSwish":
                emit(Node(name, "act", [x], out, {"kind": "hardswish"}))
            elif op in ("Add", "Mul"):
                y = t(ins[1])
                if x not in shapes or y not in shapes:
                    raise UnsupportedModelError(f"{where}: {op} with a constant operand is not supported")
                if op == "Mul" and shapes[x][1:] == (1, 1) and len(shapes[y]) == 3 and shapes[y][1:] != (1, 1):
                    x, y = y, x  # SE: put the feature map first
                emit(Node(name, op.lower(), [x, y], out, {"act": None}))
            elif op in ("GlobalAveragePool", "ReduceMean"):
                if op == "ReduceMean":
                    axes = a.get("axes")
                    if axes is None and len(ins) > 1 and ins[1]:
                        axes = const(ins[1], where).tolist()
                    axes = sorted(int(v) % 4 for v in (axes or []))
                    if axes != [2, 3] or len(xs) != 3:
                        raise UnsupportedModelError(f"{where}: ReduceMean is supported over H and W only (axes {axes})")
                    if not a.get("keepdims", 1):
                        emit(Node(name, "gap", [x], out + "::gap"))
                        emit(Node(name + "::reshape", "reshape", [out + "::gap"], out, {"shape": (xs[0],)}))
                        continue
                emit(Node(name, "gap", [x], out))
            elif op in ("Flatten", "Reshape"):
                if op == "Flatten":
                    axis = int(a.get("axis", 1))
                    if axis != 1:
                        raise UnsupportedModelError(f"{where}: Flatten axis {axis} is not supported (only 1)")
                    shp = (int(np.prod(xs)),)
                else:
                    target = [int(v) for v in const(ins[1], where)]
                    full = [1, *xs]
                    target = [full[i] if v == 0 and not a.get("allowzero", 0) else v for i, v in enumerate(target)]
                    if -1 in target:
                        rest = int(np.prod([v for v in target if v != -1]))
                        target[target.index(-1)] = int(np.prod(full)) // max(rest, 1)
                    if not target or target[0] != 1:
                        raise UnsupportedModelError(f"{where}: Reshape must keep batch 1 (target {target})")
                    shp = tuple(target[1:])
                emit(Node(name, "reshape", [x], out, {"shape": shp}))
            elif op in ("Gemm", "MatMul"):
                if op == "Gemm":
                    if a.get("transA", 0):
                        raise UnsupportedModelError(f"{where}: Gemm transA=1 is not supported")
                    w = const(ins[1], where).astype(np.float32)
                    w = w if a.get("transB", 0) else w.T
                    w = w * float(a.get("alpha", 1.0))
                    b = (const(ins[2], where).astype(np.float32) * float(a.get("beta", 1.0))
                         if len(ins) > 2 and ins[2] else np.zeros(w.shape[0], np.float32))
                    b = np.broadcast_to(b.reshape(-1), (w.shape[0],)).astype(np.float32)
                else:
                    w = const(ins[1], where).astype(np.float32).T
                    b = np.zeros(w.shape[0], np.float32)
                emit(Node(name, "gemm", [x], out, {"act": None}, {"w": np.ascontiguousarray(w), "b": b}))
            elif op == "Concat":
                axis = int(a["axis"])
                if axis not in (1, -3) or len(xs) != 3:
                    raise UnsupportedModelError(f"{where}: Concat is supported along channels only (axis {axis})")
                srcs = [t(i) for i in ins]
                missing = [i for i in srcs if i not in shapes]
                if missing:
                    raise UnsupportedModelError(f"{where}: Concat with constant inputs {missing} is not supported")
                emit(Node(name, "concat", srcs, out))
            else:  # pragma: no cover - guarded by SUPPORTED_OPS
                raise UnsupportedModelError(f"{where}: not supported")
        except (IndexError, KeyError) as e:  # an input or attribute the operator needs is absent
            raise ModelFormatError(f"{where}: a required input or attribute is missing ({type(e).__name__}: "
                                   f"{e})") from None
        except (ValueError, TypeError) as e:  # constants of the wrong shape/type for the operator
            raise ModelFormatError(f"{where}: malformed constant or attribute ({str(e)[:160]})") from None

    output = t(g.output[0].name)
    graph = CnnGraph(path.stem, in_vi.name, chw, output, fuse_activations(nodes, output))
    return graph


def fuse_activations(nodes: list[Node], output: str) -> list[Node]:
    """Fuse a clip/relu ``act`` into the conv/gemm/add/mul producing its input when that tensor has no other reader
    (and is not the graph output). Returns the new node list."""
    readers: dict[str, int] = {}
    for n in nodes:
        for i in n.inputs:
            readers[i] = readers.get(i, 0) + 1
    prod = {n.output: n for n in nodes}
    rename: dict[str, str] = {}
    out: list[Node] = []
    for n in nodes:
        n.inputs = [rename.get(i, i) for i in n.inputs]
        p = prod.get(n.inputs[0]) if n.inputs else None
        if (n.op == "act" and n.attrs["kind"] == "clip" and p is not None and p.op in ("conv", "gemm", "add", "mul")
                and readers.get(p.output, 0) == 1 and p.output != output):
            lo, hi = n.attrs["lo"], n.attrs["hi"]
            if p.attrs.get("act") is not None:
                _, plo, phi = p.attrs["act"]
                lo, hi = max(lo, plo), min(hi, phi)
            p.attrs["act"] = ("clip", lo, hi)
            rename[n.output] = p.output
            continue
        out.append(n)
    if output in rename:  # the fused act produced the graph output: its producer now writes it
        inner = rename[output]
        for n in out:
            if n.output == inner:
                n.output = output
            n.inputs = [output if i == inner else i for i in n.inputs]
    return out
