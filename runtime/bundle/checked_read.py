"""CheckedFile: the one way edgespool reads weight bytes from storage.

Every read of a weights file — a streaming group's chunks and single tensors (:mod:`edgespool.offload.weight_store`),
the neuron windows' scatter reads (:mod:`edgespool.offload.neuron_ffn`), :meth:`Bundle.read_group
<edgespool.runtime.bundle.reader.Bundle.read_group>`, the cold-read bandwidth probe (:func:`timed_sequential_read`)
and the neuron-window prototype in ``benchmarks/`` — goes through :meth:`CheckedFile.read_into`, which:

* opens the file with ``O_DIRECT`` where the filesystem allows it (a one-page probe read proves it) and otherwise
  reads buffered and drops the pages after each read with ``posix_fadvise(DONTNEED)`` (:attr:`CheckedFile.mode`
  says which); ``direct=True`` makes a filesystem without O_DIRECT an error, ``direct=False`` reads buffered;
* reads exactly into the caller's buffers with ``preadv`` (scatter reads in batches of ``IOV_MAX`` buffers), looping
  over partial reads. O_DIRECT needs the offset and every buffer's address and length to be multiples of the
  device's logical block size (512 bytes on most devices); a read that breaks that rule (the kernel says EINVAL) is
  done buffered instead, with its pages dropped, through a second descriptor opened on first use;
* applies the rate limiter (emulated storage speed, :mod:`edgespool.runtime.bundle.ratelimit`) and the
  fault-injection hook (:func:`fault_from_env`) — here and nowhere else;
* checks that the file on disk is still the one opened, unchanged (same device and inode, same size, same
  modification and status-change times) before and after a read when asked and after every failed read, so a
  removed, replaced, truncated or rewritten-in-place file says so (a rewrite in place keeps inode and size but not
  ``st_ctime``, which no user call can set back; two ``stat`` calls per checked read, 10-13 us each measured
  on the 2-core CI VM under load, next to a group read of 0.5-10 ms). Linux stamps file times from a clock
  ticking every few ms; since 6.13 a write after a ``stat`` always moves them (multigrain timestamps), before
  that a write in the same tick as the last check can go unnoticed here, and then only the CRC check (each
  group's first read) stands;
* raises one error type, :class:`~edgespool.errors.StorageError`, whose message names the file, what was being
  read (``group 'layers.3'``, ``tensor 'layers.0.router'``) and the offset: never wrong bytes;
* never leaks a descriptor: a failed probe closes its descriptor, :meth:`CheckedFile.close` (or the ``with``
  block) closes both, and a close while another thread is inside ``preadv`` waits for that read (up to
  ``wait_s``) or leaves the last reader to close, so a descriptor number is never reused under a running read.
"""
from __future__ import annotations

import errno
import mmap
import os
import threading
import time
from typing import Any, Callable

from ...errors import StorageError
from .constants import ALIGNMENT

MODE_DIRECT = "O_DIRECT"
MODE_BUFFERED = "buffered+fadvise(DONTNEED)"
DIRECT_ALIGN = 512  # O_DIRECT logical block size assumed for the cheap offset pre-check (the kernel has the last word)
try:
    IOV_MAX = int(os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):
    IOV_MAX = 1024
if IOV_MAX <= 0:
    IOV_MAX = 1024

FaultHook = Callable[[str, int], None]
Buffers = Any  # one writable buffer (numpy array, memoryview, mmap, bytearray) or a sequence of them


class ShortRead(Exception):
    """Raised by a fault hook to make a read look truncated (``EDGESPOOL_FAULT_READ=short:...``)."""


def fault_from_env(spec: str | None = None) -> FaultHook | None:
    """Fault injection for tests and drills: ``EDGESPOOL_FAULT_READ=KIND:GROUP[:N]`` makes the N-th read (1-based,
    default 1) of GROUP at its first byte fail. KIND: ``eio`` (an I/O error), ``hang`` (the read never returns),
    ``short`` (the file looks truncated). The hook is called as ``hook(group, offset_in_group)`` by
    :meth:`CheckedFile.read_into` for reads that name their group."""
    spec = spec if spec is not None else os.environ.get("EDGESPOOL_FAULT_READ")
    if not spec:
        return None
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("eio", "hang", "short") or (
            len(parts) == 3 and not parts[2].isdigit()):
        raise StorageError(f"EDGESPOOL_FAULT_READ={spec!r}: expected KIND:GROUP[:N] with KIND eio|hang|short")
    kind, group, nth = parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 1
    seen = {"n": 0}
    lock = threading.Lock()

    def hook(g: str, offset: int) -> None:
        if g != group or offset != 0:
            return
        with lock:
            seen["n"] += 1
            hit = seen["n"] == nth
        if not hit:
            return
        if kind == "eio":
            raise OSError(errno.EIO, "injected I/O error")
        if kind == "hang":
            threading.Event().wait()
        raise ShortRead()

    return hook


def _limiter_wait(limiter: Any, nbytes: int) -> None:
    for name in ("acquire", "consume", "wait"):
        fn = getattr(limiter, name, None)
        if fn is not None:
            fn(nbytes)
            return
    raise TypeError(f"rate limiter {limiter!r} has no acquire(nbytes) method")


def _views(bufs: Buffers) -> list[memoryview]:
    """Flat byte views of one buffer or a sequence of buffers (numpy arrays, memoryviews, mmaps, bytearrays)."""
    if isinstance(bufs, (list, tuple)):
        return [memoryview(b).cast("B") for b in bufs]
    return [memoryview(bufs).cast("B")]


def _advance(views: list[memoryview], got: int) -> list[memoryview]:
    """The part of ``views`` still to fill after ``got`` bytes landed in them."""
    i = 0
    while i < len(views) and got >= len(views[i]):
        got -= len(views[i])
        i += 1
    rest = views[i:]
    if rest and got:
        rest[0] = rest[0][got:]
    return rest


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    """What an in-place rewrite changes: size, modification time, status-change time (ns)."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


class CheckedFile:
    """A weights file opened for checked reads (see the module docstring).

    ``direct``: None (O_DIRECT where the filesystem allows it), True (require it) or False (buffered + DONTNEED).
    ``limiter``: an object with ``acquire(nbytes)`` called before each read. ``fault``: a hook ``(group,
    offset_in_group)`` called before each read that names its group. Thread-safe: reads may run concurrently."""

    def __init__(self, path: str | os.PathLike, direct: bool | None = None, limiter: Any = None,
                 fault: FaultHook | None = None) -> None:
        self.path = os.fspath(path)
        self.limiter = limiter
        self.fault = fault
        self._fd = -1
        self._bfd = -1  # buffered descriptor for reads O_DIRECT refuses (opened on first use)
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False
        self._fd, self.direct = self._open(direct)
        try:
            st = os.fstat(self._fd)
        except OSError as e:  # pragma: no cover - fstat of an open descriptor does not fail in practice
            os.close(self._fd)
            raise StorageError(f"{self.path}: cannot stat weights file ({e.strerror})") from None
        self._ino = (st.st_dev, st.st_ino)
        self._stamp = _stamp(st)
        self.mode = MODE_DIRECT if self.direct else MODE_BUFFERED

    # -- opening / closing ----------------------------------------------------------------------------------------
    def _open(self, direct: bool | None) -> tuple[int, bool]:
        if direct is not False and hasattr(os, "O_DIRECT"):
            fd = -1
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
                probe = mmap.mmap(-1, ALIGNMENT)  # page-aligned
                try:
                    os.preadv(fd, [probe], 0)
                finally:
                    probe.close()
                return fd, True
            except OSError as e:
                if fd >= 0:
                    os.close(fd)
                if e.errno in (errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENOTDIR):
                    raise StorageError(f"{self.path}: cannot open weights file ({e.strerror})") from None
                if direct is True:
                    raise StorageError(f"{self.path}: O_DIRECT reads are not possible here ({e.strerror})") from None
        elif direct is True:
            raise StorageError(f"{self.path}: O_DIRECT reads are not possible here (no O_DIRECT on this system)")
        try:
            return os.open(self.path, os.O_RDONLY), False
        except OSError as e:
            raise StorageError(f"{self.path}: cannot open weights file ({e.strerror})") from None

    def _buffered_fd(self) -> int:
        """The buffered descriptor (the file itself in buffered mode); opened on first use in O_DIRECT mode, and
        refused when the path now names another file."""
        if not self.direct:
            return self._fd
        with self._cond:
            if self._bfd < 0:
                fd = os.open(self.path, os.O_RDONLY)
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != self._ino:
                    os.close(fd)
                    raise StorageError(f"{self.path}: weights file was replaced while running; restart to load "
                                       "the new bundle")
                self._bfd = fd
            return self._bfd

    def _release(self) -> None:
        for name in ("_fd", "_bfd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                try:
                    os.close(fd)
                except OSError:
                    pass

    def close(self, wait_s: float = 1.0) -> None:
        """Close the file. A read running in another thread is waited for (up to ``wait_s``); if it is still inside
        the kernel then, the last such read closes the descriptors when it returns. Reads after close raise."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            if self._active:
                self._cond.wait_for(lambda: self._active == 0, timeout=wait_s)
            if self._active == 0:
                self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "CheckedFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a safety net: an unreferenced CheckedFile has no reader left
        try:
            if not self._closed:
                self._closed = True
                self._release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- the file on disk -----------------------------------------------------------------------------------------
    def size(self) -> int:
        """Size of the opened file (bytes)."""
        return os.fstat(self._fd).st_size

    def drop_cache(self) -> None:
        """Drop the file's pages from the page cache (before a cold-read measurement)."""
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def check(self, what: str, offset: int, end: int) -> None:
        """StorageError naming ``what`` and ``offset`` when the path no longer names the opened file (removed or
        replaced) or the file is now shorter than ``end``."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise StorageError(f"{self.path}: weights file was removed while running (reading {what} at offset "
                               f"{offset}); restore the bundle and restart") from None
        except OSError as e:
            raise StorageError(f"{self.path}: weights file cannot be checked while reading {what} at offset "
                               f"{offset} ({e.strerror})") from None
        if (st.st_dev, st.st_ino) != self._ino:
            raise StorageError(f"{self.path}: weights file was replaced while running (reading {what} at offset "
                               f"{offset}); restart to load the new bundle")
        if st.st_size < end:
            raise StorageError(f"{self.path}: weights file truncated to {st.st_size} bytes while running ({what} at "
                               f"offset {offset} needs bytes up to {end}); re-export or restore the bundle")
        if _stamp(st) != self._stamp:
            raise StorageError(f"{self.path}: weights file was modified while running (reading {what} at offset "
                               f"{offset}: its size or modification time changed since it was opened); restart to "
                               "load the new bytes, or restore the bundle")

    # -- reading --------------------------------------------------------------------------------------------------
    def read_into(self, offset: int, bufs: Buffers, what: str = "bytes", *, group: str | None = None,
                  base: int = 0, need: int | None = None, check: bool = True) -> int:
        """Fill ``bufs`` (one buffer or a list, filled in order) with the file's bytes from ``offset``; returns the
        bytes read. ``what`` names the read in errors (``"group 'layers.3'"``). ``group``/``base``: the group the
        bytes belong to and its file offset, for the fault hook (called as ``fault(group, offset - base)``).
        ``need``: bytes that must be read (default all; fewer only where the buffers run past the end of the file,
        e.g. a group's 4 KiB-aligned tail). ``check``: check the file on disk before reading (:meth:`check`).
        Raises StorageError for an I/O error, a short read, a removed/replaced/truncated file or a closed file."""
        views = _views(bufs)
        n = sum(len(v) for v in views)
        need = n if need is None else min(need, n)
        if self._closed:
            raise StorageError(f"{self.path}: weights file closed before reading {what} at offset {offset}")
        if check:
            self.check(what, offset, offset + need)
        if self.limiter is not None:
            _limiter_wait(self.limiter, n)
        try:
            if self.fault is not None and group is not None:
                self.fault(group, offset - base)
            got = self._preadv(views, offset, need) if n else 0
        except ShortRead:
            got = 0
        except OSError as e:
            self.check(what, offset, offset + need)  # a removed or replaced file says so first
            raise StorageError(f"{self.path}: read error in {what} at offset {offset} ({e.strerror or e})") from None
        if got < need:
            self.check(what, offset, offset + need)
            raise StorageError(f"{self.path}: truncated while reading {what} (short read at offset {offset}: {got} "
                               f"of {need} bytes); re-export or restore the bundle")
        if check:
            self.check(what, offset, offset + need)  # rewritten while the bytes were read: they may be mixed
        return got

    def _preadv(self, views: list[memoryview], offset: int, need: int) -> int:
        """Read into ``views`` from ``offset`` until they are full, or the file ends, or a partial read has brought
        at least ``need`` bytes (the rest lies past the end of the file); returns the bytes read."""
        with self._cond:
            if self._closed:
                raise StorageError(f"{self.path}: weights file closed during a read at offset {offset}")
            self._active += 1
        try:
            buffered = not self.direct or offset % DIRECT_ALIGN != 0
            fd = self._buffered_fd() if buffered else self._fd
            pos = offset
            while views:
                try:
                    got = os.preadv(fd, views[:IOV_MAX], pos)
                except OSError as e:
                    if e.errno != errno.EINVAL or buffered:
                        raise
                    buffered = True  # O_DIRECT refused this buffer/offset/length: read the rest buffered
                    fd = self._buffered_fd()
                    continue
                if got <= 0:
                    break  # end of file
                pos += got
                views = _advance(views, got)
                if views and pos - offset >= need:
                    break  # the buffers run past the end of the file: everything asked for is there
            if buffered and pos > offset:
                os.posix_fadvise(fd, offset, pos - offset, os.POSIX_FADV_DONTNEED)
            return pos - offset
        finally:
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    if self._closed:
                        self._release()
                    self._cond.notify_all()


def timed_sequential_read(path: str | os.PathLike, *, chunk: int, max_s: float, max_bytes: int | None = None,
                          wrap: bool = False, direct: bool | None = None, limiter: Any = None,
                          ) -> tuple[list[tuple[float, int]], str]:
    """The cold-read bandwidth probe: drop ``path`` from the page cache, then read it sequentially in
    ``chunk``-byte checked reads (O_DIRECT per ``direct``, through ``limiter``) for at most ``max_s`` seconds and
    ``max_bytes`` bytes (``wrap``: start over at the end of the file, reading whole chunks only, until the time is
    up). Returns the reads as ``(seconds since the start, bytes)`` and the I/O mode."""
    buf = mmap.mmap(-1, chunk)
    marks: list[tuple[float, int]] = []
    try:
        with CheckedFile(path, direct, limiter) as f:
            f.drop_cache()
            size = f.size()
            end = size if max_bytes is None else min(size, max_bytes)
            if wrap:
                end = end // chunk * chunk
            off, total = 0, 0
            t0 = time.perf_counter()
            while end > 0 and time.perf_counter() - t0 < max_s and (wrap or total < end):
                got = f.read_into(off, buf, "the bandwidth probe", need=min(chunk, end - off), check=False)
                marks.append((time.perf_counter() - t0, got))
                total += got
                off = (off + got) % end if wrap else off + got
            return marks, f.mode
    finally:
        buf.close()
