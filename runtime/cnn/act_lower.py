"""int8 hard-swish / hard-sigmoid for onnxruntime without a ``Gather`` table lookup, exact by exhaustive check.

The numpy executor and the C kernels apply an int8 activation as its 256-entry table (:mod:`.quant`). onnxruntime
has no fast byte-table operator (``Gather`` with int64 indices ran at ~3.6 ns per element, 42% of PaddleOCR cls's
int8 time), so the lowering writes these activations as ``DequantizeLinear -> HardSwish | HardSigmoid ->
QuantizeLinear`` (float32 inside, MLAS-vectorised quantisation) -- the float32 arithmetic the table of
:func:`.quant.lut_f32` is defined with. Whether onnxruntime's kernels give exactly that table is not taken on
trust: :func:`exact_float_acts` runs every candidate node's chain on all 256 input codes in one small session and
only the nodes whose 256 outputs equal their table use the chain; the others keep the ``Gather``. So the lowered
graph stays bit-identical to the numpy executor on whatever CPU / onnxruntime build runs it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..bundle.cnn_graph import CnnGraph, Node
    from .quant import QuantCnn

U8 = 128
FLOAT_KINDS = ("hardswish", "hardsigmoid")


def float_chain(b: Any, n: "Node", x: str, q: "QuantCnn", hint: str) -> str:
    """ONNX nodes (via the lowering's builder ``b``) for act node ``n`` on uint8 codes ``x``: DQ -> act -> Q."""
    (si, zi), (so, zo) = q.tensors[n.inputs[0]], q.tensors[n.output]
    f = b.op("DequantizeLinear", [x, b.const(np.array(si, np.float32), "s"), b.const(np.array(zi + U8, np.uint8),
                                                                                     "z")], hint + "_dq")
    if n.attrs["kind"] == "hardswish":
        y = b.op("HardSwish", [f], hint + "_hs")
    else:
        y = b.op("HardSigmoid", [f], hint + "_hsig", alpha=float(n.attrs["alpha"]), beta=float(n.attrs["beta"]))
    return b.op("QuantizeLinear", [y, b.const(np.array(so, np.float32), "s"), b.const(np.array(zo + U8, np.uint8),
                                                                                      "z")], hint)


def exact_float_acts(graph: "CnnGraph", q: "QuantCnn") -> frozenset[str]:
    """Names of the act nodes whose DQ -> act -> Q chain gives their int8 table exactly in this onnxruntime (all
    256 codes, one session, 1 thread)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from .onnx_lower import _Builder, opsets

    cand = [n for n in graph.nodes if n.op == "act" and n.attrs.get("kind") in FLOAT_KINDS and n.name in q.nodes]
    if not cand:
        return frozenset()
    b = _Builder()
    outs = [float_chain(b, n, "codes", q, f"a{k}") for k, n in enumerate(cand)]
    g = helper.make_graph(b.nodes, "act_check", [helper.make_tensor_value_info("codes", TensorProto.UINT8, [256])],
                          [helper.make_tensor_value_info(o, TensorProto.UINT8, [256]) for o in outs], b.inits)
    m = helper.make_model(g, opset_imports=opsets(), ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    got = s.run(None, {"codes": np.arange(256, dtype=np.uint8)})
    want = [(q.nodes[n.name]["lut"].astype(np.int16) + U8).astype(np.uint8) for n in cand]
    return frozenset(n.name for n, y, w in zip(cand, got, want) if np.array_equal(y, w))
