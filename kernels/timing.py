"""Where a decode step's time goes: a :class:`~edgespool.kernels.table.KernelTable` whose linear and attention
kernels are wrapped with timers (``edgespool bench``'s per-op split).

:func:`timed_table` returns the wrapped table and an :class:`OpTimes` that accumulates seconds and calls per
bucket: ``lm_head`` (a linear whose output width is the vocabulary), ``linear <scheme>`` (every other linear, by
weight scheme; a bias add is not inside: it counts as other) and ``attention`` (the table's attention, compiled or numpy). Whatever a step
spends outside them (RMSNorm, RoPE, SwiGLU, residual adds, embedding lookup, KV-cache writes, sampling, Python
dispatch) is the step time minus these, reported by the caller as ``other``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .quant import QTensor
from .table import KernelTable


@dataclass
class OpTimes:
    """Seconds and call counts per bucket (see the module docstring)."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, bucket: str, dt: float) -> None:
        self.seconds[bucket] = self.seconds.get(bucket, 0.0) + dt
        self.calls[bucket] = self.calls.get(bucket, 0) + 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def split(self, total_s: float, steps: int) -> dict[str, Any]:
        """Per-step milliseconds and shares of ``total_s`` (the wall time of ``steps`` steps), ``other`` included."""
        out: dict[str, Any] = {}
        for k in sorted(self.seconds, key=lambda b: -self.seconds[b]):
            out[k] = {"ms_per_step": 1e3 * self.seconds[k] / steps, "share": self.seconds[k] / total_s,
                      "calls_per_step": self.calls[k] / steps}
        rest = total_s - sum(self.seconds.values())
        out["other"] = {"ms_per_step": 1e3 * rest / steps, "share": rest / total_s, "calls_per_step": None}
        return out


class _TimedLinear:
    def __init__(self, kernel: Any, scheme: str, vocab: int, times: OpTimes):
        self.kernel, self.scheme, self.vocab, self.times = kernel, scheme, vocab, times
        self.workspace_bytes = int(getattr(kernel, "workspace_bytes", 0) or 0)

    def __call__(self, x: np.ndarray, w: QTensor) -> np.ndarray:
        t0 = time.perf_counter()
        y = self.kernel(x, w)
        self.times.add("lm_head" if int(w.shape[0]) == self.vocab else f"linear {self.scheme}",
                       time.perf_counter() - t0)
        return y


def timed_table(table: KernelTable, vocab_size: int) -> tuple[KernelTable, OpTimes]:
    """``table`` with timed linear and attention kernels (same results), and the :class:`OpTimes` they fill."""
    times = OpTimes()
    lin = {s: _TimedLinear(k, s, vocab_size, times) for s, k in table.linear_kernels.items()}

    def attention(q, k, v, q_pos, k_pos, sliding_window=None, scale=None):
        t0 = time.perf_counter()
        out = table.attention(q, k, v, q_pos, k_pos, sliding_window, scale)
        times.add("attention", time.perf_counter() - t0)
        return out

    return table.replace(linear_kernels=lin, attention_kernel=attention), times
