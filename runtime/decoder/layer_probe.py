"""The CPU engine's own layer step, timed (issue 17, gap (a)): what the CPU/GPU split's cost model charges a CPU
layer.

``cpu_layer_step_seconds``: one decode token through one whole layer as :class:`~edgespool.runtime.decoder.engine.Engine`
runs it on the CPU (norms, q/k/v, RoPE, KV write, attention, FFN, residual adds and the engine's Python around
them), weights in the kernels' own layout (``prepare_weight``: the C block kernels' x16 repacking), over a cache of
``context`` positions; not the layer's matrix products alone (0.49-0.58 ms on the H200 machine's 16 cores, where
the engine's real step took ~1 ms).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ...kernels.quant import QTensor
from ...kernels.table import KernelTable
from ..bundle.config import ModelConfig
from ..bundle.names import layer_group

PROBE_CONTEXT = 64  # positions already in the KV cache when a decode step is timed (the benchmark's prompt)


class _OneLayerSource:
    """A weight source holding one layer's tensors (what the engine's ``get`` / ``release`` calls see)."""

    serves_fused_decode = True  # the same tensors every call: the engine's one-C-call layer times what it runs

    def __init__(self, config: ModelConfig, group: str, tensors: dict[str, Any]) -> None:
        self.config, self._group, self._tensors = config, group, tensors

    def get(self, group: str) -> dict[str, Any]:
        if group != self._group:
            raise KeyError(group)
        return self._tensors

    def release(self, group: str) -> None:
        pass

    def hint(self, groups: list[str]) -> None:
        pass

    def on_hidden(self, layer: int, hidden: Any) -> None:
        pass


def last_level_cache_bytes() -> int:
    """This CPU's largest cache (sysfs ``cpu0/cache/index*/size``), 0 when it cannot be read."""
    best = 0
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            txt = (d / "size").read_text().strip().upper()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1:], 1)
        digits = txt.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * mult)
    return best


def cpu_layer_step_seconds(cfg: ModelConfig, i: int, tensors: dict[str, Any], kernels: KernelTable, *,
                           kv_dtype: str = "f32", context: int = PROBE_CONTEXT, reps: int = 7,
                           rounds: int = 3, model_bytes: int | None = None) -> float:
    """Lowest of ``rounds`` median CPU seconds of one decode token through layer ``i`` run by the engine (module docstring);
    ``tensors``: the layer's group as read from the bundle (prepared here as the engine's source prepares it).

    What a layer adds to a token: the engine's fixed cost of a forward call (embedding-free here: RoPE tables,
    positions, the cache's bookkeeping; measured with zero layers) is taken off, since a whole model pays it once
    a token, not once a layer. And where ``model_bytes`` (the resident weights) exceed the last-level cache, the
    caches are flushed before each timed step (a read through twice the cache's size), because in a real decode
    step every layer's weights come from DRAM, while one layer probed again and again sits in the cache: on the
    H100 host (2026-12-08) the probe read 0.29 ms a SmolLM2-135M layer (0.09 measured in the run) and 10-45 % low
    on the 1.5B."""
    from .engine import Engine
    from .kvcache import KVCache

    prepare = getattr(kernels.backend, "prepare_weight", None)
    w = {n: prepare(t) if prepare is not None and isinstance(t, QTensor) else t for n, t in tensors.items()}
    eng = Engine(_OneLayerSource(cfg, layer_group(i), w), kernels, kv_dtype=kv_dtype)  # type: ignore[arg-type]
    timed = (rounds + 2) * reps  # steps timed below (each advances the cache by one position)
    cache = KVCache(cfg, context + timed + 200, eng.kv_dtype)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((context, cfg.hidden_size)).astype(np.float32)
    eng.forward(None, cache, hidden=x0, first_layer=i, layers=i + 1, hidden_out=True)  # type: ignore[arg-type]
    x = x0[-1:].copy()
    eng.forward(None, cache, hidden=x, first_layer=i, layers=i + 1, hidden_out=True)  # type: ignore[arg-type]
    t_end = time.perf_counter() + 0.05  # 50 ms of steps first: worker threads spinning, clocks up, caches warm
    while time.perf_counter() < t_end and cache.length < cache.max_len - timed - 1:
        eng.forward(None, cache, hidden=x, first_layer=i, layers=i + 1, hidden_out=True)  # type: ignore
    llc = last_level_cache_bytes()
    flush = np.ones(min(2 * llc, 1 << 30) // 8, np.int64) if model_bytes and llc and model_bytes > llc else None

    def step(n_layers: int, cold: bool) -> float:
        if cold and flush is not None:
            flush.sum()  # evict the layer's weights: the real step reads them from DRAM
        t0 = time.perf_counter()
        eng.forward(None, cache, hidden=x, first_layer=i, layers=i + n_layers, hidden_out=True)  # type: ignore
        return time.perf_counter() - t0

    fixed = float(np.median([step(0, False) for _ in range(2 * reps)]))  # the forward call without a layer
    best = float("inf")
    for _ in range(rounds):  # the lowest of ``rounds`` medians: a burst of other threads' work skews one round
        best = min(best, float(np.median([step(1, True) for _ in range(reps)])))
    return max(best - fixed, 0.25 * best)
