"""Quantisation schemes as objects, in one registry: what a tensor's bytes mean.

A :class:`QTensor` is a (possibly quantised) 2-D or 1-D weight: ``scheme`` names an entry of :data:`SCHEMES`, which
says everything the rest of edgespool needs to know about that storage format: the dtypes and shapes of its
``data`` and ``scale`` parts, bytes per row, how to quantise a float array into it, how to dequantise all of it or
a block of rows into a caller's buffer, and which compiled-kernel families serve it. Adding a scheme is adding one
class here and one entry to :data:`SCHEMES` (kernels that serve it register under its name).

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

from types import MappingProxyType

import numpy as np

from .ggml_schemes import ggml_schemes
from .scheme_base import QTensor, Scheme

__all__ = ["QTensor", "Scheme", "SCHEMES", "FLOAT_SCHEMES", "BITS", "get_scheme", "quantize", "dequantize",
           "unpack_int4"]


class F32(Scheme):
    name, bits, data_dtype = "f32", 32, "float32"

    def quantize(self, w: np.ndarray, group_size: int = 32) -> QTensor:
        w = np.asarray(w, dtype=np.float32)
        return QTensor("f32", tuple(w.shape), np.ascontiguousarray(w))

    def dequantize(self, t: QTensor) -> np.ndarray:
        return np.asarray(t.data, dtype=np.float32)


class F16(Scheme):
    name, bits, data_dtype = "f16", 16, "float16"
    kernel_families = ("f16",)

    def quantize(self, w: np.ndarray, group_size: int = 32) -> QTensor:
        w = np.asarray(w, dtype=np.float32)
        return QTensor("f16", tuple(w.shape), w.astype(np.float16))

    def dequantize(self, t: QTensor) -> np.ndarray:
        return t.data.astype(np.float32)


class Int8(Scheme):
    """Per-output-channel int8: ``data`` int8 ``[out, in]``, ``scale`` float32 ``[out]``."""

    name, bits, data_dtype, scale_dtype = "int8", 8, "int8", "float32"
    kernel_families = ("int8", "int8_q8")

    def scale_shape(self, shape: tuple[int, ...], group_size: int = 0) -> tuple[int, ...] | None:
        return (int(shape[0]),)

    def row_scale_bytes(self, width: int, group_size: int = 0) -> int:
        return 4

    def quantize(self, w: np.ndarray, group_size: int = 32) -> QTensor:
        w = _matrix(w, self.name)
        amax = np.abs(w).max(axis=1)
        scale = (amax / 127.0).astype(np.float32)
        inv = np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1.0), 0.0).astype(np.float32)
        q = np.clip(np.rint(w * inv[:, None]), -127, 127).astype(np.int8)
        return QTensor("int8", tuple(w.shape), q, scale)

    def dequantize(self, t: QTensor) -> np.ndarray:
        return t.data.astype(np.float32) * t.scale.astype(np.float32)[:, None]

    def dequantize_rows_into(self, t: QTensor, r0: int, r1: int, out: np.ndarray,
                             nib: np.ndarray | None = None) -> np.ndarray:
        inn = int(t.shape[1])
        dst = out[: (r1 - r0) * inn].reshape(r1 - r0, inn)
        np.multiply(t.data[r0:r1], t.scale[r0:r1, None].astype(np.float32), out=dst)
        return dst


class Int4(Scheme):
    """Group-wise int4 with Q4_0 conventions: ``data`` uint8 ``[out, in // 2]``, ``scale`` f16 ``[out, in // g]``."""

    name, bits, data_dtype, scale_dtype = "int4", 4, "uint8", "float16"
    kernel_families = ("int4", "int4_q8")

    def group_size(self, group_size: int) -> int:
        return int(group_size)

    def data_shape(self, shape: tuple[int, ...], group_size: int = 0) -> tuple[int, ...]:
        return (int(shape[0]), int(shape[1]) // 2)

    def scale_shape(self, shape: tuple[int, ...], group_size: int = 0) -> tuple[int, ...] | None:
        return (int(shape[0]), int(shape[1]) // int(group_size))

    def row_scale_bytes(self, width: int, group_size: int = 0) -> int:
        return 2 * (width // int(group_size))

    def check_width(self, width: int, group_size: int = 0) -> str | None:
        g = int(group_size)
        if g <= 0 or g % 2 or width % g:
            return f"int4 group size {g} must be even and divide the input width {width}"
        return None

    def quantize(self, w: np.ndarray, group_size: int = 32) -> QTensor:
        w = _matrix(w, self.name)
        out, inn = w.shape
        g = group_size
        why = self.check_width(inn, g)
        if why:
            raise ValueError(why)
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
        return QTensor("int4", (out, inn), np.ascontiguousarray(packed), d, g)

    def dequantize(self, t: QTensor) -> np.ndarray:
        q = unpack_int4(t.data, t.group_size).astype(np.float32)
        out, inn = q.shape
        g = t.group_size
        return (q.reshape(out, inn // g, g) * t.scale.astype(np.float32)[..., None]).reshape(out, inn)

    def dequantize_rows_into(self, t: QTensor, r0: int, r1: int, out: np.ndarray,
                             nib: np.ndarray | None = None) -> np.ndarray:
        inn, n, g = int(t.shape[1]), r1 - r0, t.group_size
        dst = out[: n * inn].reshape(n, inn)
        shp = (n, inn // g, g // 2)
        packed = t.data[r0:r1].reshape(shp)
        if nib is None:
            nib = np.empty(n * inn, dtype=np.uint8)
        lo, hi = nib[: n * inn // 2].reshape(shp), nib[n * inn // 2: n * inn].reshape(shp)
        np.bitwise_and(packed, 0x0F, out=lo)
        np.right_shift(packed, 4, out=hi)
        v = dst.reshape(n, inn // g, g)
        v[..., : g // 2] = lo
        v[..., g // 2:] = hi
        v -= np.float32(8.0)
        v *= t.scale[r0:r1, :, None].astype(np.float32)
        return dst

    def scratch_bytes(self, block_bytes: int) -> int:
        return block_bytes // 4


def _matrix(w: np.ndarray, scheme: str) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"{scheme} needs a 2-D tensor, got shape {tuple(w.shape)}")
    return w


def unpack_int4(data: np.ndarray, group_size: int) -> np.ndarray:
    """uint8 ``[out, in//2]`` -> int8 codes minus 8, ``[out, in]`` (values -8..7)."""
    out, half = data.shape
    g = group_size
    b = data.reshape(out, (2 * half) // g, g // 2)
    lo = (b & 0x0F).astype(np.int8) - 8
    hi = (b >> 4).astype(np.int8) - 8
    return np.concatenate([lo, hi], axis=2).reshape(out, 2 * half)


def _registry() -> "MappingProxyType[str, Scheme]":
    """The registry, read-only: scheme name -> its object (the formats above, then llama.cpp's block formats kept
    as stored by ``--quant keep``, :mod:`.ggml_schemes`)."""
    return MappingProxyType({
        "f32": F32(),
        "f16": F16(),
        "int8": Int8(),
        "int4": Int4(),
        **ggml_schemes(),
    })


SCHEMES = _registry()
FLOAT_SCHEMES = ("f32", "f16")  # plain float arrays of the logical shape (quantisers' and lowerings' float inputs)
BITS = {name: s.bits for name, s in SCHEMES.items()}


def get_scheme(name: str) -> Scheme:
    """The :class:`Scheme` called ``name`` (ValueError listing the known ones otherwise)."""
    try:
        return SCHEMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown quantisation scheme {name!r}; valid: {', '.join(SCHEMES)}") from None


def quantize(w: np.ndarray, scheme: str, group_size: int = 32) -> QTensor:
    """Quantise a float array into ``scheme`` (see the module docstring). 1-D tensors only support f32/f16."""
    return get_scheme(scheme).quantize(w, group_size)


def dequantize(t: QTensor) -> np.ndarray:
    """float32 array of a :class:`QTensor`."""
    return get_scheme(t.scheme).dequantize(t)
