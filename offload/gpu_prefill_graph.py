"""GPU prompt chunks (prefill) as CUDA graphs: a run of consecutive GPU-resident dense layers, for one chunk length
and start position, is recorded once and replayed with one ``cudaGraphLaunch`` instead of ~45 CuPy / cuBLAS calls a
layer issued from Python. docs/BENCHMARKS.md (issue 17, 2026-12-07) measured why: every 1.5B product of a 64-token
prompt cost 0.07 ms, equal to its Python issue time, so a short prompt was bound by launching, not by the GPU.

What a graph bakes in and how the replay stays right:

* the chunk's shape and positions (the attention's key range, the KV-cache rows it writes): graphs are keyed by
  (first layer, rows, start position). Chunks at position 0 (every new prompt) are recorded the first time; chunks
  further on only when that key comes a second time (a chat's later turns rarely repeat one), else eager;
* the rows are padded up to a multiple of ``PAD_ROWS`` (not past the plan's prompt chunk nor the KV cache), so
  prompts of nearby lengths share a graph. Padded rows come after the real ones: causal attention keeps them out of
  the real rows, they are zeroed before every replay (so nothing grows across replays), and the KV rows they write
  lie past the sequence's length, where the next token writes before any read;
* inputs live in static buffers set before each replay (the hidden state, the chunk's RoPE rows); the output is the
  same hidden-state buffer (the layers update it in place);
* every temporary of a recording comes from the executor's prompt pool (a CuPy memory pool of its own, also taking
  every temporary of an eager prompt chunk and of its head): nothing allocated there outlives the prompt step it
  was made in, and the step's RoPE tables are uploaded again after a replay, so no live array can sit where a graph
  writes (graphs replay one at a time on one stream). The weights, KV caches, the graphs' static buffers and
  decode steps use the main pool; the two pools together stay inside the plan's arena (GpuLayers._balance).

A recording that fails (an allocation past the arena, an operation a graph cannot hold) is discarded, the chunk runs
eagerly, and ``fail_reason`` says why. Replays compute the same kernels in the same order as the eager path
(:meth:`~edgespool.offload.gpu_layers.GpuLayers._block`), so logits match it to float32 rounding (padded shapes may
pick other cuBLAS tiles); tests/test_gpu_split.py checks them against the CPU-only engine.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import numpy as np

PAD_ROWS = 32  # prompt chunks are padded up to a multiple of this many rows (fewer distinct graphs)
MAX_GRAPHS = 12  # recorded graphs kept (least recently used dropped first)
MAX_SEEN = 4096  # chunk keys remembered for 'record on the second coming'

# block(i, x, pos, tables): layer i on device hidden states x [T, H] in place at positions pos, RoPE tables on
# the device ((cos, sin) [T, D]) or None
Block = Callable[[int, Any, np.ndarray, "tuple[Any, Any] | None"], None]


def padded_rows(T: int, p0: int, max_rows: int, max_context: int) -> int:
    """The row count a ``T``-row prompt chunk at position ``p0`` is recorded with: ``T`` rounded up to a multiple
    of PAD_ROWS when that stays within the planned chunk ``max_rows`` and the KV cache, else ``T``."""
    Tp = -(-T // PAD_ROWS) * PAD_ROWS
    return Tp if Tp <= max(T, max_rows) and p0 + Tp <= max_context else T


class _Recorded:
    """One recorded chunk: the graph and its static hidden-state and RoPE buffers (padded rows)."""

    def __init__(self, graph: Any, x: Any, tables: tuple[Any, Any] | None) -> None:
        self.graph, self.x, self.tables = graph, x, tables


class PrefillGraphs:
    """Recorded prompt chunks of the runs ``runs`` ({first layer: end, exclusive}) of GPU-resident dense layers
    sharing one RoPE (module docstring). ``launch`` replays (recording when due) or returns None for the eager
    path."""

    def __init__(self, cp: Any, stream: Any, runs: dict[int, int], main_pool: Any, prompt_pool: Any,
                 balance: Callable[[], None], freed: list[int], max_context: int, max_rows: int, hidden: int,
                 head_dim: int) -> None:
        self.cp, self.stream, self.main_pool, self.pool = cp, stream, main_pool, prompt_pool
        self._freed, self._freed_seen = freed, freed[0]  # the prompt pool's released blocks (GpuLayers)
        self._runs = dict(runs)
        self._balance = balance  # re-splits the arena between the two pools (GpuLayers._balance)
        self.C, self.max_rows, self.H, self.D = int(max_context), int(max_rows), int(hidden), int(head_dim)
        self._graphs: OrderedDict[tuple[int, int, int], _Recorded] = OrderedDict()
        self._seen: set[tuple[int, int, int]] = set()
        self._failed: set[tuple[int, int, int]] = set()
        self.fail_reason = ""
        self.launches = 0  # replays (the benchmark reports them)
        self.recorded = 0

    def run_end(self, i: int) -> int | None:
        """The end (exclusive) of the prefill graph run starting at layer ``i``, or None."""
        return self._runs.get(i)


    def launch(self, i: int, x: Any, pos: np.ndarray, rope: tuple[np.ndarray, np.ndarray] | None,
               block: Block, before: Callable[[], None] | None = None) -> tuple[Any, int] | None:
        """Layers ``i .. run_end(i) - 1`` on ``x`` ``[T, H]`` (numpy or device) at positions ``pos`` by a recorded
        graph: returns (the device hidden states ``[T, H]``, host-to-device bytes), or None when this chunk runs
        eagerly (not due for recording, or its recording failed; nothing was done then). ``before`` is called
        once a graph will replay, before its inputs are set."""
        if self._freed[0] != self._freed_seen:  # the prompt pool gave blocks back: graphs may point there
            self._graphs.clear()
            self._freed_seen = self._freed[0]
        T, p0 = int(np.size(pos)), int(pos[0])
        Tp = padded_rows(T, p0, self.max_rows, self.C)
        key = (i, Tp, p0)
        rec = self._graphs.get(key)
        if rec is None:
            if key in self._failed or (p0 > 0 and key not in self._seen):
                if len(self._seen) >= MAX_SEEN:  # speculative verification chunks rarely repeat: forget them
                    self._seen.clear()
                self._seen.add(key)
                return None
            rec = self._record(key, rope is not None, block)
            if rec is None:
                return None
        self._graphs.move_to_end(key)
        if before is not None:
            before()
        s = self.stream
        h2d = 0
        with s:
            if isinstance(x, np.ndarray):
                rec.x[:T].set(np.ascontiguousarray(x, np.float32), stream=s)
                h2d += x.nbytes
            else:
                rec.x[:T] = x
            if Tp > T:
                rec.x[T:].fill(0)
            if rope is not None and rec.tables is not None:
                for dst, src in zip(rec.tables, rope):
                    dst[:T].set(np.ascontiguousarray(src, np.float32), stream=s)
                    h2d += src.nbytes
            rec.graph.launch(stream=s)
        self.launches += 1
        return rec.x[:T], h2d

    def _record(self, key: tuple[int, int, int], rope: bool, block: Block) -> _Recorded | None:
        """Record the run ``key`` = (first layer, rows, start) into a graph (nothing runs); None if that fails."""
        cp, s = self.cp, self.stream
        i0, Tp, p0 = key
        try:  # static buffers: the main pool, alive with the graph
            with s, cp.cuda.using_allocator(self.main_pool.malloc):
                x = cp.zeros((Tp, self.H), cp.float32)
                tables = (cp.ones((Tp, self.D), cp.float32), cp.zeros((Tp, self.D), cp.float32)) if rope else None
        except cp.cuda.memory.OutOfMemoryError as e:
            self._fail(key, f"static buffers: {e}")
            return None
        s.synchronize()
        self.main_pool.free_all_blocks()  # the main pool's cached blocks back: room for the recording
        self._balance()
        mode = getattr(cp.cuda.runtime, "streamCaptureModeRelaxed", None)  # the pool may cudaMalloc while recording
        pos = np.arange(p0, p0 + Tp)
        err: str | None = None
        graph = None
        with s:
            s.begin_capture(mode) if mode is not None else s.begin_capture()
            try:
                with cp.cuda.using_allocator(self.pool.malloc):
                    for i in range(i0, self._runs[i0]):
                        block(i, x, pos, tables)
            except Exception as e:  # noqa: BLE001 - any failure while recording: discard, run eagerly
                err = f"{type(e).__name__}: {e}"  # the message only: the traceback would keep temporaries alive
            finally:
                try:
                    graph = s.end_capture()
                except Exception as e:  # noqa: BLE001 - an invalidated capture
                    err = err or f"{type(e).__name__}: {e}"
                    graph = None
        self._balance()
        if err is not None or graph is None:
            self._fail(key, err or "no graph")
            return None
        rec = _Recorded(graph, x, tables)
        self._graphs[key] = rec
        self.recorded += 1
        while len(self._graphs) > MAX_GRAPHS:
            self._graphs.popitem(last=False)
        return rec

    def _fail(self, key: tuple[int, int, int], why: str) -> None:
        """Remember that ``key`` runs eagerly (its recording's temporaries went back to the prompt pool)."""
        self._failed.add(key)
        self.fail_reason = f"prefill graph of layers {key[0]}.. ({key[1]} rows at {key[2]}) not recorded: {why}"

    def close(self) -> None:
        """Drop every graph (their memory is the prompt pool's, freed by its owner)."""
        self._graphs.clear()
