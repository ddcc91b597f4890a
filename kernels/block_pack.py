"""Resident weights repacked for the C block kernels (``kernels/c_src/blockpack.h``: 16 output rows interleaved
per 32-value block, so one ``vpdpbusd`` advances 16 rows' dot products).

:class:`PackedQTensor` is a :class:`~edgespool.kernels.quant.QTensor` whose ``data`` is the packed buffer (the
stored-layout bytes are dropped: one copy of the weights in memory). It keeps its scheme, shape and group size;
everything that needs the stored layout (``dequantize``, embedding ``rows``, the numpy reference kernels through
:meth:`stored_rows`) gets it back from the packed bytes, bit for bit. Packing is for resident weights only:
streamed weights are read in their stored layout and run on the stored-layout kernels.
"""
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from .quant import QTensor

# schemes with a packed form (the rest keep their stored layout)
PACKED_SCHEMES = ("q8_0", "q4_0", "int8", "int4", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q3_k", "q2_k")


class PackedQTensor(QTensor):
    """A 2-D weight in the x16 packed layout. ``data``: the packed bytes (uint8, 64-byte aligned); ``scale``:
    None (scales live inside the packed groups). ``lib``: the ctypes library that packed it (for unpacking);
    ``code``: its weight-type code; ``stored``: (data dtype, data shape, scale dtype, scale shape) of the stored
    layout."""

    def __init__(self, src: QTensor, packed: np.ndarray, lib: Any, code: int) -> None:
        super().__init__(src.scheme, tuple(src.shape), packed, None, src.group_size)
        self.lib = lib
        self.code = code
        self.ptr = int(packed.ctypes.data)  # the packed buffer's address (the kernels' per-call fast path)
        sc = src.scale
        self.stored = (src.data.dtype, tuple(src.data.shape), None if sc is None else sc.dtype,
                       None if sc is None else tuple(sc.shape))

    def _unpack(self, idx: np.ndarray) -> QTensor:
        ddt, dshape, sdt, sshape = self.stored
        rows, n = int(self.shape[0]), int(self.shape[1])
        idx = np.ascontiguousarray(idx, dtype=np.int64).reshape(-1)
        count = int(idx.size)
        data = np.empty((count, *dshape[1:]), ddt)
        scale = None if sdt is None else np.empty((count, *sshape[1:]), sdt)
        rb = data.nbytes // max(count, 1)
        sb = 0 if scale is None else scale.nbytes // max(count, 1)
        rc = self.lib.es_unpack_rows(self.code, self.data.ctypes.data, rows, n, idx.ctypes.data, count,
                                     data.ctypes.data, rb, None if scale is None else scale.ctypes.data, sb)
        if rc:
            raise IndexError(f"row index out of range [0, {rows}) in a packed {self.scheme} weight")
        return QTensor(self.scheme, (count, n), data, scale, self.group_size)

    def stored_rows(self, r0: int, r1: int) -> QTensor:
        """Rows ``r0..r1`` in the stored layout (a new QTensor ``[r1 - r0, in]``)."""
        return self._unpack(np.arange(r0, r1, dtype=np.int64))

    def dequantize(self) -> np.ndarray:
        return self.stored_rows(0, int(self.shape[0])).dequantize()

    def rows(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        return self._unpack(idx.reshape(-1)).dequantize().reshape(*idx.shape, *self.shape[1:])


def pack(lib: Any, code: int, w: QTensor) -> PackedQTensor | None:
    """``w`` repacked by ``lib`` (a loaded ``blockdot.so``), or None when this build has no packed kernel for it."""
    if w.scheme not in PACKED_SCHEMES or len(w.shape) != 2 or isinstance(w, PackedQTensor):
        return None
    if w.scheme == "int4" and w.group_size != 32:
        return None
    if not lib.es_pack_kind(code):
        return None
    rows, n = int(w.shape[0]), int(w.shape[1])
    nbytes = int(lib.es_packed_bytes(code, rows, n))
    if nbytes <= 0:
        return None
    data = w.data if w.data.flags.c_contiguous else np.ascontiguousarray(w.data)
    sc = None if w.scale is None else np.ascontiguousarray(w.scale)
    raw = np.empty(nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    out = raw[start:start + nbytes]
    scb = 0 if sc is None else sc.nbytes // rows
    rc = lib.es_pack(code, data.ctypes.data, data.nbytes // rows, None if sc is None else sc.ctypes.data, scb,
                     rows, n, out.ctypes.data)
    if rc:
        return None
    return PackedQTensor(w, out, lib, code)


def declare(lib: Any) -> bool:
    """Declare the ctypes signatures of the packing entry points of ``lib``; False when it has none (a library
    built before the packed layout existed)."""
    if not hasattr(lib, "es_linear_packed"):
        return False
    vp, lg, it = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    lib.es_pack_kind.restype, lib.es_pack_kind.argtypes = it, [it]
    lib.es_packed_bytes.restype, lib.es_packed_bytes.argtypes = lg, [it, it, it]
    lib.es_pack.restype, lib.es_pack.argtypes = it, [it, vp, lg, vp, lg, it, it, vp]
    lib.es_unpack_rows.restype, lib.es_unpack_rows.argtypes = it, [it, vp, it, it, vp, it, vp, lg, vp, lg]
    lib.es_linear_packed.restype = it
    lib.es_linear_packed.argtypes = [vp, it, vp, it, it, vp, it, vp, vp, it]
    return True
