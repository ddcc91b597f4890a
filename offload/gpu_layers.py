"""The GPU side of a CPU/GPU split run: the layers and head a :class:`~edgespool.schedulers.placement_plan.Placement`
puts on the GPU, computed with :class:`~edgespool.offload.gpu_ops.GpuOps` (CuPy, cuBLAS, the fused GEMV kernels).

* resident groups are uploaded once at load; with ``zero_copy`` (meant for unified-memory boards) they are instead
  placed once in page-locked host memory the GPU reads where it lies (:meth:`GpuOps.host_mapped`): 0 bytes copied
  host-to-device, counted (``load_h2d_bytes``), and the mapped bytes leave the device pool's limit;
* streamed groups keep a pinned host copy and go host-to-device every token into one of two staging slots, on a
  copy stream that runs while the previous group computes (events order slot reuse);
* each GPU layer keeps its own float32 KV cache on the GPU for ``max_context`` positions;
* the activations cross the link once per CPU<->GPU boundary: :meth:`GpuLayers.layer` returns a device array
  when the next layer is also on the GPU, a numpy array otherwise.

All device memory comes from CuPy's pool, limited to the plan's arena (``set_limit``), so the run can never take
more GPU memory than the plan says: a step that would is a :class:`~edgespool.errors.BudgetError`.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any

import numpy as np

from ..errors import BudgetError
from ..kernels.quant import QTensor
from ..runtime.bundle.config import ModelConfig
from ..runtime.bundle.names import EMBED, FINAL_NORM, HEAD, LM_HEAD, layer_group, layer_prefix
from ..schedulers.placement_plan import CPU, GPU, STREAM, Placement
from .gpu_graph import DecodeGraphs, graph_runs, layer_graph_ok
from .gpu_moe import CpuExpert, moe_ffn
from .gpu_ops import GPU_PREFILL_CHUNK, GpuOps, GpuTensor
from .gpu_prefill_graph import PrefillGraphs


def prefill_runs(cfg: ModelConfig, resident: list[bool]) -> dict[int, int]:
    """{first layer: end} of the runs of consecutive GPU-resident dense layers sharing one RoPE: what a prefill
    graph records (MoE layers route on the host, streamed ones wait on copies: those stay eager)."""
    return graph_runs(cfg, [resident[i] and not cfg.is_moe_layer(i) for i in range(cfg.num_layers)])


class _RawBlock:
    """Owns one cudaMalloc'd block of the prompt pool and counts its release in ``freed`` (CuPy's pool frees its
    cached blocks when an allocation fails: a recorded prefill graph may point into them, so graphs are dropped
    when this count moves)."""

    __slots__ = ("mem", "freed")

    def __init__(self, mem: Any, freed: list[int]) -> None:
        self.mem, self.freed = mem, freed

    def __del__(self) -> None:
        self.freed[0] += 1


def _pinned_copy(cp: Any, a: np.ndarray) -> np.ndarray:
    """``a`` copied into page-locked host memory (what an asynchronous host-to-device copy needs)."""
    mem = cp.cuda.alloc_pinned_memory(max(1, a.nbytes))
    out = np.frombuffer(mem, a.dtype, a.size).reshape(a.shape)
    out[...] = a
    return out


class GpuLayers:
    """The GPU executor the engine calls for GPU-placed layers (``runs``, ``layer``) and the head (``has_head``,
    ``head``). ``read_group(name)`` returns a group's host tensors (read once per resident / streamed group)."""

    def __init__(self, cp: Any, ops: GpuOps, config: ModelConfig, placement: Placement, read_group: Any,
                 max_context: int, zero_copy: bool | None = None, cpu_expert: CpuExpert | None = None) -> None:
        self.cp, self.ops, self.config, self.placement = cp, ops, config, placement
        self.max_context = int(max_context)
        self.pool = cp.get_default_memory_pool()
        self.pool.set_limit(size=placement.arena_bytes)
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.copy_stream = cp.cuda.Stream(non_blocking=True)
        self.where = {g.name: g.where for g in placement.groups}
        self.has_head = self.where.get(HEAD, CPU) != CPU
        self.h2d_bytes = 0  # weight + activation bytes copied host-to-device (measured by counting copies)
        self.d2h_bytes = 0
        self.peak_pool_bytes = 0
        self.unified = placement.link.unified
        # weights mapped, not copied: opt-in everywhere until the mapped path has run on a GPU (then the default
        # on unified memory, where it saves the copy at load); on a discrete GPU it reads them over the bus
        self.zero_copy = bool(zero_copy)
        self.mapped_bytes = 0
        self.cpu_expert = cpu_expert  # MoE layers on the GPU: routed experts the placement left on the CPU
        self.cpu_expert_calls = 0
        self._resident: dict[str, dict[str, GpuTensor]] = {}
        self._pinned: dict[str, dict[str, tuple[np.ndarray, np.ndarray | None]]] = {}
        self._slots: list[dict[str, GpuTensor]] = []
        self._slot_of: dict[str, int] = {}
        self._copy_done: list[Any] = []
        self._compute_done: list[Any] = []
        self._kv: dict[int, tuple[Any, Any]] = {}
        self._step_tables: dict[int, tuple[Any, Any]] = {}
        self._owner: int | None = None
        self.graphs: DecodeGraphs | None = None
        self.graphs_enabled = True  # False: every step through the eager path (the benchmark's A/B)
        self.prefill_graphs: PrefillGraphs | None = None
        # prompt chunks replay recorded graphs (offload/gpu_prefill_graph.py); False: eager (the benchmark's A/B)
        self.prefill_graphs_enabled = os.environ.get("EDGESPOOL_GPU_PREFILL_GRAPHS", "1") != "0"
        self._pool_limit = placement.arena_bytes  # what the two pools may hold together (less mapped weights)
        # every temporary of a prompt step (eager or recorded into a prefill graph) comes from this pool; the
        # weights, KV caches, static buffers and decode steps from the main one (offload/gpu_prefill_graph.py)
        self._prompt_freed = [0]
        self.prompt_pool = cp.cuda.MemoryPool(allocator=self._prompt_block)
        self._step_rows = 1
        self._graph_skip: set[int] = set()
        c = config
        self._streamed = [layer_group(i) for i in range(c.num_layers) if self.where.get(layer_group(i)) == STREAM]
        try:
            with self.stream:
                for name, w in self.where.items():
                    if w == GPU:
                        host = read_group(name)
                        zc = self.zero_copy
                        self._resident[name] = {n: ops.upload(t, mapped=zc) for n, t in host.items()
                                                if isinstance(t, QTensor)}
                        if name == HEAD and LM_HEAD not in host:  # tied: the head is the embedding table
                            self._resident[EMBED] = {EMBED: ops.upload(read_group(EMBED)[EMBED], mapped=zc)}
                for name in self._streamed:
                    host = read_group(name)
                    self._pinned[name] = {n: (_pinned_copy(cp, t.data), None if t.scale is None else
                                              _pinned_copy(cp, t.scale)) for n, t in host.items()
                                          if isinstance(t, QTensor) and len(t.shape) == 2}
                    if not self._slots:  # two slots shaped like the first streamed layer (dense layers share shapes)
                        for _ in range(2):
                            self._slots.append({n: ops.upload(t) for n, t in host.items()
                                                if isinstance(t, QTensor) and len(t.shape) == 2})
                            self._copy_done.append(None)
                            self._compute_done.append(None)
                    # the 1-D tensors (norms, biases) of a streamed layer stay resident: a few KiB
                    self._resident[name] = {n: ops.upload(t) for n, t in host.items()
                                            if isinstance(t, QTensor) and len(t.shape) < 2}
                nkv, D = c.num_kv_heads, c.head_dim
                for i in range(c.num_layers):
                    if self.where.get(layer_group(i), CPU) != CPU:
                        self._kv[i] = (cp.zeros((nkv, self.max_context, D), cp.float32),
                                       cp.zeros((nkv, self.max_context, D), cp.float32))
                # one-token steps of runs of resident layers replay a recorded CUDA graph (offload/gpu_graph.py)
                eligible = [self.where.get(layer_group(i)) == GPU and
                            layer_graph_ok(c, self._resident.get(layer_group(i), {}), i) for i in range(c.num_layers)]
                self._eligible = eligible
                self.graphs = DecodeGraphs(cp, ops, c, self.stream, self.max_context, eligible) \
                    if any(eligible) else None
                runs = prefill_runs(c, [self.where.get(layer_group(i)) == GPU for i in range(c.num_layers)])
                self.prefill_graphs = PrefillGraphs(cp, self.stream, runs, self.pool, self.prompt_pool,
                                                    self._balance, self._prompt_freed, self.max_context,
                                                    placement.prefill_chunk or GPU_PREFILL_CHUNK, c.hidden_size,
                                                    c.head_dim) if runs else None
            self.stream.synchronize()
        except cp.cuda.memory.OutOfMemoryError as e:
            self.close()
            raise BudgetError(f"the GPU placement's weights and KV cache do not fit its arena of "
                              f"{placement.arena_bytes} bytes ({e}); this is a planner bug, please report") from None
        # copies made at load (zero-copy: the resident weights were placed once in mapped host memory, no copy)
        placed = sum(t.nbytes for g in self._resident.values() for t in g.values())
        if self.zero_copy:
            streamed_1d = sum(t.nbytes for g in self._streamed for t in self._resident.get(g, {}).values())
            self.mapped_bytes = placed - streamed_1d
            self._pool_limit = max(1, placement.arena_bytes - self.mapped_bytes)
        self._balance()
        self.load_h2d_bytes = placed - self.mapped_bytes
        self.h2d_bytes = 0
        self._note_pool()

    # -- the engine's interface ---------------------------------------------------------------------------------
    def runs(self, i: int) -> bool:
        """True when layer ``i`` computes on the GPU (resident or streamed)."""
        return self.where.get(layer_group(i), CPU) != CPU

    def layer(self, i: int, x: Any, pos: np.ndarray, rope: tuple[np.ndarray, np.ndarray] | None,
              cache: Any = None) -> Any:
        """Layer ``i`` for hidden states ``x`` ``[T, H]`` (numpy from a CPU layer, or a device array) at positions
        ``pos`` of the sequence whose CPU-side KV cache is ``cache``; returns a device array when layer ``i + 1``
        is on the GPU too, else numpy. The GPU KV cache holds one sequence: continuing another sequence than the
        last one written (a different ``cache`` past position 0) is refused rather than answered wrongly."""
        cp, c = self.cp, self.config
        if i in self._graph_skip:  # computed by this step's graph launch
            self._graph_skip.discard(i)
            return self._handoff(i, x)
        if int(np.size(pos)) == 1 and self.graphs is not None and self.graphs_enabled:
            end = self.graphs.run_end(i)
            if end is not None:
                return self._graph_step(i, end, x, pos, rope, cache)
        elif int(np.size(pos)) > 1 and self.prefill_graphs is not None and self.prefill_graphs_enabled:
            end = self.prefill_graphs.run_end(i)
            if end is not None:
                out = self._prefill_graph_step(i, end, x, pos, rope, cache)
                if out is not None:
                    return out
        try:
            if i == self._first_gpu_layer():
                self._start(pos, cache)
            with self.stream, self._alloc():
                xd = self._to_device(x)
                g = layer_group(i)
                w = dict(self._resident[g])
                slot = None
                if self.where[g] == STREAM:
                    slot = self._acquire(g)
                    w.update(self._slots[slot])
                self._block(i, w, xd, pos, self._tables(rope))
                if slot is not None:
                    self._compute_done[slot] = self.stream.record()
                self._note_pool()
                if self.runs(i + 1) or (i + 1 == c.num_layers and self.has_head):
                    return xd
                return self._to_host(xd)
        except cp.cuda.memory.OutOfMemoryError as e:
            raise BudgetError(f"a {int(np.size(pos))}-token step needs more GPU workspace than the plan's arena of "
                              f"{self.placement.arena_bytes} bytes ({e}); use a shorter prompt chunk or a larger "
                              "--gpu-budget") from None

    def _handoff(self, i: int, xd: Any) -> Any:
        """Layer ``i``'s output: the device array when layer ``i + 1`` (or the head) is on the GPU, else numpy."""
        if self.runs(i + 1) or (i + 1 == self.config.num_layers and self.has_head):
            return xd
        with self.stream:
            return self._to_host(xd)

    def use_fused_kernels(self, on: bool) -> None:
        """Record the decode graphs with the fused kernels (offload/gpu_fused.py; the default) or with the 12
        separate kernels a layer (the benchmark's A/B); graphs are re-recorded at the next step."""
        if self.graphs is not None:
            self.graphs = DecodeGraphs(self.cp, self.ops, self.config, self.stream, self.max_context,
                                       self._eligible, fused=on)

    def _graph_step(self, i: int, end: int, x: Any, pos: np.ndarray, rope: tuple[np.ndarray, np.ndarray] | None,
                    cache: Any) -> Any:
        """One token through layers ``i .. end - 1`` by the recorded graph (the layers after ``i`` return at once)."""
        p0 = int(pos[0])
        if i == self._first_gpu_layer():
            self._start(pos, cache)
        self._check_room(p0 + 1)
        assert self.graphs is not None
        out, nbytes = self.graphs.launch(i, x, p0, rope, self._resident, self._kv)
        if not self.unified:
            self.h2d_bytes += nbytes
        self._graph_skip = set(range(i + 1, end))
        self._note_pool()
        return self._handoff(i, out)

    def _prefill_graph_step(self, i: int, end: int, x: Any, pos: np.ndarray,
                            rope: tuple[np.ndarray, np.ndarray] | None, cache: Any) -> Any:
        """A prompt chunk through layers ``i .. end - 1`` by a recorded graph (offload/gpu_prefill_graph.py), or
        None when this chunk runs eagerly (the caller then computes layer ``i``)."""
        self._check_room(int(pos[-1]) + 1)
        first = i == self._first_gpu_layer()
        assert self.prefill_graphs is not None
        with self.stream:
            self.ops.blas.handle()  # this stream's cuBLAS handle and workspace exist before any recording
        try:
            got = self.prefill_graphs.launch(i, x, pos, rope, self._graph_block,
                                             before=(lambda: self._start(pos, cache)) if first else None)
        except self.cp.cuda.memory.OutOfMemoryError as e:
            raise BudgetError(f"a {int(np.size(pos))}-token prefill graph needs more GPU memory than the plan's "
                              f"arena of {self.placement.arena_bytes} bytes ({e}); use a shorter prompt chunk or a "
                              "larger --gpu-budget") from None
        if got is None:
            return None
        out, nbytes = got
        if not self.unified:
            self.h2d_bytes += nbytes
        self._step_tables.clear()  # tables uploaded before the replay may lie where it wrote: upload them again
        self._graph_skip = set(range(i + 1, end))
        self._note_pool()
        return self._handoff(i, out)

    def _graph_block(self, i: int, x: Any, pos: np.ndarray, tables: tuple[Any, Any] | None) -> None:
        """Layer ``i`` (resident, dense) on device ``x`` in place: what a prefill graph records."""
        self._block(i, self._resident[layer_group(i)], x, pos, tables)

    def head(self, x: Any) -> np.ndarray:
        """Final norm and head of ``x`` ``[R, H]`` -> float32 logits ``[R, V]`` on the host."""
        c = self.config
        if int(x.shape[0]) > 1 and self._step_rows == 1:  # a head-only placement's prompt rows
            self._step_rows = int(x.shape[0])
            self._balance()
        with self.stream, self._alloc():
            xd = self._to_device(x)
            w = self._resident[HEAD]
            h = self.ops.rmsnorm(xd, w[FINAL_NORM].data, c.rms_norm_eps)
            hw = w.get(LM_HEAD) or self._resident.get(EMBED, {}).get(EMBED)
            logits = self.ops.linear(h, hw)
            out = self._to_host(logits)
        return out

    # -- internals ----------------------------------------------------------------------------------------------
    def _check_room(self, end: int) -> None:
        """A step writing KV positions up to ``end`` (exclusive) must fit the GPU KV cache."""
        if end > self.max_context:
            raise BudgetError(f"position {end} is past the GPU KV cache of {self.max_context} positions (planned "
                              "--max-context); raise it")

    def _first_gpu_layer(self) -> int:
        return next(i for i in range(self.config.num_layers) if self.runs(i))

    def _start(self, pos: np.ndarray, cache: Any) -> None:
        """The first GPU layer of a pass: check the GPU KV cache continues ``cache``'s sequence, begin the step."""
        owner = id(cache)
        if owner != self._owner and int(pos[0]) > 0:
            raise BudgetError("the GPU KV cache holds another sequence than this KV cache continues "
                              "(one sequence at a time on the GPU); start it from position 0")
        self._owner = owner
        self._graph_skip.clear()
        self._step_rows = int(np.size(pos))
        if self._step_rows > 1:  # the main pool's cached blocks back to the device: room for the prompt pool
            self.stream.synchronize()
            self.pool.free_all_blocks()
        self._balance()
        self._begin_step(pos)

    def _balance(self) -> None:
        """Split the arena between the main and the prompt pool: each may grow into what the other does not
        hold (CuPy's limit 0 means none, hence at least 1 byte)."""
        main, prompt = int(self.pool.total_bytes()), int(self.prompt_pool.total_bytes())
        self.pool.set_limit(size=max(1, self._pool_limit - prompt))
        self.prompt_pool.set_limit(size=max(1, self._pool_limit - main))

    def _alloc(self) -> Any:
        """The allocator of this step's temporaries: the prompt pool for prompt rows, else the main pool."""
        return self.cp.cuda.using_allocator(self.prompt_pool.malloc) if self._step_rows > 1 else nullcontext()

    def _prompt_block(self, size: int) -> Any:
        """A new device block for the prompt pool (cudaMalloc), its release counted in ``_prompt_freed``."""
        cp = self.cp
        mem = cp.cuda.Memory(size)
        um = cp.cuda.UnownedMemory(mem.ptr, size, _RawBlock(mem, self._prompt_freed), cp.cuda.Device().id)
        return cp.cuda.MemoryPointer(um, 0)

    def _tables(self, rope: tuple[np.ndarray, np.ndarray] | None) -> tuple[Any, Any] | None:
        """This step's RoPE tables on the device (copied once a step per distinct table)."""
        if rope is None:
            return None
        cs = self._step_tables.get(id(rope))
        if cs is None:
            cs = (self.cp.asarray(rope[0]), self.cp.asarray(rope[1]))
            self._step_tables[id(rope)] = cs
            if not self.unified:
                self.h2d_bytes += rope[0].nbytes + rope[1].nbytes
        return cs

    def _begin_step(self, pos: np.ndarray) -> None:
        """Start of a forward pass: forget last step's RoPE tables, start copying the first streamed group."""
        self._step_tables.clear()
        self._slot_of.clear()
        if self._streamed:
            self._issue_copy(self._streamed[0], 0)

    def _issue_copy(self, g: str, slot: int) -> None:
        prev = self._compute_done[slot]
        if prev is not None:
            self.copy_stream.wait_event(prev)
        for n, dst in self._slots[slot].items():
            data, scale = self._pinned[g][self._rename(n, g)]
            dst.data.set(data, stream=self.copy_stream)
            if scale is not None:
                dst.scale.set(scale, stream=self.copy_stream)
            self.h2d_bytes += data.nbytes + (0 if scale is None else scale.nbytes)
        self._copy_done[slot] = self.copy_stream.record()
        self._slot_of[g] = slot

    def _rename(self, slot_name: str, g: str) -> str:
        """A slot tensor's name for layer group ``g`` (slots are keyed by the first streamed layer's names)."""
        first = layer_prefix(int(self._streamed[0].split(".")[1]))
        return layer_prefix(int(g.split(".")[1])) + slot_name[len(first):]

    def _acquire(self, g: str) -> int:
        """Wait (on the compute stream) for ``g``'s copy, then start the next streamed group's copy."""
        slot = self._slot_of.get(g)
        if slot is None:  # not prefetched (first use): copy now
            slot = len(self._slot_of) % 2
            self._issue_copy(g, slot)
        self.stream.wait_event(self._copy_done[slot])
        k = self._streamed.index(g)
        if k + 1 < len(self._streamed):
            self._issue_copy(self._streamed[k + 1], 1 - slot)
        return slot

    def _weights(self, w: dict[str, GpuTensor], p: str, name: str) -> GpuTensor:
        t = w.get(p + name)
        if t is None:  # a streamed layer's matrices sit in a slot under the first streamed layer's names
            first = layer_prefix(int(self._streamed[0].split(".")[1]))
            t = w[first + name]
        return t

    def _vec(self, w: dict[str, GpuTensor], name: str) -> Any:
        t = w.get(name)
        return None if t is None else t.data

    def _to_device(self, x: Any) -> Any:
        if isinstance(x, np.ndarray):
            if not self.unified:
                self.h2d_bytes += x.nbytes
            return self.cp.asarray(np.ascontiguousarray(x, np.float32))
        return x

    def _to_host(self, x: Any) -> np.ndarray:
        out = self.cp.asnumpy(x, stream=self.stream)
        self.stream.synchronize()
        if not self.unified:
            self.d2h_bytes += out.nbytes
        return out

    def _block(self, i: int, w: dict[str, GpuTensor], x: Any, pos: np.ndarray, cs: tuple[Any, Any] | None) -> None:
        """Attention and FFN of layer ``i`` on ``x`` ``[T, H]`` in place (residual adds fused into wo / down);
        ``cs``: the positions' RoPE (cos, sin) tables on the device, None for no rotation."""
        cp, ops, c = self.cp, self.ops, self.config
        p = layer_prefix(i)
        W = lambda n: self._weights(w, p, n)  # noqa: E731
        T, D, nh, nkv = int(x.shape[0]), c.head_dim, c.num_heads, c.num_kv_heads
        mult = 1.0 if c.residual_multiplier == 1 else float(c.residual_multiplier)
        h = ops.rmsnorm(x, w[p + "attn_norm"].data, c.rms_norm_eps)
        q, k, v = ops.linears(h, [W("wq"), W("wk"), W("wv")], [self._vec(w, p + b) for b in ("bq", "bk", "bv")])
        q, k, v = q.reshape(T, nh, D), k.reshape(T, nkv, D), v.reshape(T, nkv, D)
        if c.qk_norm:
            if c.qk_norm_per_head:
                q = ops.rmsnorm(q, w[p + "q_norm"].data, c.rms_norm_eps)
                k = ops.rmsnorm(k, w[p + "k_norm"].data, c.rms_norm_eps)
            else:
                q = ops.rmsnorm(q.reshape(T, -1), w[p + "q_norm"].data, c.rms_norm_eps).reshape(T, nh, D)
                k = ops.rmsnorm(k.reshape(T, -1), w[p + "k_norm"].data, c.rms_norm_eps).reshape(T, nkv, D)
        if c.clip_qkv is not None:
            q, k, v = (cp.clip(a, -c.clip_qkv, c.clip_qkv) for a in (q, k, v))
        if cs is not None:
            q, k = cp.ascontiguousarray(q), cp.ascontiguousarray(k)
            ops.rope(q, *cs)
            ops.rope(k, *cs)
        p0, p1 = int(pos[0]), int(pos[-1]) + 1
        self._check_room(p1)
        Kc, Vc = self._kv[i]
        Kc[:, p0:p1] = k.transpose(1, 0, 2)
        Vc[:, p0:p1] = v.transpose(1, 0, 2)
        window = c.window_of(i) or 0
        start = 0 if not window else max(0, p0 - window + 1)
        scale = D ** -0.5 if c.attention_scale is None else float(c.attention_scale)
        o = ops.attention(q, Kc[:, start:p1], Vc[:, start:p1], p0, start, window, scale,
                          float(c.attn_logit_softcap or 0.0))
        ops.linear(o.reshape(T, nh * D), W("wo"), out=x, mult=mult)
        h = ops.rmsnorm(x, w[p + "ffn_norm"].data, c.rms_norm_eps)
        if c.is_moe_layer(i):  # offload/gpu_moe.py: GPU-resident experts here, the others on the CPU
            f, n_cpu = moe_ffn(ops, c, i, w, h, self._resident, self.cpu_expert, self._to_host, self._to_device)
            self.cpu_expert_calls += n_cpu
            x += f if mult == 1.0 else f * np.float32(mult)
            return
        a = ops.act_mul(*ops.linears(h, [W("ffn.gate"), W("ffn.up")]), c.hidden_act)
        ops.linear(a, W("ffn.down"), out=x, mult=mult)

    def _note_pool(self) -> None:
        self.peak_pool_bytes = max(self.peak_pool_bytes,
                                   int(self.pool.total_bytes()) + int(self.prompt_pool.total_bytes()))

    def stats(self) -> dict[str, Any]:
        """Measured: bytes copied host-to-device at load and during the run, device-to-host, the pool's peak."""
        return {"load_h2d_bytes": self.load_h2d_bytes, "run_h2d_bytes": self.h2d_bytes,
                "run_d2h_bytes": self.d2h_bytes, "gpu_pool_peak_bytes": self.peak_pool_bytes,
                "arena_bytes": self.placement.arena_bytes, "unified": self.unified,
                "zero_copy": self.zero_copy, "mapped_weight_bytes": self.mapped_bytes,
                "cpu_expert_calls": self.cpu_expert_calls,
                "prefill_graph_launches": 0 if self.prefill_graphs is None else self.prefill_graphs.launches,
                "prefill_graph_note": "" if self.prefill_graphs is None else self.prefill_graphs.fail_reason}

    def close(self) -> None:
        """Free every device buffer and lift the pool limit."""
        self._resident.clear()
        self._slots.clear()
        self._kv.clear()
        self._pinned.clear()
        self._step_tables.clear()
        self.graphs = None
        if self.prefill_graphs is not None:
            self.prefill_graphs.close()
            self.prefill_graphs = None
        self.prompt_pool.free_all_blocks()
        self.pool.free_all_blocks()
        self.pool.set_limit(size=0)
