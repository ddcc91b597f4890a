"""Neuron windowing of row-column bundled FFNs inside a streamed run (LLM in a flash, Alizadeh et al. 2024).

For a bundle exported with ``--ffn-layout bundled`` (:mod:`edgespool.runtime.bundle.ffn_geometry`) and a plan with
``neuron_layers`` (:func:`edgespool.schedulers.memory_plan.plan_memory`), :class:`NeuronFFN` computes the ReGLU FFN
``down(relu(gate x) * up x)`` of each layer from the neurons that are active for the current tokens only:

* **Exact predictor**: the gate rows of every bundled layer are pinned (read once at load, CRC-checked with the
  whole tensor). ``pre = gate x`` through the same linear kernel the resident engine uses gives the exact active
  set ``{j : pre_j > 0 for some token}``; inactive neurons contribute exactly zero, so the output equals the dense
  FFN up to float summation order. Cost: the gate rows stay in memory (a third of the FFN weights), and each
  bundle read also carries the gate row again (a third of the bytes read).
* **Window**: per layer a fixed buffer of ``capacity`` bundles (pool memory, sized by the plan). A neuron stays
  after use; neurons unused for ``window`` forward passes are dropped, and when the buffer is full the least
  recently used ones not needed now are evicted. Only active neurons that are not in memory are read: runs of
  consecutive neuron ids are one scatter read each through the checked-read primitive
  (:class:`~edgespool.runtime.bundle.checked_read.CheckedFile`; O_DIRECT into the slots: bundles are 512-byte
  multiples), spread over ``io_threads`` threads. More active neurons than ``capacity`` (a long prompt) are processed in
  chunks of ``capacity``: more reads, the same result.

``stats()`` reports active fraction, neurons loaded vs reused, bytes and reads.
"""
from __future__ import annotations

import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import BundleError, StorageError
from ..kernels.quant import QTensor, get_scheme
from ..kernels.swiglu import ACTIVATIONS
from ..kernels.table import REFERENCE, KernelTable
from ..runtime.bundle.reader import Bundle
from ..runtime.bundle.constants import align_up
from ..kernels.bundled_ffn import linear_t
from ..runtime.bundle.ffn_geometry import (BundleGeometry, ffn_group, ffn_tensor, load_staging_bytes,
                                           unpack_bundles)


class _Layer:
    """One bundled FFN layer: geometry, file offset, pinned gate QTensor, window slots and bookkeeping."""

    def __init__(self, i: int, geo: BundleGeometry, offset: int, gate: QTensor, slots: np.ndarray) -> None:
        self.i = i
        self.geo = geo
        self.offset = offset
        self.gate = gate
        self.slots = slots  # uint8 [capacity, bundle_bytes]
        self.where: dict[int, int] = {}  # neuron -> slot
        self.last: dict[int, int] = {}  # neuron -> pass of last use
        self.free = list(range(slots.shape[0] - 1, -1, -1))
        self.passes = 0


class NeuronFFN:
    """Neuron windows of a streamed run's bundled FFN layers (see the module docstring). Memory comes from
    ``pool`` (pinned region): :func:`edgespool.schedulers.memory_plan.gate_rows_bytes` per layer for the gate rows
    and ``capacity * bundle_bytes`` per layer for the window, plus a load staging buffer
    (:func:`~edgespool.runtime.bundle.ffn_geometry.load_staging_bytes`). Products go through ``kernels.linear``
    (the model's :class:`~edgespool.kernels.table.KernelTable`, the same the engine uses)."""

    def __init__(self, bundle: Bundle, store: Any, pool: Any, layers: tuple[int, ...], capacity: int, *,
                 window: int = 5, io_threads: int = 4, verify: bool = True, act: str = "relu",
                 kernels: KernelTable = REFERENCE) -> None:
        if window < 1 or capacity < 1:
            raise BundleError(f"neuron window {window} and capacity {capacity} must be >= 1")
        self.bundle, self.store, self.window, self.act = bundle, store, window, act
        self.kernels = kernels
        self._act = ACTIVATIONS[act]
        self.capacity = capacity
        self.layers: dict[int, _Layer] = {}
        self._io = ThreadPoolExecutor(max(1, io_threads), thread_name_prefix="edgespool-neuron-io")
        self.io_threads = max(1, io_threads)
        self.bytes_read = self.reads = self.loaded = self.requested = self.neurons_total = 0
        self.read_s = 0.0
        self.decode = {"passes": 0, "neurons": 0, "requested": 0, "loaded": 0, "reads": 0}  # one-token passes
        B = max(BundleGeometry.from_record(ffn_tensor(i), bundle.tensors[ffn_tensor(i)]).bundle_bytes for i in layers)
        staging = pool.alloc_pinned(load_staging_bytes(B))
        for i in layers:
            name = ffn_tensor(i)
            rec = bundle.tensors[name]
            geo = BundleGeometry.from_record(name, rec, str(bundle.path))
            if int(rec["parts"]["data"]["offset"]) != 0:
                raise BundleError(f"{bundle.path}: tensor {name!r}: neuron bundles must start the tensor record")
            gate = self._pin_gate(i, geo, int(rec["offset"]), int(rec["crc32"]) if verify else None, pool, staging)
            slots = pool.alloc_pinned(align_up(capacity * geo.bundle_bytes))[: capacity * geo.bundle_bytes]
            self.layers[i] = _Layer(i, geo, int(rec["offset"]), gate, slots.reshape(capacity, geo.bundle_bytes))

    # -- load: the exact predictor's gate rows --------------------------------------------------------------------
    def _pin_gate(self, i: int, geo: BundleGeometry, offset: int, crc: int | None, pool: Any,
                  staging: np.ndarray) -> QTensor:
        """Read layer ``i``'s bundles once (sequential reads through ``staging``) and keep their gate rows."""
        db, sb, B, I = geo.data_bytes, geo.scale_bytes, geo.bundle_bytes, geo.neurons
        data = pool.alloc_pinned(align_up(I * db))[: I * db].reshape(I, db)
        scale = pool.alloc_pinned(align_up(I * sb))[: I * sb].reshape(I, sb) if sb else None
        per = max(1, len(staging) // B)
        c = 0
        t0 = time.perf_counter()
        for r0 in range(0, I, per):
            r1 = min(I, r0 + per)
            buf = staging[: (r1 - r0) * B]
            self.store.read_into(offset + r0 * B, [buf], ffn_group(i), f"tensor {ffn_tensor(i)!r}")
            if crc is not None:
                c = zlib.crc32(buf, c)
            rows = buf.reshape(r1 - r0, B)
            data[r0:r1] = rows[:, geo.data_offset(0): geo.data_offset(0) + db]
            if scale is not None:
                scale[r0:r1] = rows[:, geo.scale_offset(0): geo.scale_offset(0) + sb]
        self.store.note_read(ffn_group(i), t0, time.perf_counter(), I * B)
        if crc is not None and c != crc:
            raise BundleError(f"{self.bundle.weights_path}: checksum mismatch in tensor {ffn_tensor(i)!r} (file corrupt "
                              "or modified; re-export the bundle)")
        return get_scheme(geo.scheme).rows_from_bytes(data, scale, I, geo.hidden, geo.group_size)

    # -- the window ---------------------------------------------------------------------------------------------
    def _make_room(self, L: _Layer, need: int, keep: set[int]) -> None:
        if len(L.free) >= need:
            return
        victims = sorted((t, j) for j, t in L.last.items() if j not in keep)
        for _, j in victims[: need - len(L.free)]:
            L.free.append(L.where.pop(j))
            del L.last[j]
        if len(L.free) < need:  # cannot happen: chunks are at most ``capacity`` neurons
            raise StorageError(f"internal: neuron window of layer {L.i} has {len(L.free)} free slots, needs {need}")

    def _read_runs(self, L: _Layer, runs: list[tuple[int, list[int]]]) -> None:
        """Read runs ``(first neuron, [slots])`` of bundles into their slots, spread over the I/O threads."""
        B = L.geo.bundle_bytes
        jobs = []
        for first, slots in runs:  # one scatter read per run (CheckedFile batches it by IOV_MAX)
            jobs.append((L.offset + first * B, [L.slots[s] for s in slots],
                         f"layer {L.i} neurons {first}..{first + len(slots) - 1}"))
        grp = ffn_group(L.i)
        if len(jobs) == 1 or self.io_threads == 1:
            for off, bufs, what in jobs:
                self.store.read_into(off, bufs, grp, what)
        else:
            n = self.io_threads
            batches = [jobs[k::n] for k in range(n) if jobs[k::n]]

            def run(batch: list) -> None:
                for off, bufs, what in batch:
                    self.store.read_into(off, bufs, grp, what)

            for f in [self._io.submit(run, b) for b in batches]:
                f.result()  # re-raises a StorageError of any thread
        self.reads += len(jobs)

    def _load(self, L: _Layer, ids: np.ndarray) -> np.ndarray:
        """Make the bundles of neurons ``ids`` (sorted, at most ``capacity``) resident; returns their slots."""
        where = L.where
        missing = [int(j) for j in ids if int(j) not in where]
        self.requested += len(ids)
        if missing:
            self._make_room(L, len(missing), set(int(j) for j in ids))
            runs: list[tuple[int, list[int]]] = []
            for j in missing:
                s = L.free.pop()
                where[j] = s
                if runs and runs[-1][0] + len(runs[-1][1]) == j:
                    runs[-1][1].append(s)
                else:
                    runs.append((j, [s]))
            t0 = time.perf_counter()
            try:
                self._read_runs(L, runs)
            except BaseException:
                for j in missing:  # never hand out a slot whose read failed
                    L.free.append(where.pop(j))
                raise
            t1 = time.perf_counter()
            nbytes = len(missing) * L.geo.bundle_bytes
            self.read_s += t1 - t0
            self.bytes_read += nbytes
            self.loaded += len(missing)
            self.store.note_read(ffn_group(L.i), t0, t1, nbytes)
        for j in ids:
            L.last[int(j)] = L.passes
        return np.fromiter((where[int(j)] for j in ids), dtype=np.int64, count=len(ids))

    # -- compute --------------------------------------------------------------------------------------------------
    def ffn(self, i: int, x: np.ndarray) -> np.ndarray:
        """The FFN of layer ``i`` for ``x`` ``[T, H]`` from its active neurons only (read as needed)."""
        L = self.layers[i]
        x = np.asarray(x, np.float32)
        L.passes += 1
        stale = [j for j, t in L.last.items() if t <= L.passes - 1 - self.window]
        for j in stale:  # LLM in a flash's window: drop neurons unused for ``window`` passes
            L.free.append(L.where.pop(j))
            del L.last[j]
        linear = self.kernels.linear
        pre = linear(x, L.gate)  # [T, I], exactly what the dense FFN computes
        x2 = pre.reshape(-1, pre.shape[-1])
        active = np.flatnonzero((x2 > 0).any(axis=0))
        self.neurons_total += L.geo.neurons
        before = (self.requested, self.loaded, self.reads)
        y = np.zeros((x2.shape[0], L.geo.hidden), np.float32)
        xs = x.reshape(-1, x.shape[-1])
        for c0 in range(0, active.size, self.capacity):
            ids = active[c0: c0 + self.capacity]
            rows = L.slots[self._load(L, ids)]
            _, up, down_t = unpack_bundles(L.geo, rows)
            h = self._act(x2[:, ids])
            h *= linear(xs, up)
            y += linear_t(h, down_t)
        if x2.shape[0] == 1:
            d = self.decode
            d["passes"] += 1
            d["neurons"] += L.geo.neurons
            d["requested"] += self.requested - before[0]
            d["loaded"] += self.loaded - before[1]
            d["reads"] += self.reads - before[2]
        return y.reshape(*x.shape[:-1], L.geo.hidden)

    def view(self, i: int) -> "_LayerFFN":
        """The object the engine gets for group ``layers.{i}.ffn_bundled``: ``.ffn(x, act)``."""
        return _LayerFFN(self, i)

    def stats(self) -> dict[str, Any]:
        """Active fraction, neurons loaded vs requested (reuse), bytes and reads of the windows."""
        return {"layers": len(self.layers), "capacity": self.capacity, "window": self.window,
                "predictor": "exact (gate rows pinned)", "passes": sum(L.passes for L in self.layers.values()),
                "active_fraction": self.requested / self.neurons_total if self.neurons_total else None,
                "neurons_requested": self.requested, "neurons_loaded": self.loaded,
                "reuse": 1 - self.loaded / self.requested if self.requested else None,
                "bytes_read": self.bytes_read, "reads": self.reads, "read_s": round(self.read_s, 4),
                "io_threads": self.io_threads,
                "decode": {**self.decode,
                           "active_fraction": self.decode["requested"] / self.decode["neurons"]
                           if self.decode["neurons"] else None,
                           "reuse": 1 - self.decode["loaded"] / self.decode["requested"]
                           if self.decode["requested"] else None}}

    def close(self) -> None:
        self._io.shutdown(wait=True)
        self.layers.clear()


class _LayerFFN:
    """Group ``layers.{i}.ffn_bundled`` as the engine sees it when streamed (see ``run_bundled_ffn``)."""

    def __init__(self, owner: NeuronFFN, i: int) -> None:
        self.owner, self.i = owner, i

    def ffn(self, x: np.ndarray, act: str) -> np.ndarray:
        if act != self.owner.act:
            raise BundleError(f"layer {self.i}: bundled FFN computed with activation {act!r}, windowed as "
                              f"{self.owner.act!r}")
        return self.owner.ffn(self.i, x)
