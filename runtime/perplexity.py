"""Perplexity the way llama.cpp's ``llama-perplexity`` measures it, so the two figures are comparable.

The text is tokenised once (with BOS when the model adds one). It is cut into ``n_chunk = len(tokens) // ctx``
chunks of ``ctx`` tokens; each chunk is evaluated from an empty cache with its first token replaced by BOS (when
the model adds BOS), and only the second half is scored: the logits at positions ``first = ctx // 2`` ..
``ctx - 2`` predict the tokens after them (``ctx - 1 - first`` tokens a chunk). The result is
``exp(total NLL / scored tokens)``; log-softmax is accumulated in float64 (llama.cpp: double sums). Needs at least
``2 * ctx`` tokens, like llama.cpp.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import OptionError


@dataclass(frozen=True)
class PerplexityResult:
    """``ppl`` over ``scored`` tokens of ``chunks`` chunks of ``ctx`` tokens; ``running`` = ppl after each chunk."""

    ppl: float
    nll: float  # mean negative log-likelihood (nats per token)
    scored: int
    chunks: int
    ctx: int
    tokens: int  # tokens in the whole text
    running: tuple[float, ...] = field(default=())

    def to_dict(self) -> dict:
        return asdict(self)


def chunks(ids: Sequence[int], ctx: int, bos: int | None, max_chunks: int | None = None) -> list[list[int]]:
    """The evaluation windows of llama-perplexity: consecutive ``ctx``-token slices of ``ids``, first token
    replaced by ``bos`` when given."""
    if ctx < 4:
        raise OptionError(f"--ctx must be at least 4, got {ctx}")
    n = len(ids) // ctx
    if n < 2 or len(ids) < 2 * ctx:
        raise OptionError(f"the text has {len(ids)} tokens; perplexity with --ctx {ctx} needs at least {2 * ctx} "
                          "(llama-perplexity's rule): give a longer text or a smaller --ctx")
    if max_chunks is not None:
        n = min(n, max_chunks)
    out = []
    for i in range(n):
        c = list(ids[i * ctx:(i + 1) * ctx])
        if bos is not None:
            c[0] = bos
        out.append(c)
    return out


def chunk_nll(logits: np.ndarray, chunk: Sequence[int]) -> tuple[float, int]:
    """(sum of NLL, count) of one chunk from its logits ``[ctx, V]`` (or just rows ``first .. ctx-2``, when
    ``logits`` has ``ctx - 1 - first`` rows): rows ``first .. ctx - 2`` predict tokens ``first + 1 .. ctx - 1``."""
    ctx = len(chunk)
    first = ctx // 2
    n = ctx - 1 - first
    rows = logits[first:ctx - 1] if logits.shape[0] == ctx else logits
    if rows.shape[0] != n:
        raise ValueError(f"expected {ctx} or {n} rows of logits, got {logits.shape[0]}")
    rows = np.asarray(rows, np.float64)
    targets = np.asarray(chunk[first + 1:], np.int64)
    m = rows.max(axis=1)
    lse = m + np.log(np.exp(rows - m[:, None]).sum(axis=1))
    return float((lse - rows[np.arange(n), targets]).sum()), n


def perplexity(logits_fn: Callable[[list[int]], np.ndarray], ids: Sequence[int], ctx: int = 512,
               bos: int | None = None, max_chunks: int | None = None,
               progress: Callable[[int, int, float], None] | None = None) -> PerplexityResult:
    """Perplexity of ``ids`` with ``logits_fn(chunk) -> [ctx, V]`` logits (a fresh context per chunk)."""
    return _windowed(lambda c: chunk_nll(logits_fn(c), c), ids, ctx, bos, max_chunks, progress)


def _windowed(nll: Callable[[list[int]], tuple[float, int]], ids: Sequence[int], ctx: int, bos: int | None,
              max_chunks: int | None, progress: Callable[[int, int, float], None] | None) -> PerplexityResult:
    """Sum ``nll(window) -> (sum of NLL, count)`` over llama-perplexity's windows of ``ids``: the running figure."""
    windows = chunks(ids, ctx, bos, max_chunks)
    total, count, running = 0.0, 0, []
    for i, c in enumerate(windows):
        s, n = nll(c)
        total += s
        count += n
        running.append(math.exp(total / count))
        if progress:
            progress(i + 1, len(windows), running[-1])
    return PerplexityResult(running[-1], total / count, count, len(windows), ctx, len(ids), tuple(running))


def engine_chunk_nll(engine, chunk: Sequence[int]) -> tuple[float, int]:
    """(sum of NLL, count) of one evaluation window run through ``engine`` (a
    :class:`~edgespool.runtime.decoder.engine.Engine`) from a fresh cache, in prefill pieces of
    ``engine.prefill_chunk`` tokens (the whole window without one): only pieces with scored rows go through the head,
    and only their logits ``[piece, V]`` exist at a time, so a streamed run needs no ``[ctx, V]`` array. Rows
    ``first .. ctx - 2`` are scored as in :func:`chunk_nll` (float64 log-softmax per row)."""
    ctx = len(chunk)
    first = ctx // 2
    ids = np.asarray(chunk, np.int64)
    cache = engine.new_cache(ctx)
    step = engine.prefill_chunk or ctx
    total, count = 0.0, 0
    for t0 in range(0, ctx, step):
        t1 = min(ctx, t0 + step)
        lo, hi = max(t0, first), min(t1, ctx - 1)  # scored rows of this piece
        lg = engine.forward(ids[t0:t1], cache, logits=hi > lo)
        if hi <= lo:
            continue
        rows = np.asarray(lg[lo - t0:hi - t0], np.float64)
        targets = ids[lo + 1:hi + 1]
        m = rows.max(axis=1)
        lse = m + np.log(np.exp(rows - m[:, None]).sum(axis=1))
        total += float((lse - rows[np.arange(hi - lo), targets]).sum())
        count += hi - lo
    return total, count


def engine_perplexity(engine, ids: Sequence[int], ctx: int = 512, bos: int | None = None,
                      max_chunks: int | None = None,
                      progress: Callable[[int, int, float], None] | None = None) -> PerplexityResult:
    """:func:`perplexity` computed with :func:`engine_chunk_nll` (prefill pieces, logits only where scored): the
    way a streamed model is measured; with the same pieces and KV format a resident engine gives the same figure."""
    return _windowed(lambda c: engine_chunk_nll(engine, c), ids, ctx, bos, max_chunks, progress)
