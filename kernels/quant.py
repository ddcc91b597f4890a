"""Quantisation formats (numpy reference): the layout on flash is the layout the kernels read.

Schemes (symmetric; weights are ``[out, in]``):

* ``f32`` / ``f16``: plain arrays of the logical shape.
* ``int8``: per output channel. ``data`` int8 ``[out, in]``, ``scale`` float32 ``[out]``; w = data * scale[:, None].
* ``int4``: group-wise along ``in`` with group size ``g`` (even, divides ``in``), llama.cpp Q4_0 conventions.
  ``data`` uint8 ``[out, in // 2]``; ``scale`` float16 ``[out, in // g]``. Inside each group of ``g`` values the
  byte ``j`` (0 <= j < g/2) holds value ``j`` in its low nibble and value ``j + g/2`` in its high nibble (exactly
  Q4_0's nibble order for g = 32). Nibble q in 0..15 means w = (q - 8) * scale. The scale is the group's value of
  largest magnitude divided by -8; codes are computed exactly as ggml's reference Q4_0 quantiser, so for g = 32
  the bytes equal llama.cpp's Q4_0 blocks (scale and nibbles), just stored in two arrays instead of interleaved.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMES = ("f32", "f16", "int8", "int4")
BITS = {"f32": 32, "f16": 16, "int8": 8, "int4": 4}


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

    def dequantize(self) -> np.ndarray:
        """The float32 array this tensor stands for."""
        return dequantize(self)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """float32 rows ``idx`` of a 2-D tensor (embedding lookup) without dequantising the rest."""
        idx = np.asarray(idx)
        if self.scheme in ("f32", "f16"):
            return self.data[idx].astype(np.float32)
        sub = QTensor(self.scheme, (len(idx), *self.shape[1:]), self.data[idx],
                      None if self.scale is None else self.scale[idx], self.group_size)
        return dequantize(sub)


def quantize(w: np.ndarray, scheme: str, group_size: int = 32) -> QTensor:
    """Quantise a float array into ``scheme`` (see module docstring). 1-D tensors only support f32/f16."""
    w = np.asarray(w, dtype=np.float32)
    shape = tuple(w.shape)
    if scheme == "f32":
        return QTensor("f32", shape, np.ascontiguousarray(w))
    if scheme == "f16":
        return QTensor("f16", shape, w.astype(np.float16))
    if w.ndim != 2:
        raise ValueError(f"{scheme} needs a 2-D tensor, got shape {shape}")
    if scheme == "int8":
        amax = np.abs(w).max(axis=1)
        scale = (amax / 127.0).astype(np.float32)
        inv = np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1.0), 0.0).astype(np.float32)
        q = np.clip(np.rint(w * inv[:, None]), -127, 127).astype(np.int8)
        return QTensor("int8", shape, q, scale)
    if scheme == "int4":
        out, inn = shape
        g = group_size
        if g % 2 or inn % g:
            raise ValueError(f"int4 group size {g} must be even and divide the input width {inn}")
        blocks = w.reshape(out, inn // g, g)
        idx = np.abs(blocks).argmax(axis=2)
        vmax = np.take_along_axis(blocks, idx[..., None], axis=2)[..., 0]
        d32 = (vmax / np.float32(-8.0)).astype(np.float32)
        inv = np.where(d32 != 0, 1.0 / np.where(d32 != 0, d32, 1.0), 0.0).astype(np.float32)
        # exactly ggml's quantize_row_q4_0_ref: codes from the f32 scale, trunc(x/d + 8.5), stored scale f16
        q = np.clip(np.trunc(blocks * inv[..., None] + np.float32(8.5)), 0, 15).astype(np.uint8)
        d = d32.astype(np.float16)
        lo, hi = q[..., : g // 2], q[..., g // 2:]
        packed = (lo | (hi << 4)).reshape(out, inn // 2)
        return QTensor("int4", shape, np.ascontiguousarray(packed), d, g)
    raise ValueError(f"unknown quantisation scheme {scheme!r}; valid: {', '.join(SCHEMES)}")


def unpack_int4(data: np.ndarray, group_size: int) -> np.ndarray:
    """uint8 ``[out, in//2]`` -> int8 codes minus 8, ``[out, in]`` (values -8..7)."""
    out, half = data.shape
    g = group_size
    b = data.reshape(out, (2 * half) // g, g // 2)
    lo = (b & 0x0F).astype(np.int8) - 8
    hi = (b >> 4).astype(np.int8) - 8
    return np.concatenate([lo, hi], axis=2).reshape(out, 2 * half)


def dequantize(t: QTensor) -> np.ndarray:
    """float32 array of a :class:`QTensor`."""
    if t.scheme == "f32":
        return np.asarray(t.data, dtype=np.float32)
    if t.scheme == "f16":
        return t.data.astype(np.float32)
    if t.scheme == "int8":
        return t.data.astype(np.float32) * t.scale.astype(np.float32)[:, None]
    if t.scheme == "int4":
        q = unpack_int4(t.data, t.group_size).astype(np.float32)
        out, inn = q.shape
        g = t.group_size
        return (q.reshape(out, inn // g, g) * t.scale.astype(np.float32)[..., None]).reshape(out, inn)
    raise ValueError(f"unknown quantisation scheme {t.scheme!r}")


def linear(x: np.ndarray, w: QTensor, bias: np.ndarray | None = None) -> np.ndarray:
    """Reference y = x @ W.T (+ bias) for a 2-D weight in any scheme; x is ``[..., in]`` float32."""
    y = x @ dequantize(w).T
    if bias is not None:
        y = y + bias
    return y
