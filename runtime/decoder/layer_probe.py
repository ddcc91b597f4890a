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


def cpu_layer_step_seconds(cfg: ModelConfig, i: int, tensors: dict[str, Any], kernels: KernelTable, *,
                           kv_dtype: str = "f32", context: int = PROBE_CONTEXT, reps: int = 7,
                           rounds: int = 3) -> float:
    """Lowest of ``rounds`` median CPU seconds of one decode token through layer ``i`` run by the engine (module docstring);
    ``tensors``: the layer's group as read from the bundle (prepared here as the engine's source prepares it)."""
    from .engine import Engine
    from .kvcache import KVCache

    prepare = getattr(kernels.backend, "prepare_weight", None)
    w = {n: prepare(t) if prepare is not None and isinstance(t, QTensor) else t for n, t in tensors.items()}
    eng = Engine(_OneLayerSource(cfg, layer_group(i), w), kernels, kv_dtype=kv_dtype)  # type: ignore[arg-type]
    cache = KVCache(cfg, context + rounds * reps + 200, eng.kv_dtype)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((context, cfg.hidden_size)).astype(np.float32)
    eng.forward(None, cache, hidden=x0, first_layer=i, layers=i + 1, hidden_out=True)  # type: ignore[arg-type]
    x = x0[-1:].copy()
    eng.forward(None, cache, hidden=x, first_layer=i, layers=i + 1, hidden_out=True)  # type: ignore[arg-type]
    t_end = time.perf_counter() + 0.05  # 50 ms of steps first: worker threads spinning, clocks up, caches warm
    while time.perf_counter() < t_end and cache.length < cache.max_len - rounds * reps - 1:
        eng.forward(None, cache, hidden=x, first_layer=i, layers=i + 1, hidden_out=True)  # type: ignore
    best = float("inf")
    for _ in range(rounds):  # the lowest of ``rounds`` medians: a burst of other threads' work skews one round
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            eng.forward(None, cache, hidden=x, first_layer=i, layers=i + 1, hidden_out=True)  # type: ignore
            ts.append(time.perf_counter() - t0)
        best = min(best, float(np.median(ts)))
    return best
