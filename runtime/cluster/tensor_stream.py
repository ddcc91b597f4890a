"""Streamed tensor parallel (issue 19): a board opens ITS shard bundle (written by
:mod:`edgespool.exporters.tensor_shard`) with the ordinary weight sources -- streamed under its own memory budget
(:func:`~edgespool.offload.streaming_source.open_streaming`: ``plan_memory`` and ``StreamingWeights`` on a smaller
model) or resident -- and :class:`ShardSource` gives the engine the whole model's interface:

- the config has the whole model's vocabulary (and BOS/EOS ids), the shard's heads / KV heads / FFN columns;
- ``embed_rows``: the board's embedding rows of the tokens in its vocabulary range, zeros for the others, summed
  over the boards (one allreduce a forward pass: exactly one board holds each row, so the sum is exact);
- ``head_chunks``: the shard's head rows at their place ``lo..hi`` of the whole vocabulary (the engine's logits
  row outside ``[lo, hi)`` is left unset: the greedy token is the best of the boards' local maxima);
- ``reduce_partial``: the allreduce after each attention and each FFN block (the engine's additive hook).
Everything else (``get``, ``release``, ``hint``, ``set_prepare``, ``stats`` ...) is the wrapped source's."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Iterator

import numpy as np

from ...errors import BundleError
from ..bundle.constants import align_up
from ..bundle.names import EMBED
from ..bundle.reader import Bundle
from ..bundle.schemes import QTensor
from ..decoder.engine import Engine

SECTION = "tensor_shard"


def shard_info(bundle: Bundle) -> dict[str, Any]:
    """The ``tensor_shard`` section of a shard bundle (BundleError naming the bundle when it is not one)."""
    sec = bundle.manifest.get(SECTION)
    if not isinstance(sec, dict) or not {"rank", "of", "vocab_range", "vocab_size"} <= set(sec):
        raise BundleError(f"{bundle.path}: not a tensor-parallel shard bundle (no {SECTION} section)")
    return sec


class ShardSource:
    """The engine's weight source of one board of a tensor-parallel run over shard bundle ``bundle``, wrapping
    ``inner`` (a StreamingWeights or ResidentWeights of that bundle); ``reduce`` sums a float32 array over the
    boards (an :class:`~edgespool.runtime.cluster.tensor.Allreduce`)."""

    def __init__(self, inner, bundle: Bundle, reduce: Callable[[np.ndarray], np.ndarray]) -> None:
        sec = shard_info(bundle)
        self.inner, self._reduce = inner, reduce
        self.rank, self.n = int(sec["rank"]), int(sec["of"])
        self.vocab_range = (int(sec["vocab_range"][0]), int(sec["vocab_range"][1]))
        self.config = replace(inner.config, vocab_size=int(sec["vocab_size"]), bos_token_id=sec.get("bos_token_id"),
                              eos_token_ids=tuple(sec.get("eos_token_ids") or ()))

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def embed_rows(self, tokens: np.ndarray) -> np.ndarray:
        """float32 embedding rows ``[T, H]`` of the whole model's ``tokens``: each board contributes its rows."""
        lo, hi = self.vocab_range
        toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        mine = (toks >= lo) & (toks < hi)
        x = np.zeros((toks.size, self.inner.config.hidden_size), np.float32)
        if mine.any():
            local = toks[mine] - lo
            fn = getattr(self.inner, "embed_rows", None)
            if fn is not None:
                x[mine] = fn(local)
            else:
                x[mine] = self.inner.get(EMBED)[EMBED].rows(local)
                self.inner.release(EMBED)
        return self._reduce(x)

    def head_chunks(self) -> Iterator[tuple[int, QTensor]]:
        """The shard's head rows as ``(row of the whole vocabulary, rows)`` pieces."""
        lo = self.vocab_range[0]
        fn = getattr(self.inner, "head_chunks", None)
        if fn is not None:
            for r0, t in fn():
                yield lo + r0, t
            return
        from ..bundle.names import HEAD, LM_HEAD

        t = self.inner.get(EMBED)[EMBED] if self.inner.config.tie_word_embeddings else self.inner.get(HEAD)[LM_HEAD]
        yield lo, t

    def head_norm(self) -> np.ndarray:
        """The final norm's weight (float32)."""
        fn = getattr(self.inner, "head_norm", None)
        if fn is not None:
            return fn()
        from ..bundle.names import FINAL_NORM, HEAD

        return self.inner.get(HEAD)[FINAL_NORM].dequantize()

    def reduce_partial(self, x: np.ndarray) -> np.ndarray:
        """Sum this board's partial block output with the other boards' (the engine's hook)."""
        return self._reduce(x)


LOGITS_NOTE = "the whole vocabulary's logits row (tensor-parallel shard)"


def logits_reserve(bundle: Bundle, logits_rows: int = 1) -> int:
    """Bytes a shard bundle's own memory plan misses for the engine's logits: that plan sizes the logits rows for
    the shard's vocabulary slice (its config), while the engine over :class:`ShardSource` (the whole model's
    config) allocates rows of the WHOLE vocabulary (``Engine._head``): (whole - slice) float32 values a row,
    64-byte aligned. 0 for a bundle that is not a shard."""
    sec = bundle.manifest.get(SECTION)
    if not isinstance(sec, dict) or bundle.config is None:
        return 0
    extra = int(sec["vocab_size"]) - int(bundle.config.vocab_size)
    return align_up(4 * max(1, int(logits_rows)) * max(0, extra), 64)


def shard_plan_options(bundle: Bundle, **plan_options: Any) -> dict[str, Any]:
    """``plan_options`` for :func:`~edgespool.schedulers.memory_plan.plan_memory` of shard bundle ``bundle``
    with the whole-vocabulary logits (:func:`logits_reserve`) added to ``reserved_bytes`` (so a shard's plan,
    minimum budget and weight budget count what its run allocates)."""
    opts = dict(plan_options)
    extra = logits_reserve(bundle, int(opts.get("logits_rows", 1)))
    if extra:
        opts["reserved_bytes"] = int(opts.get("reserved_bytes", 0)) + extra
        opts["reserved_for"] = "; ".join(x for x in (opts.get("reserved_for", ""), LOGITS_NOTE) if x)
    return opts


def open_shard(path, reduce: Callable[[np.ndarray], np.ndarray], *, budget: int | str | None = None, kernels=None,
               kv_dtype: str = "f32", max_context: int | None = None, **stream_options) -> Engine:
    """An engine over the shard bundle at ``path``: streamed under ``budget`` (bytes, or a size / fraction
    string of the SHARD bundle: give bytes for a fraction of the whole model) or resident without; ``reduce``
    is the allreduce; ``stream_options`` go to :func:`~edgespool.offload.streaming_source.open_streaming`
    (the plan reserves the whole vocabulary's logits row: :func:`shard_plan_options`)."""
    from ...kernels.table import REFERENCE
    from ...offload.streaming_source import open_streaming
    from ..decoder.weights import ResidentWeights

    bundle = Bundle(path)
    shard_info(bundle)
    kern = kernels or REFERENCE
    if budget is None:
        inner = ResidentWeights(bundle)
    else:
        inner = open_streaming(bundle, budget, kernels=kern, kv_dtype=kv_dtype, max_context=max_context,
                               **shard_plan_options(bundle, **stream_options))
    return Engine(ShardSource(inner, bundle, reduce), kern, kv_dtype=kv_dtype)
