"""Page-cache residency (``mincore``) and eviction (``posix_fadvise(DONTNEED)``) of files.

Reads served from the page cache never reach the block device, so a storage throttle does not slow them down:
benchmarks must evict first (or read with O_DIRECT). :func:`is_cached` tells how much of a file is resident.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

import numpy as np

from ...errors import OptionError

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_MAP_FAILED = ctypes.c_void_p(-1).value
_PAGE = mmap.PAGESIZE


def _files(path: str | os.PathLike, limit: int = 100_000) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        out = [f for f in sorted(p.rglob("*")) if f.is_file() and not f.is_symlink()]
        return out[:limit]
    if p.is_file():
        return [p]
    raise OptionError(f"{path}: no such file or directory")


def resident_bytes(path: str | os.PathLike) -> tuple[int, int]:
    """(bytes of ``path`` resident in the page cache, file size in bytes), counted in whole pages via mincore."""
    size = os.path.getsize(path)
    if size == 0:
        return 0, 0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            raise OSError(err, f"mmap {path}: {os.strerror(err)}")
        try:
            npages = (size + _PAGE - 1) // _PAGE
            vec = (ctypes.c_ubyte * npages)()
            if _libc.mincore(addr, size, vec) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mincore {path}: {os.strerror(err)}")
            resident = int((np.frombuffer(vec, dtype=np.uint8) & 1).sum())
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)
    return min(resident * _PAGE, size), size


def cached_fraction(path: str | os.PathLike) -> float:
    """Fraction (0..1) of the bytes of a file, or of all files under a directory, resident in the page cache."""
    total = resident = 0
    for f in _files(path):
        r, s = resident_bytes(f)
        resident += r
        total += s
    return resident / total if total else 0.0


def is_cached(path: str | os.PathLike, threshold: float = 0.5) -> bool:
    """True when more than ``threshold`` of ``path`` (file or directory) is in the page cache, i.e. reading it
    measures memory, not storage, and a read throttle will not apply."""
    return cached_fraction(path) > threshold


def evict(path: str | os.PathLike) -> int:
    """Drop a file (or every file under a directory) from the page cache: flush dirty pages first (DONTNEED skips
    them), then ``posix_fadvise(POSIX_FADV_DONTNEED)``. Returns the number of bytes covered."""
    total = 0
    for f in _files(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total
