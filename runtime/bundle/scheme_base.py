"""The two types every quantisation scheme is built from: :class:`QTensor` (a stored tensor) and :class:`Scheme`
(what a storage format's bytes mean). The formats themselves and their registry are in :mod:`.schemes`."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass
class QTensor:
    """A (possibly quantised) tensor: logical ``shape``, stored ``data`` and optional ``scale`` arrays."""

    scheme: str
    shape: tuple[int, ...]
    data: np.ndarray
    scale: np.ndarray | None = None
    group_size: int = 0

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + (self.scale.nbytes if self.scale is not None else 0))

    @property
    def spec(self) -> "Scheme":
        """This tensor's :class:`Scheme` object."""
        return _registry_module().get_scheme(self.scheme)

    def dequantize(self) -> np.ndarray:
        """The float32 array this tensor stands for."""
        return self.spec.dequantize(self)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """float32 rows ``idx`` of a 2-D tensor (embedding lookup) without dequantising the rest."""
        idx = np.asarray(idx)
        sub = QTensor(self.scheme, (len(idx), *self.shape[1:]), self.data[idx],
                      None if self.scale is None else self.scale[idx], self.group_size)
        return sub.spec.dequantize(sub)


class Scheme:
    """One storage format. Subclasses fill the methods; instances are stateless and live in :data:`SCHEMES`."""

    name: str = ""
    bits: int = 0
    data_dtype: str = ""  # numpy dtype name of the data part
    scale_dtype: str | None = None  # numpy dtype name of the scale part (None: no scale)
    kernel_families: tuple[str, ...] = ()  # compiled linear-kernel families: kernels/tvm_linear.py, "*_q8": tvm_q8.py

    # -- geometry ---------------------------------------------------------------------------------------------
    def group_size(self, group_size: int) -> int:
        """The group size a tensor of this scheme records (0 for schemes without groups)."""
        return 0

    def data_shape(self, shape: tuple[int, ...], group_size: int = 0) -> tuple[int, ...]:
        return tuple(shape)

    def scale_shape(self, shape: tuple[int, ...], group_size: int = 0) -> tuple[int, ...] | None:
        return None

    def row_data_bytes(self, width: int) -> int:
        """Bytes of one row's data for a row of ``width`` values."""
        return width * self.bits // 8

    def row_scale_bytes(self, width: int, group_size: int = 0) -> int:
        """Bytes of one row's scales (0 without scales)."""
        return 0

    def row_bytes(self, width: int, group_size: int = 0) -> int:
        """Bytes of one row (data + scale) of ``width`` values."""
        return self.row_data_bytes(width) + self.row_scale_bytes(width, group_size)

    def check_width(self, width: int, group_size: int = 0) -> str | None:
        """Why rows of ``width`` values cannot be stored in this scheme (None when they can)."""
        return None

    def rows_from_bytes(self, data: np.ndarray, scale: np.ndarray | None, n: int, width: int,
                        group_size: int = 0) -> QTensor:
        """A ``[n, width]`` QTensor from contiguous uint8 row bytes ``data`` ``[n, row_data_bytes]`` (and
        ``scale`` ``[n, row_scale_bytes]``), viewing them in place."""
        d = data.view(np.dtype(self.data_dtype)).reshape(self.data_shape((n, width), group_size))
        s = None
        if self.scale_dtype is not None and scale is not None:
            shp = self.scale_shape((n, width), group_size)
            s = scale.view(np.dtype(self.scale_dtype)).reshape(shp)
        return QTensor(self.name, (n, width), d, s, self.group_size(group_size))

    # -- values -----------------------------------------------------------------------------------------------
    def quantize(self, w: np.ndarray, group_size: int = 32) -> QTensor:
        raise NotImplementedError

    def dequantize(self, t: QTensor) -> np.ndarray:
        """The float32 array of ``t``."""
        n = int(t.shape[0]) if len(t.shape) == 2 else 1
        if len(t.shape) != 2:
            return np.asarray(t.data, dtype=np.float32).reshape(t.shape)
        out = np.empty(n * int(t.shape[1]), np.float32)
        return self.dequantize_rows_into(t, 0, n, out).copy()

    def dequantize_rows_into(self, t: QTensor, r0: int, r1: int, out: np.ndarray,
                             nib: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[r0, r1)`` of the 2-D ``t`` as float32 into ``out`` (C-contiguous float32 of at least
        ``(r1 - r0) * in`` elements); returns the ``[r1 - r0, in]`` view. ``nib``: optional uint8 scratch of the
        same element count for schemes that unpack (int4)."""
        inn = int(t.shape[1])
        dst = out[: (r1 - r0) * inn].reshape(r1 - r0, inn)
        dst[...] = t.data[r0:r1]
        return dst

    def scratch_bytes(self, block_bytes: int) -> int:
        """Extra scratch bytes a dequantisation of ``block_bytes`` of float32 rows needs (int4: its nibbles)."""
        return 0



@functools.cache
def _registry_module():
    """The registry module (:mod:`.schemes` imports this one, so it is looked up once, on first use)."""
    from . import schemes

    return schemes
