"""The KV cache: preallocated float32 keys and values of every layer, head-major for batched attention.

Layout (llama2.c habit: one struct per lifetime; this one lives for one generation)::

    k[layer]  [n_kv_heads, max_len, head_dim]   float32, keys after RoPE
    v[layer]  [n_kv_heads, max_len, head_dim]   float32
    length                                      positions 0..length-1 are filled (the same for every layer)

The engine writes a step's T new positions into every layer, then calls :meth:`advance`.
"""
from __future__ import annotations

import numpy as np

from ...errors import OptionError
from ..bundle.config import ModelConfig


class KVCache:
    """Preallocated keys/values for ``max_len`` positions of one sequence."""

    def __init__(self, config: ModelConfig, max_len: int) -> None:
        if max_len < 1:
            raise OptionError(f"KV cache length must be >= 1, got {max_len}")
        shape = (config.num_layers, config.num_kv_heads, max_len, config.head_dim)
        self.k = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)
        self.max_len = max_len
        self.length = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache arrays."""
        return int(self.k.nbytes + self.v.nbytes)

    def check_room(self, n: int) -> None:
        """Raise if ``n`` more positions do not fit."""
        if self.length + n > self.max_len:
            raise OptionError(f"context length exceeded: {self.length} cached + {n} new tokens > KV cache size "
                              f"{self.max_len}; use a larger max_len / shorter prompt or fewer tokens")

    def write(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store the new tokens' keys/values ``[T, n_kv, D]`` of ``layer`` at positions ``length..length+T-1``."""
        T = k.shape[0]
        self.k[layer, :, self.length:self.length + T] = k.transpose(1, 0, 2)
        self.v[layer, :, self.length:self.length + T] = v.transpose(1, 0, 2)

    def view(self, layer: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values ``[n_kv, end-start, D]`` of positions ``start..end-1`` (views, no copy)."""
        return self.k[layer, :, start:end], self.v[layer, :, start:end]

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as filled (after every layer wrote them)."""
        self.length += n

    def reset(self) -> None:
        """Forget every position (the arrays are reused)."""
        self.length = 0
