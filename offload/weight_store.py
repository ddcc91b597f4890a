"""WeightStore: explicit, large, aligned reads of whole streaming groups on background I/O threads.

Every group of a bundle is one contiguous, 4 KiB-aligned byte range (see :mod:`edgespool.runtime.bundle.constants`),
so fetching a layer or an expert is a few large reads (``chunk_bytes`` each, default 4 MiB) straight into a
page-aligned pool buffer. Every read goes through the one checked-read primitive,
:class:`edgespool.runtime.bundle.checked_read.CheckedFile`: ``O_DIRECT`` where the filesystem allows it, so reads
bypass the page cache and a cgroup limit that counts page cache sees only the pool; where it does not (some
FUSE/overlay filesystems) buffered reads whose pages are dropped with ``posix_fadvise(DONTNEED)`` —
:attr:`WeightStore.mode` says which.

``preadv`` releases the GIL, so reads overlap with numpy compute. The I/O threads are daemon threads: a read stuck
in the kernel cannot hang interpreter exit, and every wait has a timeout. Faults never produce wrong bytes: a read
error, a short read (truncated file) or a removed/replaced weights file raises :class:`StorageError` naming the
file and the group; a CRC mismatch raises :class:`BundleError` naming the tensor (``verify="first"`` checks each
group's first read, ``True``/``"always"`` every read; CRC32 runs on the I/O thread and releases the GIL).

Bandwidth emulation: when a rate limiter is given (or ``EDGESPOOL_IO_BANDWIDTH`` is set), each chunk waits for
its bytes first (see :mod:`edgespool.runtime.bundle.ratelimit`); fault drills (``EDGESPOOL_FAULT_READ``,
:func:`~edgespool.runtime.bundle.checked_read.fault_from_env`) hook into the same primitive.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time
import zlib
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import BundleError, StorageError
from ..kernels.quant import QTensor
from ..runtime.bundle.checked_read import CheckedFile, FaultHook, fault_from_env
from ..runtime.bundle.constants import ALIGNMENT, align_up
from ..runtime.bundle.ratelimit import from_env as limiter_from_env
from ..runtime.bundle.reader import Bundle
from ..runtime.bundle.schemes import get_scheme
from ..schedulers.row_geometry import RowGeometry

MiB = 1 << 20
DEFAULT_CHUNK = 4 * MiB
DEFAULT_TIMEOUT_S = float(os.environ.get("EDGESPOOL_READ_TIMEOUT", "120"))

__all__ = ["DEFAULT_CHUNK", "DEFAULT_TIMEOUT_S", "FaultHook", "GroupRead", "ReadRecord", "WeightStore",
           "fault_from_env"]


@dataclass(frozen=True)
class ReadRecord:
    """One finished group read: wall-clock start/end (``time.perf_counter``), bytes, group name."""

    group: str
    t0: float
    t1: float
    nbytes: int


class _IOThreads:
    """A few daemon threads draining a priority queue of jobs (lowest priority value first, FIFO among equals).
    Daemon threads: a read stuck in the kernel cannot block interpreter exit."""

    def __init__(self, n: int) -> None:
        self._q: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._threads = [threading.Thread(target=self._run, name=f"edgespool-io-{i}", daemon=True)
                         for i in range(max(1, n))]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while True:
            _, _, job = self._q.get()
            if job is None:
                return
            job()

    def put(self, priority: float, job: Callable[[], None]) -> None:
        self._q.put((priority, next(self._seq), job))

    def shutdown(self) -> list[Callable[[], None]]:
        """Stop the threads after the jobs now running; returns the jobs that never started."""
        dropped = []
        while True:
            try:
                _, _, job = self._q.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                dropped.append(job)
        for _ in self._threads:
            self._q.put((float("-inf"), next(self._seq), None))
        return dropped


@dataclass
class GroupRead:
    """The result of a finished group read: its tensors (views into the destination buffer) and timing."""

    tensors: dict[str, QTensor]
    record: ReadRecord


def _settle(fut: Future, result: Any = None, exc: BaseException | None = None) -> None:
    """Complete ``fut`` unless :meth:`WeightStore.close` already failed it."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except InvalidStateError:
        pass


class _PendingGroup:
    """Chunk bookkeeping of one group read: the future completes only when every chunk has finished (so a failed
    read never leaves a chunk still writing into a buffer that is then reused)."""

    def __init__(self, group: str, dest: np.ndarray, n_chunks: int) -> None:
        self.group = group
        self.dest = dest
        self.left = n_chunks
        self.error: BaseException | None = None
        self.t0 = float("inf")
        self.t1 = 0.0
        self.lock = threading.Lock()
        self.future: Future = Future()
        self.future.set_running_or_notify_cancel()

    def run_chunk(self, read: Callable[[], None]) -> bool:
        """Run one chunk's ``read`` (skipped once a sibling chunk failed), keep its first error and the time span;
        True when this was the last chunk to finish."""
        t0 = time.perf_counter()
        err: BaseException | None = None
        try:
            if self.error is None:
                read()
        except BaseException as e:  # noqa: BLE001 - the StorageError of the read, or a bug: delivered to the waiter
            err = e
        t1 = time.perf_counter()
        with self.lock:
            if err is not None and self.error is None:
                self.error = err
            self.t0, self.t1 = min(self.t0, t0), max(self.t1, t1)
            self.left -= 1
            return self.left == 0


class WeightStore:
    """Reads whole groups of ``bundle``'s weights file into caller-provided, page-aligned buffers."""

    def __init__(self, bundle: Bundle, *, io_threads: int = 2, direct: bool | None = None,
                 verify: bool | str = False,
                 rate_limiter: Any = None, read_timeout_s: float = DEFAULT_TIMEOUT_S,
                 chunk_bytes: int = DEFAULT_CHUNK, fault: FaultHook | None = None) -> None:
        self.bundle = bundle
        self.path = bundle.weights_path
        if verify not in (False, True, "first", "always"):
            raise StorageError(f"verify={verify!r}: expected False, 'first' (CRC of each group's first read) or "
                               "True/'always' (every read)")
        self.verify = "always" if verify is True else verify
        self._verified: set[str] = set()
        self.read_timeout_s = read_timeout_s
        self.chunk_bytes = align_up(max(ALIGNMENT, chunk_bytes))
        self.rate_limiter = rate_limiter if rate_limiter is not None else limiter_from_env()
        self.fault = fault if fault is not None else fault_from_env()
        self._file = CheckedFile(self.path, direct, self.rate_limiter, self.fault)
        self.direct = self._file.direct
        self.mode = self._file.mode
        self._lock = threading.Lock()
        self.records: list[ReadRecord] = []
        self.bytes_read = 0
        self._pending: set[_PendingGroup] = set()
        self._io = _IOThreads(io_threads)
        self.io_threads = max(1, io_threads)
        self._closed = False

    # -- reading -----------------------------------------------------------------------------------------------
    def read_nbytes(self, group: str) -> int:
        """Bytes a read of ``group`` transfers (its size rounded up to the 4 KiB alignment)."""
        return align_up(self.bundle.groups[group].nbytes)

    def _chunk(self, pg: _PendingGroup, start: int, ln: int) -> None:
        """Read bytes ``[start, start+ln)`` of the group into its buffer (runs on an I/O thread)."""
        g = self.bundle.groups[pg.group]
        last = pg.run_chunk(lambda: self._file.read_into(
            g.offset + start, memoryview(pg.dest)[start: start + ln], f"group {pg.group!r}", group=pg.group,
            base=g.offset, need=min(ln, g.nbytes - start), check=start == 0))
        if not last:
            return
        if pg.error is not None:
            _settle(pg.future, exc=pg.error)
            return
        n = align_up(g.nbytes)
        rec = ReadRecord(pg.group, pg.t0, pg.t1, n)
        with self._lock:
            self.records.append(rec)
            self.bytes_read += n
        check = self.verify == "always" or (self.verify == "first" and pg.group not in self._verified)
        try:
            tensors = {name: self.bundle.tensor_from_buffer(name, pg.dest, g.offset, check)
                       for name in g.tensors}
            if check:
                self._verified.add(pg.group)
        except BaseException as e:  # noqa: BLE001 - CRC mismatch (BundleError) goes to the waiter
            _settle(pg.future, exc=e)
            return
        _settle(pg.future, result=GroupRead(tensors, rec))

    def submit(self, group: str, dest: np.ndarray, priority: float = 0.0) -> Future:
        """Start reading ``group`` into ``dest`` (page-aligned, >= :meth:`read_nbytes`) on the I/O threads, in
        ``chunk_bytes`` pieces; lower ``priority`` values are read first. The future's result is a
        :class:`GroupRead` and is set only after every chunk has finished."""
        if self._closed:
            raise StorageError(f"{self.path}: weight store is closed")
        if group not in self.bundle.groups:
            raise StorageError(f"{self.path}: no group {group!r} in the bundle")
        n = self.read_nbytes(group)
        if dest.nbytes < n:
            raise StorageError(f"internal: buffer of {dest.nbytes} bytes for group {group!r} of {n} bytes")
        starts = list(range(0, n, self.chunk_bytes))
        pg = _PendingGroup(group, dest, len(starts))
        with self._lock:
            self._pending.add(pg)
        pg.future.add_done_callback(lambda _f, pg=pg: self._forget(pg))
        for st in starts:
            ln = min(self.chunk_bytes, n - st)
            self._io.put(priority, lambda pg=pg, st=st, ln=ln: self._chunk(pg, st, ln))
        return pg.future

    def _forget(self, pg: _PendingGroup) -> None:
        with self._lock:
            self._pending.discard(pg)

    def wait(self, group: str, fut: Future, timeout_s: float | None = None) -> GroupRead:
        """The result of :meth:`submit`; raises StorageError if the read failed or takes longer than the timeout."""
        t = self.read_timeout_s if timeout_s is None else timeout_s
        try:
            return fut.result(timeout=t)
        except FutureTimeout:
            raise StorageError(f"{self.path}: read of group {group!r} did not finish in {t:.0f} s (storage stalled "
                               "or removed?); set EDGESPOOL_READ_TIMEOUT to wait longer") from None

    def read(self, group: str, dest: np.ndarray) -> dict[str, QTensor]:
        """Blocking read of ``group`` into ``dest`` (on the I/O threads, with the timeout)."""
        return self.wait(group, self.submit(group, dest, float("-inf"))).tensors

    def read_tensor(self, name: str, staging: np.ndarray) -> QTensor:
        """Read one tensor (e.g. a router) into the page-aligned ``staging`` buffer (>= its aligned size) with one
        read; the result is a view into ``staging``, valid until the next use of that buffer."""
        rec = self.bundle.tensors[name]
        off, nb = int(rec["offset"]), int(rec["nbytes"])
        span = align_up(nb)
        if staging.nbytes < span:
            raise StorageError(f"internal: staging buffer of {staging.nbytes} bytes for tensor {name!r} of {span}")
        if self._closed:
            raise StorageError(f"{self.path}: weight store is closed")
        grp = rec.get("group")
        base = self.bundle.groups[grp].offset if grp in self.bundle.groups else off
        self._file.read_into(off, memoryview(staging)[:span], f"tensor {name!r}", group=grp, base=base, need=nb)
        with self._lock:
            self.bytes_read += span
        return self.bundle.tensor_from_buffer(name, staging[:nb], off, bool(self.verify))

    # -- row reads (embedding rows, head chunks) ------------------------------------------------------------------
    def _read_rows_now(self, geo: RowGeometry, r0: int, r1: int, dest: np.ndarray, what: str) -> tuple[QTensor, int]:
        """Read rows ``[r0, r1)`` of ``geo``'s tensor into ``dest`` (page-aligned; each part's 4 KiB-aligned span
        one after another) on the calling thread; returns the ``[r1 - r0, width]`` QTensor viewing ``dest`` and the
        bytes read."""
        if self._closed:
            raise StorageError(f"{self.path}: weight store is closed")
        spans = geo.span(r0, r1)
        total = sum(n for _, n, _ in spans)
        if dest.nbytes < total:
            raise StorageError(f"internal: buffer of {dest.nbytes} bytes for {what} needing {total}")
        g = self.bundle.groups[geo.group]
        pos, views = 0, {}
        for part, (a0, n, skip) in zip(geo.parts, spans):
            self._file.read_into(a0, memoryview(dest)[pos: pos + n], what, group=geo.group, base=g.offset,
                                 need=skip + (r1 - r0) * part.row_bytes, check=False)
            views[part.name] = dest[pos + skip: pos + skip + (r1 - r0) * part.row_bytes]
            pos += n
        sch = get_scheme(geo.scheme)
        qt = sch.rows_from_bytes(views["data"], views.get("scale"), r1 - r0, geo.width, geo.group_size)
        return qt, total

    def read_rows(self, geo: RowGeometry, r0: int, r1: int, dest: np.ndarray, what: str) -> QTensor:
        """Blocking read of rows ``[r0, r1)`` of a 2-D tensor into ``dest`` (see :meth:`submit_rows`), counted in
        :attr:`bytes_read`. Not CRC-checked (a CRC covers a whole tensor): :meth:`verify_tensor` checks it once."""
        t0 = time.perf_counter()
        qt, n = self._read_rows_now(geo, r0, r1, dest, what)
        self.note_read(geo.group, t0, time.perf_counter(), n)
        return qt

    def submit_rows(self, geo: RowGeometry, r0: int, r1: int, dest: np.ndarray, priority: float,
                    name: str) -> Future:
        """Start reading rows ``[r0, r1)`` of ``geo``'s tensor into ``dest`` on the I/O threads, each part's aligned
        span in ``chunk_bytes`` pieces (as :meth:`submit` reads a group, so both threads keep the device busy); the
        future's result is a :class:`GroupRead` named ``name`` whose one tensor (``geo.tensor``) views ``dest``,
        set only after every piece has finished."""
        if self._closed:
            raise StorageError(f"{self.path}: weight store is closed")
        spans = geo.span(r0, r1)
        total = sum(n for _, n, _ in spans)
        if dest.nbytes < total:
            raise StorageError(f"internal: buffer of {dest.nbytes} bytes for {name} needing {total}")
        what = f"rows {r0}..{r1 - 1} of tensor {geo.tensor!r}"
        base = self.bundle.groups[geo.group].offset
        pieces, pos, views = [], 0, {}
        for part, (a0, n, skip) in zip(geo.parts, spans):
            need_end = skip + (r1 - r0) * part.row_bytes  # bytes of this span that must be read
            for st in range(0, n, self.chunk_bytes):
                ln = min(self.chunk_bytes, n - st)
                pieces.append((a0 + st, pos + st, ln, max(0, min(ln, need_end - st))))
            views[part.name] = (pos + skip, (r1 - r0) * part.row_bytes)
            pos += n
        pg = _PendingGroup(name, dest, len(pieces))

        def finish() -> None:
            if pg.error is not None:
                _settle(pg.future, exc=pg.error)
                return
            rec = ReadRecord(name, pg.t0, pg.t1, total)
            with self._lock:
                self.records.append(rec)
                self.bytes_read += total
            v = {k: dest[o: o + n] for k, (o, n) in views.items()}
            qt = get_scheme(geo.scheme).rows_from_bytes(v["data"], v.get("scale"), r1 - r0, geo.width, geo.group_size)
            _settle(pg.future, result=GroupRead({geo.tensor: qt}, rec))

        def piece(off: int, at: int, ln: int, need: int) -> None:
            def read() -> None:
                if need > 0:
                    self._file.read_into(off, memoryview(dest)[at: at + ln], what, group=geo.group, base=base,
                                         need=need, check=False)
            if pg.run_chunk(read):
                finish()

        with self._lock:
            self._pending.add(pg)
        pg.future.add_done_callback(lambda _f, pg=pg: self._forget(pg))
        for off, at, ln, need in pieces:
            self._io.put(priority, lambda off=off, at=at, ln=ln, need=need: piece(off, at, ln, need))
        return pg.future

    def verify_tensor(self, geo: RowGeometry, buf: np.ndarray) -> None:
        """CRC-check a tensor that is only ever read in row ranges, once, by reading it through ``buf`` (a
        page-aligned buffer) part by part in order; BundleError on a mismatch. Counted in :attr:`bytes_read`
        (a load-time cost of one pass over the tensor)."""
        rec = self.bundle.tensors[geo.tensor]
        g = self.bundle.groups[geo.group]
        crc, t0, total = 0, time.perf_counter(), 0
        for part in geo.parts:
            start, end = part.offset, part.offset + geo.rows * part.row_bytes
            pos = start - start % ALIGNMENT
            while pos < end:
                n = min(buf.nbytes - buf.nbytes % ALIGNMENT, align_up(end) - pos)
                self._file.read_into(pos, memoryview(buf)[:n], f"tensor {geo.tensor!r} (verify)", group=geo.group,
                                     base=g.offset, need=min(n, end - pos), check=False)
                total += n
                lo, hi = max(start, pos) - pos, min(end, pos + n) - pos
                crc = zlib.crc32(memoryview(buf)[lo:hi], crc)
                pos += n
        self.note_read(geo.group, t0, time.perf_counter(), total)
        if crc != int(rec["crc32"]):
            raise BundleError(f"{self.bundle.weights_path}: checksum mismatch in tensor {geo.tensor!r} (file corrupt "
                              "or modified; re-export the bundle)")

    def read_into(self, offset: int, bufs: list[np.ndarray], group: str, what: str) -> int:
        """Read ``sum(b.nbytes)`` bytes at file ``offset`` of ``group`` into ``bufs`` (a scatter read, on the
        calling thread: e.g. a run of neuron bundles into window slots) with
        :meth:`CheckedFile.read_into <edgespool.runtime.bundle.checked_read.CheckedFile.read_into>`: rate limiter,
        fault hook, StorageError naming ``what``. Not counted: the caller reports what it read with
        :meth:`note_read`. Returns the bytes read."""
        if self._closed:
            raise StorageError(f"{self.path}: weight store is closed")
        return self._file.read_into(offset, bufs, what, group=group, base=self.bundle.groups[group].offset)

    def note_read(self, group: str, t0: float, t1: float, nbytes: int) -> None:
        """Account reads done with :meth:`read_into` (one record for a batch of them)."""
        with self._lock:
            self.records.append(ReadRecord(group, t0, t1, nbytes))
            self.bytes_read += nbytes

    # -- stats / teardown -------------------------------------------------------------------------------------
    def busy_seconds(self) -> float:
        """Sum of group read durations (overlapping reads counted once each)."""
        with self._lock:
            return sum(r.t1 - r.t0 for r in self.records)

    def close(self) -> None:
        """Stop the I/O threads (reads that never started fail with StorageError) and close the file."""
        if self._closed:
            return
        self._closed = True
        self._io.shutdown()
        with self._lock:
            pending = list(self._pending)
        for pg in pending:
            if not pg.future.done():
                _settle(pg.future, exc=StorageError(f"{self.path}: weight store closed before group "
                                                     f"{pg.group!r} was read"))
        self._file.close()
