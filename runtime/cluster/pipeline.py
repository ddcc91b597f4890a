"""The pipeline-parallel generation loop, one call per MPI rank (rank r runs stage r; rank 0 is the first).

Per decode step: rank 0 embeds the token and runs its layers, each rank passes its residual stream ``[1, H]``
float32 to the next, the last rank runs the head, samples, and sends the token id (one int64) back to rank 0:
``size`` messages a token. The prompt goes in chunks of ``prefill_chunk`` tokens (micro-batches): rank 0 sends
chunk k and computes chunk k+1 while rank 1 computes chunk k; only the last chunk's last row reaches the head.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ...errors import OptionError
from ..decoder.sampling import Sampler
from .stage import Stage
from .transport import CHUNK, FINAL, STOP, TOKEN, Link


@dataclass
class PipelineResult:
    tokens: list[int] = field(default_factory=list)  # generated ids (rank 0 only; empty elsewhere)
    ttft_s: float = 0.0  # prompt in -> first token back (rank 0)
    decode_s: float = 0.0  # the decode steps after the first token (rank 0)
    compute_s: float = 0.0  # this rank's time in its own layers
    prompt_tokens: int = 0


def run_rank(stage: Stage, link: Link, prompt: list[int] | None = None, max_tokens: int = 16,
             stop_ids: tuple[int, ...] = (), prefill_chunk: int | None = None, max_context: int | None = None,
             sampler: Sampler | None = None) -> PipelineResult:
    """Run this rank's part of one generation. Rank 0 gives ``prompt`` (ids) and gets the tokens; the other ranks
    learn the sizes from the messages (``max_context``: their KV cache length, default prompt + max_tokens must be
    passed the same on every rank)."""
    r, n = link.rank, link.size
    res = PipelineResult()
    H = stage.engine.config.hidden_size
    if max_context is None:
        raise OptionError("run_rank needs max_context (the same on every rank)")
    cache = stage.new_cache(max_context)
    chunk = int(prefill_chunk or max_context)
    buf = np.empty(chunk * H, np.float32)

    def timed(inp, **kw):
        t = time.perf_counter()
        out = stage.step(inp, cache, **kw)
        res.compute_s += time.perf_counter() - t
        return out

    if r == 0:
        if prompt is None or not len(prompt):
            raise OptionError("the prompt is empty: give at least one token")
        ids = np.asarray(prompt, np.int64)
        res.prompt_tokens = int(ids.size)
        if ids.size + max_tokens > max_context:
            raise OptionError(f"{ids.size} prompt + {max_tokens} new tokens exceed the context of {max_context}")
        sampler = sampler or Sampler()
        stops = set(int(s) for s in stop_ids)
        tok_buf = np.empty(1, np.int64)
        t0 = time.perf_counter()
        pieces = [ids[a:a + chunk] for a in range(0, ids.size, chunk)]
        for k, piece in enumerate(pieces):
            final = k == len(pieces) - 1
            out = timed(piece, last_only=final, logits=final)
            if n == 1:
                logits = out
            else:
                link.send(out, 1, FINAL if final else CHUNK)
        t_first = None
        while True:
            if n == 1:
                tok = int(sampler.sample(logits[-1]))
            else:
                link.recv(tok_buf, n - 1, TOKEN)
                tok = int(tok_buf[0])
            now = time.perf_counter()
            if t_first is None:
                t_first, res.ttft_s = now, now - t0
            if tok in stops or len(res.tokens) >= max_tokens:
                break
            res.tokens.append(tok)
            if len(res.tokens) >= max_tokens:
                break
            out = timed(np.array([tok], np.int64), last_only=True)
            if n == 1:
                logits = out
            else:
                link.send(out, 1, FINAL)
        res.decode_s = time.perf_counter() - t_first
        if n > 1:
            link.send(np.empty(0, np.float32), 1, STOP)
        return res

    sampler = sampler or Sampler()
    while True:
        tag, m = link.recv(buf, r - 1)
        if tag == STOP:
            if not stage.last:
                link.send(np.empty(0, np.float32), r + 1, STOP)
            return res
        h = buf[:m].reshape(m // H, H)
        final = tag == FINAL
        if stage.last:
            out = timed(h, last_only=True, logits=final)
            if final:
                link.send(np.array([sampler.sample(out[-1])], np.int64), 0, TOKEN)
        else:
            link.send(timed(h, last_only=False), r + 1, tag)
