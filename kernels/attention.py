"""Grouped-query attention (GQA), numpy reference for prefill and decode.

Shapes: ``q`` ``[T, n_heads, D]`` for the T new tokens at positions ``q_pos``; ``k``/``v`` ``[n_kv, S, D]`` for
the S keys/values at positions ``k_pos`` (the KV-cache layout: head-major so each head's keys are contiguous). Query
head ``h`` reads KV head ``h // (n_heads // n_kv)`` (HF's ``repeat_kv``). A key is visible to a query when
``k_pos <= q_pos`` (causal) and, with a sliding window ``W``, ``k_pos > q_pos - W`` (HF's sliding-window mask).
Softmax is computed in float32 with the row maximum subtracted. All heads go through one batched matmul. With
``softcap`` (Gemma 2) the scaled scores become ``softcap * tanh(scores / softcap)`` before masking, as transformers.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

# A compiled attention kernel: same arguments as :func:`attention`, returns None when it does not fit (the numpy
# reference then runs). A model's kernel (if any) lives in its KernelTable (edgespool.kernels.table), whose
# ``attention`` method tries it before this module's reference.
AttentionKernel = Callable[..., "np.ndarray | None"]


def attention_mask(q_pos: np.ndarray, k_pos: np.ndarray, sliding_window: int | None = None) -> np.ndarray:
    """Boolean visibility ``[T, S]``: True where query ``t`` may attend to key ``s``."""
    qp = np.asarray(q_pos)[:, None]
    kp = np.asarray(k_pos)[None, :]
    mask = kp <= qp
    if sliding_window:
        mask &= kp > qp - sliding_window
    return mask


SCORE_BYTES = 32 << 20  # long prompts are processed in query blocks whose score matrix stays under this size


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
              sliding_window: int | None = None, scale: float | None = None,
              softcap: float | None = None) -> np.ndarray:
    """Causal GQA: ``q`` ``[T, nh, D]``, ``k``/``v`` ``[nkv, S, D]`` -> ``[T, nh, D]`` float32.

    ``scale`` defaults to ``D ** -0.5``. Every query must see at least one key (true for causal self-attention
    when the new tokens' own keys are included). Long prompts run in blocks of queries so the ``[nh, T, S]`` score
    matrix never exceeds :data:`SCORE_BYTES`. This is the numpy reference; a model's compiled kernel runs through
    :meth:`edgespool.kernels.table.KernelTable.attention`."""
    T, nh, D = q.shape
    S = k.shape[1]
    if T == 1 and S and k_pos[-1] <= q_pos[0] and (not sliding_window or k_pos[0] > q_pos[0] - sliding_window):
        return _attention_decode(q, k, v, scale, softcap)
    block = max(1, SCORE_BYTES // (4 * nh * max(S, 1)))
    if T <= block:
        return _attention_block(q, k, v, q_pos, k_pos, sliding_window, scale, softcap)
    out = np.empty(q.shape, dtype=np.float32)
    for t0 in range(0, T, block):
        out[t0:t0 + block] = _attention_block(q[t0:t0 + block], k, v, q_pos[t0:t0 + block], k_pos,
                                              sliding_window, scale, softcap)
    return out


def compiled_kv_span(q_pos: np.ndarray, k_pos: np.ndarray, T: int, S: int,
                     sliding_window: int | None = None) -> tuple[int, int] | None:
    """For the compiled attention kernels: ``(past, window)`` when the ``T`` query rows and ``S`` keys sit at
    consecutive positions and every query sees a key (``past`` = the first query's offset from the first key,
    ``window`` = the sliding window or 0), else None (the caller falls back)."""
    k0 = int(k_pos[0])
    past = int(q_pos[0]) - k0
    w = int(sliding_window or 0)
    if (int(k_pos[-1]) - k0 != S - 1 or int(q_pos[-1]) - int(q_pos[0]) != T - 1 or past < 0
            or (w and past + T - w >= S)):
        return None
    return past, w


def _softcap(scores: np.ndarray, cap: float | None) -> np.ndarray:
    """``cap * tanh(scores / cap)`` in place (no-op without a cap)."""
    if cap:
        scores /= np.float32(cap)
        np.tanh(scores, out=scores)
        scores *= np.float32(cap)
    return scores


def _attention_block(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
                     sliding_window: int | None, scale: float | None, softcap: float | None) -> np.ndarray:
    T, nh, D = q.shape
    nkv, S, _ = k.shape
    g = nh // nkv
    if scale is None:
        scale = D ** -0.5
    # [T, nkv, g, D] -> [nkv, g*T, D]: each KV head's query group as one matrix (rows ordered (g, t))
    qg = q.reshape(T, nkv, g, D).transpose(1, 2, 0, 3).reshape(nkv, g * T, D)
    scores = np.matmul(qg, k.transpose(0, 2, 1))  # [nkv, g*T, S]
    scores *= np.float32(scale)
    _softcap(scores, softcap)
    mask = attention_mask(q_pos, k_pos, sliding_window)  # [T, S]
    scores = scores.reshape(nkv, g, T, S)
    scores = np.where(mask[None, None], scores, np.float32(-np.inf))
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = np.matmul(scores.reshape(nkv, g * T, S), v)  # [nkv, g*T, D]
    return out.reshape(nkv, g, T, D).transpose(2, 0, 1, 3).reshape(T, nh, D)


def _attention_decode(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float | None,
                      softcap: float | None) -> np.ndarray:
    """One query that sees every given key (decode): the general path without the mask, the same arithmetic."""
    _, nh, D = q.shape
    nkv = k.shape[0]
    scores = np.matmul(q.reshape(nkv, nh // nkv, D), k.transpose(0, 2, 1))  # [nkv, g, S]
    scores *= np.float32(D ** -0.5 if scale is None else scale)
    _softcap(scores, softcap)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return np.matmul(scores, v).reshape(1, nh, D)


# KV cache storage formats the attention path reads (the cache converts f16 / q8_0 to float32 per layer view):
# f16 is the default, f32 is for exactness tests, q8_0 is llama.cpp's 32-value int8 blocks with a float16 scale.
KV_DTYPES = ("f16", "f32", "q8_0")
KV_Q8_BLOCK = 32


def check_kv_dtype(dtype: str, head_dim: int | None = None) -> str:
    """``dtype`` when the KV cache and attention kernels support it (for ``head_dim``), else OptionError."""
    from ..errors import OptionError

    if dtype not in KV_DTYPES:
        raise OptionError(f"--kv-dtype {dtype!r}: the KV cache and attention kernels support "
                          f"{', '.join(KV_DTYPES)}")
    if dtype == "q8_0" and head_dim is not None and head_dim % KV_Q8_BLOCK:
        raise OptionError(f"--kv-dtype q8_0 needs a head dimension divisible by {KV_Q8_BLOCK}; this model's is "
                          f"{head_dim} (use f16 or f32)")
    return dtype


def kv_bytes_per_value(dtype: str) -> float:
    """Stored bytes per cached key/value element in ``dtype`` (q8_0: 34 bytes per 32 values)."""
    return {"f32": 4.0, "f16": 2.0, "q8_0": 34.0 / 32.0}[check_kv_dtype(dtype)]
