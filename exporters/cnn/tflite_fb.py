"""A small, bounds-checked reader of TFLite flatbuffers (the fields of schema.fbs a CNN importer needs; no
dependency: the ``flatbuffers`` / ``tflite`` packages are not required).

Reads the model into plain dataclasses: operator codes (builtin op numbers), subgraph 0's tensors (shape, type,
buffer, name, quantisation), operators (opcode, inputs, outputs, builtin options as a raw :class:`Table`), and
the buffers' bytes (inline ``data`` vectors, or the ``offset``/``size`` form of models over 2 GB). Every read is
checked against the file size: a truncated or corrupt file is a one-line :class:`ModelFormatError` naming it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from ...errors import ModelFormatError, UnsupportedModelError

# TensorType (schema.fbs) -> numpy dtype (the types a CNN importer meets)
TENSOR_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8,
                10: np.float64}
TYPE_NAMES = {0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 3: "UINT8", 4: "INT64", 5: "STRING", 6: "BOOL", 7: "INT16",
              8: "COMPLEX64", 9: "INT8", 10: "FLOAT64"}


class Reader:
    """Raw flatbuffer access over ``buf`` with every offset checked (ModelFormatError naming ``where``)."""

    def __init__(self, buf: bytes, where: str) -> None:
        self.buf = buf
        self.where = where

    def _need(self, pos: int, n: int, what: str) -> None:
        if pos < 0 or pos + n > len(self.buf):
            raise ModelFormatError(f"{self.where}: truncated or corrupt TFLite flatbuffer ({what} at byte {pos} "
                                   f"runs past the end of the {len(self.buf)}-byte file)")

    def unpack(self, fmt: str, pos: int, what: str = "value") -> int | float:
        n = struct.calcsize(fmt)
        self._need(pos, n, what)
        return struct.unpack_from("<" + fmt, self.buf, pos)[0]

    def deref(self, pos: int, what: str) -> int:
        """Target of the uoffset stored at ``pos``."""
        return pos + int(self.unpack("I", pos, what))

    def table(self, pos: int, what: str) -> "Table":
        vt = pos - int(self.unpack("i", pos, what))
        vsize = int(self.unpack("H", vt, f"{what} vtable"))
        if vsize < 4 or vsize % 2:
            raise ModelFormatError(f"{self.where}: corrupt TFLite flatbuffer ({what} has a {vsize}-byte vtable)")
        self._need(vt, vsize, f"{what} vtable")
        return Table(self, pos, vt, vsize, what)

    def vector(self, pos: int, what: str) -> tuple[int, int]:
        """(start, length) of the vector at ``pos``."""
        n = int(self.unpack("I", pos, what))
        return pos + 4, n


@dataclass
class Table:
    """One flatbuffer table: field ``i`` (schema order) by type."""

    r: Reader
    pos: int
    vt: int
    vsize: int
    what: str

    def _off(self, i: int) -> int:
        k = 4 + 2 * i
        return int(self.r.unpack("H", self.vt + k, self.what)) if k < self.vsize else 0

    def scalar(self, i: int, fmt: str, default: int | float = 0) -> int | float:
        o = self._off(i)
        return self.r.unpack(fmt, self.pos + o, f"{self.what} field {i}") if o else default

    def has(self, i: int) -> bool:
        return self._off(i) != 0

    def sub(self, i: int, what: str) -> "Table | None":
        o = self._off(i)
        return self.r.table(self.r.deref(self.pos + o, what), what) if o else None

    def string(self, i: int) -> str:
        o = self._off(i)
        if not o:
            return ""
        start, n = self.r.vector(self.r.deref(self.pos + o, f"{self.what} string"), f"{self.what} string")
        self.r._need(start, n, f"{self.what} string")
        return self.r.buf[start: start + n].decode("utf-8", "replace")

    def array(self, i: int, dtype: type) -> np.ndarray:
        """A vector of scalars (empty when absent)."""
        o = self._off(i)
        if not o:
            return np.zeros(0, dtype)
        start, n = self.r.vector(self.r.deref(self.pos + o, f"{self.what} vector"), f"{self.what} vector")
        size = n * np.dtype(dtype).itemsize
        self.r._need(start, size, f"{self.what} vector of {n}")
        return np.frombuffer(self.r.buf, dtype=np.dtype(dtype).newbyteorder("<"), count=n, offset=start)

    def tables(self, i: int, what: str) -> list["Table"]:
        o = self._off(i)
        if not o:
            return []
        start, n = self.r.vector(self.r.deref(self.pos + o, f"{what} list"), f"{what} list")
        self.r._need(start, 4 * n, f"{what} list of {n}")
        return [self.r.table(self.r.deref(start + 4 * k, what), f"{what} #{k}") for k in range(n)]


@dataclass
class TfTensor:
    index: int
    name: str
    shape: tuple[int, ...]
    type: int
    buffer: int
    scale: np.ndarray  # float32 [n] (empty: not quantised)
    zero_point: np.ndarray  # int64 [n]
    qdim: int
    sparse: bool = False  # has TFLite sparsity parameters (compressed buffer)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, f"type {self.type}")


@dataclass
class TfOperator:
    index: int
    opcode: int  # BuiltinOperator number (custom ops: -1)
    custom: str
    inputs: list[int]
    outputs: list[int]
    options: Table | None


@dataclass
class TfModel:
    path: str
    version: int
    tensors: list[TfTensor]
    operators: list[TfOperator]
    inputs: list[int]
    outputs: list[int]
    buffers: list[bytes] = field(default_factory=list)

    def data(self, t: TfTensor) -> np.ndarray | None:
        """The constant data of tensor ``t`` in its own shape (None when it is an activation)."""
        raw = self.buffers[t.buffer] if 0 <= t.buffer < len(self.buffers) else b""
        if not raw:
            return None
        if t.sparse:
            raise UnsupportedModelError(f"{self.path}: tensor {t.name!r} is stored sparse (TFLite sparsity "
                                        "parameters); sparse models are not supported")
        dt = TENSOR_TYPES.get(t.type)
        if dt is None:
            raise ModelFormatError(f"{self.path}: tensor {t.name!r} has unsupported type {t.type_name}")
        n = int(np.prod(t.shape)) if t.shape else 1
        if len(raw) != n * np.dtype(dt).itemsize:
            raise ModelFormatError(f"{self.path}: tensor {t.name!r} {list(t.shape)} {t.type_name}: its buffer has "
                                   f"{len(raw)} bytes, expected {n * np.dtype(dt).itemsize}")
        return np.frombuffer(raw, dtype=np.dtype(dt).newbyteorder("<")).astype(dt).reshape(t.shape)


def read_tflite(buf: bytes, where: str) -> TfModel:
    """Parse a TFLite flatbuffer (subgraph 0). ModelFormatError when it is not one or is truncated/corrupt."""
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ModelFormatError(f"{where}: not a TFLite model (no 'TFL3' flatbuffer identifier in its first 8 bytes)")
    r = Reader(buf, where)
    model = r.table(r.deref(0, "root"), "Model")
    version = int(model.scalar(0, "I"))
    codes = []
    for oc in model.tables(1, "OperatorCode"):
        dep = int(oc.scalar(0, "b", 0))
        code = int(oc.scalar(3, "i", 0))
        codes.append((max(dep, code), oc.string(1)))
    subgraphs = model.tables(2, "SubGraph")
    if not subgraphs:
        raise ModelFormatError(f"{where}: TFLite model has no subgraph")
    buffers = []
    for b in model.tables(4, "Buffer"):
        off, size = int(b.scalar(1, "Q", 0)), int(b.scalar(2, "Q", 0))
        if off > 1:  # large model: data stored after the flatbuffer, at an absolute file offset
            r._need(off, size, "buffer data")
            buffers.append(bytes(buf[off: off + size]))
        else:
            buffers.append(b.array(0, np.uint8).tobytes())
    sg = subgraphs[0]
    tensors = []
    for i, t in enumerate(sg.tables(0, "Tensor")):
        q = t.sub(4, f"Tensor #{i} quantization")
        scale = q.array(2, np.float32).astype(np.float32) if q else np.zeros(0, np.float32)
        zp = q.array(3, np.int64).astype(np.int64) if q else np.zeros(0, np.int64)
        qdim = int(q.scalar(6, "i", 0)) if q else 0
        tensors.append(TfTensor(i, t.string(3) or f"tensor{i}", tuple(int(v) for v in t.array(0, np.int32)),
                                int(t.scalar(1, "b", 0)), int(t.scalar(2, "I", 0)), scale, zp, qdim, t.has(6)))
    ops = []
    for i, o in enumerate(sg.tables(3, "Operator")):
        k = int(o.scalar(0, "I", 0))
        if k >= len(codes):
            raise ModelFormatError(f"{where}: operator #{i} uses opcode index {k}, the model has {len(codes)}")
        code, custom = codes[k]
        ins = [int(v) for v in o.array(1, np.int32)]
        outs = [int(v) for v in o.array(2, np.int32)]
        for v in ins + outs:
            if v >= len(tensors) or v < -1:
                raise ModelFormatError(f"{where}: operator #{i} refers to tensor {v}, the model has {len(tensors)}")
        ops.append(TfOperator(i, -1 if custom else code, custom, ins, outs,
                              o.sub(4, f"Operator #{i} options") if o.has(4) else None))
    ins = [int(v) for v in sg.array(1, np.int32)]
    outs = [int(v) for v in sg.array(2, np.int32)]
    for v in ins + outs:
        if not 0 <= v < len(tensors):
            raise ModelFormatError(f"{where}: subgraph input/output {v} is not a tensor (the model has {len(tensors)})")
    return TfModel(where, version, tensors, ops, ins, outs, buffers)
