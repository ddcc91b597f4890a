"""The KV cache: preallocated keys and values of every layer, head-major for batched attention.

Layout (llama2.c habit: one struct per lifetime; this one lives for one generation)::

    k[layer]  [n_kv_heads, max_len, head_dim]   keys after RoPE, stored as ``dtype``
    v[layer]  [n_kv_heads, max_len, head_dim]   values
    length                                      positions 0..length-1 are filled (the same for every layer)

``dtype`` (:data:`KV_DTYPES`): ``f16`` (the default: half the memory of f32), ``f32`` (exactness tests), or
``q8_0`` (llama.cpp's block format: 32 int8 values + one float16 scale per block of the head dimension; needs
``head_dim % 32 == 0``). The attention kernels read float32: :meth:`view` of an f16 / q8_0 cache converts the
positions asked for into one layer's float32 scratch (``2 * n_kv * max_len * head_dim * 4`` bytes, counted in the
plan's workspace) and returns views of it; an f32 cache returns views of its own arrays.

The engine writes a step's T new positions into every layer, then calls :meth:`advance`; :meth:`truncate` rolls
the length back (rejected speculative drafts).
"""
from __future__ import annotations

import numpy as np

from ...errors import OptionError
from ...kernels.attention import KV_DTYPES, KV_Q8_BLOCK, check_kv_dtype, kv_bytes_per_value
from ..bundle.config import ModelConfig

__all__ = ["KVCache", "KV_DTYPES", "check_kv_dtype", "kv_bytes_per_value"]

Q8_BLOCK = KV_Q8_BLOCK


class KVCache:
    """Preallocated keys/values for ``max_len`` positions of one sequence, stored as ``dtype``."""

    def __init__(self, config: ModelConfig, max_len: int, dtype: str = "f16") -> None:
        if max_len < 1:
            raise OptionError(f"KV cache length must be >= 1, got {max_len}")
        self.dtype = check_kv_dtype(dtype, config.head_dim)
        L, nkv, D = config.num_layers, config.num_kv_heads, config.head_dim
        shape = (L, nkv, max_len, D)
        self.k_scale: np.ndarray | None = None
        self.v_scale: np.ndarray | None = None
        if dtype == "q8_0":
            self.k = np.zeros(shape, dtype=np.int8)
            self.v = np.zeros(shape, dtype=np.int8)
            sshape = (L, nkv, max_len, D // Q8_BLOCK)
            self.k_scale = np.zeros(sshape, dtype=np.float16)
            self.v_scale = np.zeros(sshape, dtype=np.float16)
        else:
            np_dt = np.float32 if dtype == "f32" else np.float16
            self.k = np.zeros(shape, dtype=np_dt)
            self.v = np.zeros(shape, dtype=np_dt)
        self._scratch = None if dtype == "f32" else np.empty((2, nkv, max_len, D), dtype=np.float32)
        self.max_len = max_len
        self.length = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache arrays (without the float32 view scratch)."""
        n = self.k.nbytes + self.v.nbytes
        if self.k_scale is not None and self.v_scale is not None:
            n += self.k_scale.nbytes + self.v_scale.nbytes
        return int(n)

    @property
    def scratch_bytes(self) -> int:
        """Bytes of the float32 scratch :meth:`view` converts into (0 for an f32 cache)."""
        return 0 if self._scratch is None else int(self._scratch.nbytes)

    def check_room(self, n: int) -> None:
        """Raise if ``n`` more positions do not fit."""
        if self.length + n > self.max_len:
            raise OptionError(f"context length exceeded: {self.length} cached + {n} new tokens > KV cache size "
                              f"{self.max_len}; use a larger max_len / shorter prompt or fewer tokens")

    @staticmethod
    def _q8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """q8_0 of ``x`` ``[..., D]``: int8 values and float16 scales per 32 (ggml's quantize_row_q8_0)."""
        b = x.reshape(*x.shape[:-1], -1, Q8_BLOCK)
        amax = np.abs(b).max(axis=-1)
        d = (amax / np.float32(127)).astype(np.float32)
        inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
        q = np.rint(b * inv[..., None]).astype(np.int8)
        return q.reshape(x.shape), d.astype(np.float16)

    def write(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store the new tokens' keys/values ``[T, n_kv, D]`` of ``layer`` at positions ``length..length+T-1``."""
        T = k.shape[0]
        s = slice(self.length, self.length + T)
        kt, vt = k.transpose(1, 0, 2), v.transpose(1, 0, 2)
        if self.dtype == "q8_0":
            assert self.k_scale is not None and self.v_scale is not None
            self.k[layer, :, s], self.k_scale[layer, :, s] = self._q8(kt)
            self.v[layer, :, s], self.v_scale[layer, :, s] = self._q8(vt)
            return
        self.k[layer, :, s] = kt
        self.v[layer, :, s] = vt

    def view(self, layer: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values ``[n_kv, end-start, D]`` float32 of positions ``start..end-1`` (views of the cache, or of
        the conversion scratch for f16 / q8_0: valid until the next :meth:`view`)."""
        if self._scratch is None:
            return self.k[layer, :, start:end], self.v[layer, :, start:end]
        n = end - start
        K, V = self._scratch[0, :, :n], self._scratch[1, :, :n]
        if self.dtype == "f16":
            K[...] = self.k[layer, :, start:end]
            V[...] = self.v[layer, :, start:end]
        else:
            assert self.k_scale is not None and self.v_scale is not None
            for dst, q, d in ((K, self.k, self.k_scale), (V, self.v, self.v_scale)):
                qb = q[layer, :, start:end].reshape(q.shape[1], n, -1, Q8_BLOCK)
                dst.reshape(q.shape[1], n, -1, Q8_BLOCK)[...] = qb * d[layer, :, start:end, :, None].astype(np.float32)
        return K, V

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as filled (after every layer wrote them)."""
        self.length += n

    def copy_prefix_from(self, other: "KVCache", n: int) -> None:
        """Take positions ``0..n-1`` of ``other`` (same model and format, any ``max_len``): a chat turn that
        outgrows its kept cache keeps what it had instead of recomputing it. Sets :attr:`length` to ``n``."""
        if self.dtype != other.dtype or self.k.shape[:2] != other.k.shape[:2] or self.k.shape[3] != other.k.shape[3]:
            raise OptionError("KV cache copy between caches of different models or formats")
        if not 0 <= int(n) <= min(other.length, self.max_len):
            raise OptionError(f"KV cache copy of {n} positions: the source holds {other.length}, room {self.max_len}")
        n = int(n)
        self.k[:, :, :n] = other.k[:, :, :n]
        self.v[:, :, :n] = other.v[:, :, :n]
        if self.k_scale is not None and other.k_scale is not None and other.v_scale is not None:
            self.k_scale[:, :, :n] = other.k_scale[:, :, :n]
            self.v_scale[:, :, :n] = other.v_scale[:, :, :n]  # type: ignore[index]
        self.length = n

    def reset(self) -> None:
        """Forget every position (the arrays are reused)."""
        self.length = 0

    def truncate(self, n: int) -> None:
        """Forget positions ``n..length-1`` (speculative decoding rolls back rejected drafts): the next
        :meth:`write` overwrites them, and :meth:`view` never reads past ``length``. Works the same for f16, f32
        and q8_0 (values and scales live at the same positions); ``n`` must be in ``0..length``."""
        if not 0 <= int(n) <= self.length:
            raise OptionError(f"KV cache truncate({n}): must be in 0..{self.length} (the filled positions)")
        self.length = int(n)
