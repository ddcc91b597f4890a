"""A small, fast and bounded GGUF (versions 2 and 3, little-endian) reader: a drop-in for the parts of
``gguf.GGUFReader`` edgespool uses.

``gguf.GGUFReader`` builds a numpy memmap object per field part (a vocabulary of 151,936 strings is ~450,000 of
them: 6 s and 500 MB to open a 0.5B model) and trusts the header's counts (an array count of 2**63 loops without
bound; a tensor offset of 2**64-1 wraps in uint64). This reader parses the header with ``struct.unpack_from`` over
one memory map, makes O(1) objects per field (a string array is one list of ``str`` built in one pass, a numeric
array one read-only numpy view) and checks every count, length and offset against the file size, with Python
ints, before it allocates or reads anything. Every violation is a one-line :class:`ModelFormatError` naming the
file, the metadata key or tensor, and what was expected.

API (what edgespool reads of a ``GGUFReader``)::

    r = GGUFReaderLite(path)
    r.fields[key].contents()   # str, int, float, bool, or a list of them (a fresh list), like gguf-py's
    r.fields[key].types        # [GGUFValueType], [ARRAY, element type] for arrays
    r.tensors                  # list in file order; t.name, t.tensor_type (GGMLQuantizationType),
                               # t.shape (uint64 ggml dims, innermost first), t.n_elements, t.n_bytes,
                               # t.data_offset (absolute), t.data (read-only memmap view shaped like gguf-py's:
                               # float16/32/64 and int arrays for F16/F32/F64/I*, uint8 [..., row_bytes] otherwise)

Fields ``GGUF.version``, ``GGUF.tensor_count`` and ``GGUF.kv_count`` are present as in gguf-py, and so are its
``field.parts``/``field.data`` internals (made lazily: ``bytes(f.parts[f.data[i]])`` is element ``i``'s raw bytes;
``f.contents(i)`` is the cheaper way). Not provided: writing (mode ``r+``), byte-swapped (big-endian) files, and
nested arrays (llama.cpp refuses those too). Strings must be valid UTF-8 (gguf-py decodes strictly as well).
Checks beyond gguf-py's: n_dims <= 4, every dim > 0 and their product <= 2**63-1 (llama.cpp's limits), rows a
whole number of blocks, tensor offsets multiples of ``general.alignment`` and tensor data inside the file.
"""
from __future__ import annotations

import mmap

import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import ModelFormatError, UnsupportedModelError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
INT64_MAX = 2**63 - 1

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor_count, kv_count

# scalar value type -> (struct format, numpy dtype, size in bytes)
_SCALARS: dict[int, tuple[struct.Struct, str, int]] = {
    GGUFValueType.UINT8: (struct.Struct("<B"), "<u1", 1),
    GGUFValueType.INT8: (struct.Struct("<b"), "<i1", 1),
    GGUFValueType.UINT16: (struct.Struct("<H"), "<u2", 2),
    GGUFValueType.INT16: (struct.Struct("<h"), "<i2", 2),
    GGUFValueType.UINT32: (struct.Struct("<I"), "<u4", 4),
    GGUFValueType.INT32: (struct.Struct("<i"), "<i4", 4),
    GGUFValueType.FLOAT32: (struct.Struct("<f"), "<f4", 4),
    GGUFValueType.BOOL: (struct.Struct("<?"), "?", 1),
    GGUFValueType.UINT64: (struct.Struct("<Q"), "<u8", 8),
    GGUFValueType.INT64: (struct.Struct("<q"), "<i8", 8),
    GGUFValueType.FLOAT64: (struct.Struct("<d"), "<f8", 8),
}
_STRING, _ARRAY = int(GGUFValueType.STRING), int(GGUFValueType.ARRAY)
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset

# ggml types gguf-py views as typed arrays (every other type: uint8 rows of blocks)
_ELEMENT_DTYPES: dict[GGMLQuantizationType, str] = {
    GGMLQuantizationType.F32: "<f4", GGMLQuantizationType.F16: "<f2", GGMLQuantizationType.F64: "<f8",
    GGMLQuantizationType.I8: "<i1", GGMLQuantizationType.I16: "<i2", GGMLQuantizationType.I32: "<i4",
    GGMLQuantizationType.I64: "<i8",
}


class GGUFField:
    """One metadata key/value: ``contents()`` like gguf-py's ``ReaderField.contents``; ``parts``/``data`` are
    gguf-py's layout made on demand (``bytes(f.parts[f.data[i]])``: the raw bytes of element ``i``)."""

    __slots__ = ("name", "offset", "types", "value", "_header")

    def __init__(self, name: str, offset: int, types: list[GGUFValueType], value: Any, header: bool = False) -> None:
        self.name = name
        self.offset = offset  # of the key/value record in the file
        self.types = types
        self.value = value  # Python scalar / str; list[str] or read-only numpy array for arrays
        self._header = header  # GGUF.version / GGUF.tensor_count / GGUF.kv_count: no key parts

    def contents(self, index_or_slice: int | slice = slice(None)) -> Any:
        v = self.value
        if isinstance(v, list):
            return v[index_or_slice]  # a slice is a fresh list
        if isinstance(v, np.ndarray):
            return v[index_or_slice].tolist()
        return v

    @property
    def data(self) -> range:
        """Indices into :attr:`parts` of the values, one per array element (gguf-py's ``ReaderField.data``)."""
        if self._header:
            return range(1)
        if self.types[0] == GGUFValueType.ARRAY:
            n = len(self.value)
            return range(6, 6 + 2 * n, 2) if self.types[1] == GGUFValueType.STRING else range(5, 5 + n)
        return range(4, 5) if self.types[0] == GGUFValueType.STRING else range(3, 4)

    @property
    def parts(self) -> _FieldParts:
        """gguf-py's ``ReaderField.parts`` (key length, key bytes, value type, [element type, count,] then each
        value, strings as length + bytes), each a small numpy array made when indexed."""
        return _FieldParts(self)

    def __repr__(self) -> str:
        return f"GGUFField({self.name!r}, {[t.name for t in self.types]})"


def _str_parts(s: str) -> tuple[np.ndarray, np.ndarray]:
    raw = s.encode("utf-8")  # the file's bytes: they were decoded strictly
    return np.array([len(raw)], dtype="<u8"), np.frombuffer(raw, dtype=np.uint8)


class _FieldParts(Sequence):
    __slots__ = ("_f",)

    def __init__(self, f: GGUFField) -> None:
        self._f = f

    def __len__(self) -> int:
        f = self._f
        if f._header:
            return 1
        if f.types[0] == GGUFValueType.ARRAY:
            n = len(f.value)
            return 5 + (2 * n if f.types[1] == GGUFValueType.STRING else n)
        return 5 if f.types[0] == GGUFValueType.STRING else 4

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        i = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= i < n:
            raise IndexError("field part index out of range")
        f, t = self._f, self._f.types
        if f._header:
            return np.array([f.value], dtype=_SCALARS[t[0]][1])
        if i < 3:
            key = f.name.encode("utf-8")
            return (np.array([len(key)], dtype="<u8"), np.frombuffer(key, dtype=np.uint8),
                    np.array([int(t[0])], dtype="<u4"))[i]
        if t[0] == GGUFValueType.STRING:
            return _str_parts(f.value)[i - 3]
        if t[0] != GGUFValueType.ARRAY:
            return np.array([f.value], dtype=_SCALARS[t[0]][1])
        if i == 3:
            return np.array([int(t[1])], dtype="<u4")
        if i == 4:
            return np.array([len(f.value)], dtype="<u8")
        if t[1] == GGUFValueType.STRING:
            return _str_parts(f.value[(i - 5) // 2])[(i - 5) % 2]
        return f.value[i - 5:i - 4]


class GGUFTensor:
    """One tensor's header; ``data`` is a read-only view into the file's memory map (made when first used)."""

    __slots__ = ("name", "tensor_type", "shape", "n_elements", "n_bytes", "data_offset", "_view", "_data")

    def __init__(self, name: str, tensor_type: GGMLQuantizationType, dims: tuple[int, ...], n_elements: int,
                 n_bytes: int, data_offset: int, view: tuple[np.memmap, str, tuple[int, ...]]) -> None:
        self.name = name
        self.tensor_type = tensor_type
        self.shape = np.array(dims, dtype=np.uint64)  # ggml order (innermost first), like gguf-py
        self.n_elements = n_elements
        self.n_bytes = n_bytes
        self.data_offset = data_offset  # absolute offset in the file
        self._view = view
        self._data: np.ndarray | None = None

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            mem, dtype, shape = self._view
            self._data = mem[self.data_offset:self.data_offset + self.n_bytes].view(dtype).reshape(shape)
        return self._data

    def __repr__(self) -> str:
        return f"GGUFTensor({self.name!r}, {self.tensor_type.name}, {self.shape.tolist()})"


class GGUFReaderLite:
    """A GGUF file opened read-only and memory-mapped (see the module docstring)."""

    def drop_pages(self, offset: int, nbytes: int) -> None:
        """Unmap this range's pages from the process (``MADV_DONTNEED``; the page cache keeps them): an export
        that walks the file tensor by tensor then holds one tensor's pages, not the whole file's."""
        mm = getattr(self._mem, "_mmap", None)
        if mm is None or nbytes <= 0 or not hasattr(mm, "madvise"):
            return
        page = mmap.PAGESIZE
        start = offset // page * page
        end = min(len(self._mem), -(-(offset + nbytes) // page) * page)
        try:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):
            pass

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.fields: dict[str, GGUFField] = {}
        self.tensors: list[GGUFTensor] = []
        self.alignment = DEFAULT_ALIGNMENT
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(_HEADER.size)
        if head[:4] != GGUF_MAGIC:
            self._fail(f"not a GGUF file (magic {head[:4]!r}, expected {GGUF_MAGIC!r})")
        if len(head) >= 8:
            version = _U32.unpack_from(head, 4)[0]
            if version & 0xFFFF == 0 and version:
                self._fail(f"GGUF version field {version:#x} looks byte-swapped: big-endian GGUF files are not "
                           "supported (expected a little-endian file)")
            if version not in SUPPORTED_VERSIONS:
                self._fail(f"GGUF version {version} is not supported (expected 2 or 3)")
        if len(head) < _HEADER.size:
            self._fail(f"truncated GGUF file: the header needs {_HEADER.size} bytes, the file has {size}")
        _, version, n_tensors, n_kv = _HEADER.unpack(head)
        self.version = version
        self._size = size
        left = size - _HEADER.size
        if n_kv * _MIN_KV_BYTES > left:
            self._fail(f"truncated or corrupt GGUF file: the header claims {n_kv} metadata keys (at least "
                       f"{n_kv * _MIN_KV_BYTES} bytes), only {left} bytes follow")
        if n_tensors * _MIN_TENSOR_INFO_BYTES > left:
            self._fail(f"truncated or corrupt GGUF file: the header claims {n_tensors} tensors (at least "
                       f"{n_tensors * _MIN_TENSOR_INFO_BYTES} bytes of tensor info), only {left} bytes follow")
        self._mem = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._buf = memoryview(self._mem)
        try:
            self._add(GGUFField("GGUF.version", 4, [GGUFValueType.UINT32], version, header=True))
            self._add(GGUFField("GGUF.tensor_count", 8, [GGUFValueType.UINT64], n_tensors, header=True))
            self._add(GGUFField("GGUF.kv_count", 16, [GGUFValueType.UINT64], n_kv, header=True))
            off = _HEADER.size
            for _ in range(n_kv):
                off = self._read_kv(off)
            infos = []
            for i in range(n_tensors):
                info, off = self._read_tensor_info(off, i)
                infos.append(info)
            self._set_alignment()
            self.data_offset = -(-off // self.alignment) * self.alignment
            self._build_tensors(infos)
        finally:
            self._buf = None  # type: ignore[assignment]  # parsing only; tensor views use self._mem

    # -- errors -------------------------------------------------------------------------------------------------
    def _fail(self, msg: str, cls: type[Exception] = ModelFormatError) -> None:
        raise cls(f"{self.path}: {msg}") from None

    def _truncated(self, what: str, need: int, off: int) -> None:
        self._fail(f"truncated or corrupt GGUF file: {what} needs {need} bytes at offset {off}, only "
                   f"{max(self._size - off, 0)} bytes follow")

    # -- primitives ---------------------------------------------------------------------------------------------
    def _u32(self, off: int, what: str) -> int:
        if off + 4 > self._size:
            self._truncated(what, 4, off)
        return _U32.unpack_from(self._buf, off)[0]

    def _u64(self, off: int, what: str) -> int:
        if off + 8 > self._size:
            self._truncated(what, 8, off)
        return _U64.unpack_from(self._buf, off)[0]

    def _str(self, off: int, what: str) -> tuple[str, int]:
        n = self._u64(off, f"the length of {what}")
        off += 8
        if n > self._size - off:
            self._fail(f"truncated or corrupt GGUF file: {what} claims a string of {n} bytes at offset {off}, only "
                       f"{self._size - off} bytes follow")
        try:
            return str(self._buf[off:off + n], "utf-8"), off + n
        except UnicodeDecodeError as e:
            self._fail(f"corrupt GGUF file: {what} is not valid UTF-8 ({e.reason} at byte {e.start})")
            raise  # unreachable

    def _add(self, field: GGUFField) -> None:
        if field.name in self.fields:
            self._fail(f"corrupt GGUF file: metadata key {field.name!r} appears twice (at offsets "
                       f"{self.fields[field.name].offset} and {field.offset})")
        self.fields[field.name] = field

    # -- metadata -----------------------------------------------------------------------------------------------
    def _read_kv(self, start: int) -> int:
        key, off = self._str(start, f"the metadata key at offset {start}")
        what = f"metadata key {key!r}"
        vtype = self._u32(off, f"the type of {what}")
        off += 4
        if vtype == _ARRAY:
            etype = self._u32(off, f"the element type of {what}")
            count = self._u64(off + 4, f"the length of {what}")
            off += 12
            if etype == _STRING:
                value, off = self._str_array(off, count, what)
            elif etype in _SCALARS:
                _, dtype, size = _SCALARS[etype]
                if count * size > self._size - off:
                    self._fail(f"truncated or corrupt GGUF file: {what} claims {count} {GGUFValueType(etype).name} "
                               f"values ({count * size} bytes) at offset {off}, only {self._size - off} bytes "
                               "follow")
                value = np.frombuffer(self._mem, dtype=dtype, count=count, offset=off)
                off += count * size
            elif etype == _ARRAY:
                self._fail(f"corrupt GGUF file: {what} is an array of arrays, which GGUF readers (llama.cpp) do "
                           "not support")
            else:
                self._fail(f"corrupt GGUF file: {what} has array element type {etype}, expected 0..12")
            self._add(GGUFField(key, start, [GGUFValueType.ARRAY, GGUFValueType(etype)], value))
            return off
        if vtype == _STRING:
            value, off = self._str(off, what)
        elif vtype in _SCALARS:
            st, _, size = _SCALARS[vtype]
            if off + size > self._size:
                self._truncated(f"the value of {what}", size, off)
            value = st.unpack_from(self._buf, off)[0]
            off += size
        else:
            self._fail(f"corrupt GGUF file: {what} has value type {vtype}, expected 0..12")
        self._add(GGUFField(key, start, [GGUFValueType(vtype)], value))
        return off

    def _str_array(self, off: int, count: int, what: str) -> tuple[list[str], int]:
        size = self._size
        if count * 8 > size - off:
            self._fail(f"truncated or corrupt GGUF file: {what} claims {count} strings (at least {count * 8} "
                       f"bytes) at offset {off}, only {size - off} bytes follow")
        buf, unpack = self._buf, _U64.unpack_from
        out: list[str] = [""] * count  # count <= remaining bytes / 8
        i = 0
        try:
            for i in range(count):
                if off + 8 > size:
                    self._truncated(f"the length of string {i} of {what}", 8, off)
                n = unpack(buf, off)[0]
                off += 8
                if n > size - off:
                    self._fail(f"truncated or corrupt GGUF file: string {i} of {what} claims {n} bytes at offset "
                               f"{off}, only {size - off} bytes follow")
                out[i] = str(buf[off:off + n], "utf-8")
                off += n
        except UnicodeDecodeError as e:
            self._fail(f"corrupt GGUF file: string {i} of {what} is not valid UTF-8 ({e.reason} at byte {e.start})")
        return out, off

    def _set_alignment(self) -> None:
        f = self.fields.get("general.alignment")
        if f is None:
            return
        if f.types != [GGUFValueType.UINT32]:
            self._fail(f"corrupt GGUF file: metadata key 'general.alignment' has type "
                       f"{'/'.join(t.name for t in f.types)}, expected UINT32")
        a = f.value
        if a == 0 or a & (a - 1):
            self._fail(f"corrupt GGUF file: metadata key 'general.alignment' is {a}, expected a power of two")
        self.alignment = a

    # -- tensors ------------------------------------------------------------------------------------------------
    def _read_tensor_info(self, start: int, i: int) -> tuple[tuple[str, tuple[int, ...], int, int], int]:
        name, off = self._str(start, f"the name of tensor {i}")
        what = f"tensor {name!r}"
        n_dims = self._u32(off, f"the number of dimensions of {what}")
        off += 4
        if not 1 <= n_dims <= MAX_DIMS:
            self._fail(f"corrupt GGUF file: {what} has {n_dims} dimensions, expected 1..{MAX_DIMS}")
        if off + 8 * n_dims + 12 > self._size:
            self._truncated(f"the header of {what}", 8 * n_dims + 12, off)
        dims = struct.unpack_from(f"<{n_dims}Q", self._buf, off)
        off += 8 * n_dims
        ttype = _U32.unpack_from(self._buf, off)[0]
        rel = _U64.unpack_from(self._buf, off + 4)[0]
        return (name, dims, ttype, rel), off + 12

    def _build_tensors(self, infos: list[tuple[str, tuple[int, ...], int, int]]) -> None:
        seen: set[str] = set()
        for name, dims, ttype, rel in infos:
            what = f"tensor {name!r}"
            if name in seen:
                self._fail(f"corrupt GGUF file: {what} appears twice")
            seen.add(name)
            try:
                qtype = GGMLQuantizationType(ttype)
                block, type_size = GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                self._fail(f"{what} has ggml type {ttype}, which gguf-py does not know (an unknown or newer "
                           "llama.cpp type)", UnsupportedModelError)
            n = 1
            for d in dims:
                if d == 0:
                    self._fail(f"corrupt GGUF file: {what} has dimensions {list(dims)}, expected every one > 0")
                n *= d
            if n > INT64_MAX:
                self._fail(f"corrupt GGUF file: {what} has dimensions {list(dims)}, whose product {n} overflows "
                           f"int64 (expected at most {INT64_MAX})")
            if dims[0] % block:
                self._fail(f"corrupt GGUF file: {what} ({qtype.name}) has rows of {dims[0]} values, expected a "
                           f"multiple of its block size {block}")
            n_bytes = n // block * type_size
            begin = self.data_offset + rel
            if begin + n_bytes > self._size:
                self._fail(f"truncated or corrupt GGUF file: {what} needs bytes {begin}..{begin + n_bytes} (data "
                           f"offset {rel} + {n_bytes} bytes), the file has {self._size}")
            if rel % self.alignment:
                self._fail(f"corrupt GGUF file: {what} has data offset {rel}, expected a multiple of the "
                           f"alignment {self.alignment}")
            shape = tuple(reversed(dims))
            dtype = _ELEMENT_DTYPES.get(qtype)
            if dtype is None:
                dtype = "<u1"
                shape = (*shape[:-1], shape[-1] // block * type_size)
            self.tensors.append(GGUFTensor(name, qtype, dims, n, n_bytes, begin, (self._mem, dtype, shape)))

    # gguf-py's accessors
    def get_field(self, key: str) -> GGUFField | None:
        return self.fields.get(key)

    def get_tensor(self, idx: int) -> GGUFTensor:
        return self.tensors[idx]
