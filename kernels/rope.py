"""Rotary position embeddings (RoPE) in Hugging Face's convention, numpy reference.

Convention: the head dimension ``D`` is split into two halves; pair ``(x[j], x[j + D/2])`` is rotated by angle
``pos * inv_freq[j]`` (HF's ``rotate_half``). Checkpoints in HF layout use this convention as they are. GGUF files
written by llama.cpp's converter permute the rows of ``wq``/``wk`` of the llama architecture to the interleaved
convention (pairs ``(x[2j], x[2j+1])``); a GGUF importer must undo that permutation so that the canonical weights
stay in this (HF) convention.

Frequency variants (``rope_scaling["rope_type"]``), as computed by transformers' ``ROPE_INIT_FUNCTIONS``:
``default`` (None), ``linear``, ``dynamic`` (NTK, recomputed for the current sequence length), ``llama3`` and
``yarn``. Frequencies are computed in float32 exactly as transformers does, so angles match bit-for-bit where the
libraries' ``pow``/``cos`` agree.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


def rope_type(scaling: dict[str, Any] | None) -> str:
    """The rope type named by an HF ``rope_scaling``/``rope_parameters`` dict (``default`` for None)."""
    if not scaling:
        return "default"
    return str(scaling.get("rope_type", scaling.get("type", "default")))


def _base_inv_freq(dim: int, theta: float) -> np.ndarray:
    # transformers: 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), all float32
    exps = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (np.float32(1.0) / np.power(np.float32(theta), exps, dtype=np.float32)).astype(np.float32)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None = None,
                  max_position_embeddings: int = 4096, seq_len: int | None = None) -> tuple[np.ndarray, float]:
    """Inverse frequencies ``[head_dim // 2]`` (float32) and the attention factor that scales cos/sin.

    ``seq_len`` (the current sequence length, max position + 1) only matters for ``dynamic``."""
    kind = rope_type(scaling)
    dim = head_dim
    if scaling and scaling.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported")
    if kind == "default":
        return _base_inv_freq(dim, theta), 1.0
    assert scaling is not None
    if kind == "linear":
        return (_base_inv_freq(dim, theta) / np.float32(scaling["factor"])).astype(np.float32), 1.0
    if kind == "dynamic":
        factor = float(scaling["factor"])
        L = max(seq_len or max_position_embeddings, max_position_embeddings)
        base = theta * ((factor * L / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(dim, base), 1.0
    if kind == "llama3":
        inv = _base_inv_freq(dim, theta)
        factor = np.float32(scaling["factor"])
        lo, hi = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling.get("original_max_position_embeddings", max_position_embeddings))
        low_wl, high_wl = old / lo, old / hi
        wavelen = (2 * math.pi / inv).astype(np.float32)
        inv_l = np.where(wavelen > low_wl, inv / factor, inv).astype(np.float32)
        smooth = ((old / wavelen - lo) / (hi - lo)).astype(np.float32)
        smoothed = ((1 - smooth) * inv_l / factor + smooth * inv_l).astype(np.float32)
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        return np.where(medium, smoothed, inv_l).astype(np.float32), 1.0
    if kind == "yarn":
        return _yarn(dim, theta, scaling, max_position_embeddings)
    raise ValueError(f"unsupported rope type {kind!r}; supported: {', '.join(ROPE_TYPES)}")


def _yarn(dim: int, base: float, s: dict[str, Any], max_pos: int) -> tuple[np.ndarray, float]:
    orig = float(s.get("original_max_position_embeddings", max_pos))
    factor = s.get("factor")
    if factor is None:
        factor = max_pos / orig
    factor = float(factor)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    att = s.get("attention_factor")
    if att is None:
        m, mad = s.get("mscale"), s.get("mscale_all_dim")
        att = mscale(factor, m) / mscale(factor, mad) if (m and mad) else mscale(factor)
    beta_fast = s.get("beta_fast") or 32
    beta_slow = s.get("beta_slow") or 1

    def corr_dim(rot: float) -> float:
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    pos_freqs = np.power(np.float32(base), np.arange(0, dim, 2).astype(np.float32) / np.float32(dim),
                         dtype=np.float32)
    extra = np.float32(1.0) / pos_freqs
    inter = np.float32(1.0) / (np.float32(factor) * pos_freqs)
    ext_factor = 1 - ramp
    inv = inter * (1 - ext_factor) + extra * ext_factor
    return inv.astype(np.float32), float(att)


def rope_cos_sin(positions: np.ndarray, inv_freq: np.ndarray, attention_factor: float = 1.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables ``[T, D]`` for integer ``positions`` ``[T]`` (HF: ``emb = cat(freqs, freqs)``)."""
    freqs = np.asarray(positions, dtype=np.float32)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    if attention_factor != 1.0:
        cos, sin = cos * np.float32(attention_factor), sin * np.float32(attention_factor)
    return cos.astype(np.float32), sin.astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate ``x`` (``[T, n_heads, D]``) with tables ``[T, D]``: ``x * cos + rotate_half(x) * sin``."""
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


class Rope:
    """RoPE of one model: caches the cos/sin tables of static rope types; ``dynamic`` recomputes per call."""

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None,
                 max_position_embeddings: int) -> None:
        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling
        self.max_pos = max_position_embeddings
        self.kind = rope_type(scaling)
        self._inv, self._att = rope_inv_freq(head_dim, theta, scaling, max_position_embeddings)
        self._cos = np.zeros((0, head_dim), np.float32)
        self._sin = np.zeros((0, head_dim), np.float32)

    def cos_sin(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """cos/sin tables ``[T, D]`` for ``positions`` (sorted, contiguous in the engine's use)."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.kind == "dynamic":
            inv, att = rope_inv_freq(self.head_dim, self.theta, self.scaling, self.max_pos,
                                     seq_len=int(positions.max()) + 1)
            return rope_cos_sin(positions, inv, att)
        need = int(positions.max()) + 1
        if need > len(self._cos):
            n = max(need, 2 * len(self._cos), 256)
            self._cos, self._sin = rope_cos_sin(np.arange(n), self._inv, self._att)
        return self._cos[positions], self._sin[positions]
