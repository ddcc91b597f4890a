"""llama.cpp's (ggml's) block formats as bundle schemes: a GGUF tensor kept exactly as the file stores it.

A ``--quant keep`` export of a GGUF stores every quantised matrix in its ggml block type, the bytes identical to
the file's: ``data`` is uint8 ``[rows, row_bytes]``, each row ``in / block_values`` blocks of ``block_bytes``
(e.g. Q4_K: 256 values in 144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles). The
rows are the rows of the canonical ``[out, in]`` matrix (llama's q/k rows un-permuted by moving whole rows, which
leaves every block intact). Dequantisation is gguf-py's numpy port of ggml's C reference (checked bit-identical to
libggml's ``dequantize_row_*`` in tests/test_gguf.py); fast kernels for these blocks are compiled per target.

Scheme names are the ggml type names in lower case (``q4_k``, ``q8_0``, ...); ``bf16`` is stored as uint16.
"""
from __future__ import annotations

import numpy as np

from .scheme_base import QTensor, Scheme

# ggml type name -> (values per block, bytes per block): gguf-py's GGML_QUANT_SIZES for the types kept as blocks
GGML_BLOCKS: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}


class GgmlBlocks(Scheme):
    """A ggml block type kept as stored: ``data`` uint8 ``[rows, in / block_values * block_bytes]``."""

    data_dtype = "uint8"

    def __init__(self, ggml_type: str) -> None:
        self.ggml_type = ggml_type
        self.name = ggml_type.lower()
        self.block_values, self.block_bytes = GGML_BLOCKS[ggml_type]
        self.bits = round(8 * self.block_bytes / self.block_values)  # nominal (bytes per value * 8, rounded)

    def data_shape(self, shape: tuple[int, ...], group_size: int = 0) -> tuple[int, ...]:
        return (int(shape[0]), self.row_data_bytes(int(shape[1])))

    def row_data_bytes(self, width: int) -> int:
        return width // self.block_values * self.block_bytes

    def check_width(self, width: int, group_size: int = 0) -> str | None:
        if width % self.block_values:
            return f"{self.ggml_type} rows hold multiples of {self.block_values} values; got a row of {width}"
        return None

    def quantize(self, w: np.ndarray, group_size: int = 32) -> QTensor:
        raise ValueError(f"{self.name} is a GGUF block format kept as stored (--quant keep); edgespool does not "
                         "quantise into it: choose --quant int8 or int4")

    def _dequantize_raw(self, raw: np.ndarray) -> np.ndarray:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        return np.asarray(dequantize(np.ascontiguousarray(raw), GGMLQuantizationType[self.ggml_type]), np.float32)

    def dequantize(self, t: QTensor) -> np.ndarray:
        return self._dequantize_raw(t.data).reshape(t.shape)

    def dequantize_rows_into(self, t: QTensor, r0: int, r1: int, out: np.ndarray,
                             nib: np.ndarray | None = None) -> np.ndarray:
        inn = int(t.shape[1])
        dst = out[: (r1 - r0) * inn].reshape(r1 - r0, inn)
        dst[...] = self._dequantize_raw(t.data[r0:r1]).reshape(r1 - r0, inn)
        return dst


class Bf16(Scheme):
    """bfloat16 kept as stored: ``data`` uint16 ``[out, in]`` (the high half of a float32)."""

    name, bits, data_dtype = "bf16", 16, "uint16"

    def quantize(self, w: np.ndarray, group_size: int = 32) -> QTensor:
        w = np.ascontiguousarray(w, dtype=np.float32)
        return QTensor("bf16", tuple(w.shape), (w.view(np.uint32) >> 16).astype(np.uint16))

    def dequantize(self, t: QTensor) -> np.ndarray:
        return (np.asarray(t.data, np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(t.shape)

    def dequantize_rows_into(self, t: QTensor, r0: int, r1: int, out: np.ndarray,
                             nib: np.ndarray | None = None) -> np.ndarray:
        inn = int(t.shape[1])
        dst = out[: (r1 - r0) * inn].reshape(r1 - r0, inn)
        dst.view(np.uint32)[...] = t.data[r0:r1].astype(np.uint32) << 16
        return dst


def ggml_schemes() -> dict[str, Scheme]:
    """name -> scheme object of every kept ggml format (merged into :data:`~.schemes.SCHEMES`)."""
    out: dict[str, Scheme] = {t.lower(): GgmlBlocks(t) for t in GGML_BLOCKS}
    out["bf16"] = Bf16()
    return out
