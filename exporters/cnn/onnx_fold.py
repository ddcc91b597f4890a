"""ONNX clean-up before CNN import: what exporters (PaddlePaddle, TF converters) emit around the operators the CNN IR
knows, rewritten into them. Applied by :func:`.from_onnx.load_onnx_cnn` once the input shape is fixed.

* shape arithmetic (``Shape`` of a statically shaped tensor, then ``Cast``/``Slice``/``Concat``/``Gather``/
  ``Unsqueeze``... on constants only) is evaluated (onnx's reference evaluator) into constants;
* hard-swish written out as ``x * Clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``) becomes ``HardSwish``;
* ``MatMul`` + ``Add`` of a constant bias becomes ``Gemm``; ``Conv`` + ``Add`` of a constant [1, C, 1, 1] becomes the
  conv's bias;
* with ``drop_softmax`` (opt-in: it changes the output), a trailing ``Softmax`` over the class vector is dropped:
  the graph's output is then the logits (same ranking; ``runtime.cnn.api.top_k`` applies softmax itself). Without
  it, the importer refuses the Softmax node by name.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...errors import ModelFormatError

FOLDABLE = ("Shape", "Cast", "Slice", "Concat", "Gather", "Unsqueeze", "Squeeze", "Mul", "Add", "Sub", "Div",
            "Reshape", "ConstantOfShape", "Range", "Identity")


def _static_shapes(model: Any, input_name: str, chw: Sequence[int]) -> dict[str, list[int]]:
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name == input_name:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, [1, *chw]):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - shape inference is a help, the importer checks shapes itself
        return {}
    out: dict[str, list[int]] = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [int(d.dim_value) for d in dims]
    return out


def _eval(node: Any, feeds: dict[str, np.ndarray], where: str) -> list[np.ndarray]:
    """Evaluate one constant-only node (onnx's reference evaluator); ModelFormatError if it cannot be."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    try:
        inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in feeds.items()]
        outs = [helper.make_tensor_value_info(o, 0, None) for o in node.output]
        g = helper.make_graph([node], "fold", [], outs, inits)
        return ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])).run(None, {})
    except Exception as e:  # noqa: BLE001 - any failure of a malformed constant computation
        raise ModelFormatError(f"{where}: node {node.name or (node.output[0] if node.output else '?')!r} "
                               f"({node.op_type}): cannot evaluate its constant inputs ({type(e).__name__}: "
                               f"{str(e)[:160]})") from None


def _const_scalar(consts: dict[str, np.ndarray], name: str) -> float | None:
    v = consts.get(name)
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def fold_cnn_onnx(model: Any, input_name: str, chw: Sequence[int], where: str = "ONNX",
                  drop_softmax: bool = False) -> tuple[Any, bool]:
    """A rewritten copy of ``model`` (see module docstring) and whether a trailing Softmax was dropped (only with
    ``drop_softmax``: it changes the output, so the caller must ask). ``where`` (the file) prefixes errors."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    shapes = _static_shapes(m, input_name, chw)
    consts: dict[str, np.ndarray] = {}
    for i in g.initializer:
        try:
            consts[i.name] = numpy_helper.to_array(i)
        except Exception:  # noqa: BLE001 - the importer reports corrupt initializers itself
            pass
    users: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    kept: list[Any] = []
    new_consts: dict[str, np.ndarray] = {}
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            if n.output:
                consts[n.output[0]] = _eval(n, {}, where)[0]
            kept.append(n)
            continue
        if n.op_type == "Shape" and n.input and n.input[0] in shapes and not n.attribute:
            consts[n.output[0]] = new_consts[n.output[0]] = np.array(shapes[n.input[0]], np.int64)
            continue
        if n.op_type in FOLDABLE and n.input and all((i in consts) or not i for i in n.input):
            vals = _eval(n, {i: consts[i] for i in n.input if i}, where)
            for o, v in zip(n.output, vals):
                consts[o] = new_consts[o] = np.asarray(v)
            continue
        kept.append(n)
    try:
        kept = _fuse_hardswish(kept, consts, users)
        kept = _fuse_matmul_bias(kept, consts, users)
        kept = _fuse_conv_bias(kept, consts, users, new_consts)
    except (IndexError, KeyError, ValueError, TypeError) as e:  # a node missing inputs/outputs it needs
        raise ModelFormatError(f"{where}: malformed node around a fusable pattern ({type(e).__name__}: "
                               f"{str(e)[:160]})") from None
    dropped = False
    out_name = g.output[0].name if len(g.output) == 1 else None
    prod = {o: n for n in kept for o in n.output}
    tail = prod.get(out_name) if out_name else None
    if tail is not None and tail.op_type == "Identity":
        tail = prod.get(tail.input[0])
    if drop_softmax and tail is not None and tail.op_type == "Softmax" and users.get(tail.output[0], 0) <= 1:
        kept = [n for n in kept if n is not tail and not (n.op_type == "Identity" and n.output[0] == out_name)]
        kept.append(helper.make_node("Identity", [tail.input[0]], [out_name], name="dropped_softmax"))
        dropped = True
        del g.output[0].type.tensor_type.shape.dim[:]
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in new_consts.items()
                         if any(k in n.input for n in kept))
    return m, dropped


def _fuse_hardswish(nodes: list[Any], consts: dict[str, np.ndarray], users: dict[str, int]) -> list[Any]:
    """x * Clip(x + 3, 0, 6) / 6 -> HardSwish(x)."""
    from onnx import helper

    prod = {o: n for n in nodes for o in n.output}
    drop: set[int] = set()
    out = []
    for n in nodes:
        scale = None
        if n.op_type == "Div" and _const_scalar(consts, n.input[1]) == 6.0:
            scale = 6.0
        elif n.op_type == "Mul" and len(n.input) == 2 and n.input[1] in consts and \
                abs((_const_scalar(consts, n.input[1]) or 0.0) - 1 / 6) < 1e-6:
            scale = 6.0
        mul = prod.get(n.input[0]) if scale else None
        if mul is None or mul.op_type != "Mul" or users.get(mul.output[0], 0) != 1:
            out.append(n)
            continue
        a, b = mul.input
        clip = prod.get(b) if prod.get(b) is not None and prod[b].op_type == "Clip" else prod.get(a)
        x = a if clip is prod.get(b) else b
        if clip is None or clip.op_type != "Clip" or users.get(clip.output[0], 0) != 1 or len(clip.input) < 3:
            out.append(n)
            continue
        add = prod.get(clip.input[0])
        lo, hi = _const_scalar(consts, clip.input[1]), _const_scalar(consts, clip.input[2])
        if add is None or add.op_type != "Add" or (lo, hi) != (0.0, 6.0) or users.get(add.output[0], 0) != 1 or \
                add.input[0] != x or _const_scalar(consts, add.input[1]) != 3.0:
            out.append(n)
            continue
        drop.update(id(v) for v in (mul, clip, add))
        out.append(helper.make_node("HardSwish", [x], [n.output[0]], name=(n.name or n.output[0]) + "::hardswish"))
    return [n for n in out if id(n) not in drop]


def _fuse_matmul_bias(nodes: list[Any], consts: dict[str, np.ndarray], users: dict[str, int]) -> list[Any]:
    """MatMul(x, W) + b (constants W, b) -> Gemm(x, W, b)."""
    from onnx import helper

    prod = {o: n for n in nodes for o in n.output}
    drop: set[int] = set()
    out = []
    for n in nodes:
        mm = prod.get(n.input[0]) if n.op_type == "Add" and len(n.input) == 2 and n.input[1] in consts else None
        if mm is None or mm.op_type != "MatMul" or mm.input[1] not in consts or users.get(mm.output[0], 0) != 1 or \
                consts[mm.input[1]].ndim != 2 or consts[n.input[1]].size != consts[mm.input[1]].shape[1]:
            out.append(n)
            continue
        drop.add(id(mm))
        out.append(helper.make_node("Gemm", [mm.input[0], mm.input[1], n.input[1]], [n.output[0]],
                                    name=(mm.name or mm.output[0]) + "::gemm"))
    return [n for n in out if id(n) not in drop]


def _fuse_conv_bias(nodes: list[Any], consts: dict[str, np.ndarray], users: dict[str, int],
                    new_consts: dict[str, np.ndarray]) -> list[Any]:
    """Conv(x, W[, b]) + c (constant of C values, per channel) -> Conv(x, W, b + c)."""
    from onnx import helper

    prod = {o: n for n in nodes for o in n.output}
    drop: set[int] = set()
    out = []
    for n in nodes:
        cv = prod.get(n.input[0]) if n.op_type == "Add" and len(n.input) == 2 and n.input[1] in consts else None
        if cv is None or cv.op_type != "Conv" or cv.input[1] not in consts or users.get(cv.output[0], 0) != 1:
            out.append(n)
            continue
        c = consts[n.input[1]]
        o = consts[cv.input[1]].shape[0]
        if c.size != o or (c.ndim == 4 and c.shape != (1, o, 1, 1)) or (c.ndim not in (1, 4) and c.ndim != 3):
            out.append(n)
            continue
        b0 = consts[cv.input[2]] if len(cv.input) > 2 and cv.input[2] else np.zeros(o, np.float32)
        bname = (cv.name or cv.output[0]) + "::bias"
        consts[bname] = new_consts[bname] = (b0.reshape(-1) + c.reshape(-1)).astype(np.float32)
        drop.add(id(cv))
        out.append(helper.make_node("Conv", [cv.input[0], cv.input[1], bname], [n.output[0]], name=cv.name,
                                    **{a.name: helper.get_attribute_value(a) for a in cv.attribute}))
    return [n for n in out if id(n) not in drop]
