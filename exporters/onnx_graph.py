"""GraphBuilder: an ONNX graph built op by op with ``onnx.helper`` (no torch), whose weights stream to one external
data file as they are added (never the whole model in memory twice). Used by the decoder lowering
(:mod:`.onnx_decoder`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

_NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
               np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8,
               np.dtype(np.int64): TensorProto.INT64, np.dtype(np.bool_): TensorProto.BOOL}
_EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inside model.onnx
_ALIGN_BIG, _BIG = 4096, 1 << 16  # big tensors start on a page boundary in the data file (mmap friendly)


# ---------------------------------------------------------------------------------------------------------------
# The graph builder: one helper per op kind, weights streamed to the external data file as they are added.
# ---------------------------------------------------------------------------------------------------------------
class GraphBuilder:
    """Accumulates nodes, inputs, outputs and initializers of one ONNX graph.

    ``weight()`` writes large arrays straight to the external data file and keeps only a reference, so a model is
    never held in memory twice. Every op helper returns the name of its output.
    """

    def __init__(self, data_path: Path, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[TensorProto] = []
        self.uses_ms_domain = False
        self._data_path = data_path
        self._data = open(data_path, "wb")
        self._counts: dict[str, int] = {}
        self._consts: dict[tuple, str] = {}

    # -- names, inputs, outputs --------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        n = self._counts.get(hint, 0)
        self._counts[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    def input(self, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, name: str, elem_type: int, shape: Sequence[int | str]) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    # -- initializers --------------------------------------------------------------------------------------------
    def weight(self, name: str, array: np.ndarray, elem_type: int | None = None,
               dims: Sequence[int] | None = None) -> str:
        """Add an initializer. ``elem_type``/``dims`` override for packed types (INT4 bytes)."""
        array = np.ascontiguousarray(array)
        et = _NP_TO_ONNX[array.dtype] if elem_type is None else elem_type
        dims = list(array.shape if dims is None else dims)
        raw = array.tobytes()
        t = TensorProto()
        t.name, t.data_type = name, et
        t.dims.extend(dims)
        if len(raw) < _EXTERNAL_MIN_BYTES:
            t.raw_data = raw
        else:
            align = _ALIGN_BIG if len(raw) >= _BIG else 64
            off = self._data.tell()
            pad = (-off) % align
            if pad:
                self._data.write(b"\0" * pad)
            off += pad
            self._data.write(raw)
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", self._data_path.name), ("offset", str(off)), ("length", str(len(raw)))):
                e = t.external_data.add()
                e.key, e.value = k, v
        self.initializers.append(t)
        return name

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """A small constant (deduplicated by value)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.weight(self.fresh("const"), arr)
        return self._consts[key]

    # -- nodes ---------------------------------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], *, out: str | None = None, n_out: int = 1,
           domain: str = "", **attrs: Any) -> Any:
        """Append one node; returns its output name (or the list of names when ``n_out > 1``)."""
        base = out or self.fresh(op_type.lower())
        outs = [base] if n_out == 1 else [f"{base}:{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh("n_" + base),
                                           domain=domain, **attrs))
        if domain == "com.microsoft":
            self.uses_ms_domain = True
        return outs[0] if n_out == 1 else outs

    def matmul(self, a: str, b: str, out: str | None = None) -> str:
        return self.op("MatMul", [a, b], out=out)

    def add(self, a: str, b: str, out: str | None = None) -> str:
        return self.op("Add", [a, b], out=out)

    def mul(self, a: str, b: str, out: str | None = None) -> str:
        return self.op("Mul", [a, b], out=out)

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", [x], to=to)

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", [x, self.const(list(shape))])

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        return self.op("Transpose", [x], perm=list(perm))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", [x, self.const(list(axes))])

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Squeeze", [x, self.const(list(axes))])

    def gather(self, data: str, idx: str, axis: int = 0) -> str:
        return self.op("Gather", [data, idx], axis=axis)

    def concat(self, xs: Sequence[str], axis: int, out: str | None = None) -> str:
        return self.op("Concat", list(xs), axis=axis, out=out)

    def silu(self, x: str) -> str:
        return self.mul(x, self.op("Sigmoid", [x]))

    def dim(self, x: str, axis: int) -> str:
        """Scalar int64: ``x.shape[axis]``."""
        return self.squeeze(self.op("Shape", [x], start=axis, end=axis + 1), [0])

    # -- finish --------------------------------------------------------------------------------------------------
    def model(self, name: str) -> onnx.ModelProto:
        self._data.close()
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        if self.uses_ms_domain:
            opsets.append(helper.make_opsetid("com.microsoft", 1))
        ir = helper.find_min_ir_version_for([opsets[0]], ignore_unknown=True)
        return helper.make_model(graph, opset_imports=opsets, ir_version=ir, producer_name="edgespool")

    def abort(self) -> None:
        self._data.close()
