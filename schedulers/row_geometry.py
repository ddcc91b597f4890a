"""Where the rows of a 2-D weight tensor lie in the weights file: the bundle-contract arithmetic behind
row-granular reads (embedding rows per token, head row chunks through the layer window).

A tensor record stores its parts (``data``, and ``scale`` for grouped int8/int4) one after another, each row-major,
so rows ``[r0, r1)`` of a part are one contiguous byte range. ggml block schemes (Q4_K, Q6_K, ...) keep whole
super-blocks per row, so their rows are byte ranges too: the scheme object's ``row_data_bytes`` says how long.
A read of a row range is each part's range widened to the 4 KiB alignment O_DIRECT needs (:func:`span`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import BundleError
from ..runtime.bundle.constants import ALIGNMENT, align_up
from ..runtime.bundle.reader import Bundle


@dataclass(frozen=True)
class RowPart:
    """One part of a tensor: ``name`` (data / scale), its file ``offset``, bytes per row, dtype."""

    name: str
    offset: int
    row_bytes: int
    dtype: str


@dataclass(frozen=True)
class RowGeometry:
    """Rows of tensor ``tensor`` (``rows`` x ``width``, scheme ``scheme``, ``group_size``) and where they are."""

    tensor: str
    group: str
    scheme: str
    rows: int
    width: int
    group_size: int
    parts: tuple[RowPart, ...]

    @property
    def row_bytes(self) -> int:
        """Stored bytes of one row (every part)."""
        return sum(p.row_bytes for p in self.parts)

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes

    def span(self, r0: int, r1: int) -> list[tuple[int, int, int]]:
        """For rows ``[r0, r1)``: per part ``(aligned file offset, aligned length, offset of row r0 inside it)``."""
        out = []
        for p in self.parts:
            start, end = p.offset + r0 * p.row_bytes, p.offset + r1 * p.row_bytes
            a0 = start - start % ALIGNMENT
            out.append((a0, align_up(end) - a0, start - a0))
        return out

    def read_bytes(self, r0: int, r1: int) -> int:
        """Buffer bytes a read of rows ``[r0, r1)`` needs (each part's aligned span)."""
        return sum(n for _, n, _ in self.span(r0, r1))

    def max_read_bytes(self, n_rows: int) -> int:
        """Buffer bytes any read of ``n_rows`` consecutive rows may need (alignment slack of two pages a part)."""
        return sum(align_up(n_rows * p.row_bytes) + 2 * ALIGNMENT for p in self.parts)

    def rows_fitting(self, nbytes: int, multiple: int = 1) -> int:
        """The most rows (a multiple of ``multiple`` when that is >= 1 row) any read of which fits ``nbytes``."""
        n = max(0, (nbytes - 3 * ALIGNMENT * len(self.parts)) // max(1, self.row_bytes))
        while n > 0 and self.max_read_bytes(n) > nbytes:
            n -= 1
        if multiple > 1 and n >= multiple:
            n -= n % multiple
        return min(n, self.rows)


def row_geometry(bundle: Bundle, tensor: str) -> RowGeometry:
    """The :class:`RowGeometry` of 2-D tensor ``tensor`` of ``bundle`` (BundleError when it has none)."""
    rec = bundle.tensors.get(tensor)
    if rec is None or len(rec.get("shape", ())) != 2:
        raise BundleError(f"{bundle.path}: tensor {tensor!r} is not a 2-D weight (row reads need one)")
    rows, width = (int(d) for d in rec["shape"])
    parts = []
    for name, p in rec["parts"].items():
        nb = int(p["nbytes"])
        if nb % rows:
            raise BundleError(f"{bundle.path}: part {name!r} of tensor {tensor!r} ({nb} bytes) is not {rows} rows")
        parts.append(RowPart(name, int(rec["offset"]) + int(p["offset"]), nb // rows, str(p["dtype"])))
    return RowGeometry(tensor, str(rec.get("group")), str(rec["scheme"]), rows, width, int(rec.get("group_size", 0)),
                       tuple(parts))
