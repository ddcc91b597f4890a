"""Choosing the next token from logits: greedy, or temperature + top-k + top-p sampling with a seeded generator,
after optional repetition / frequency / presence penalties.

Order of operations: penalties on the raw logits (llama.cpp's ``llama_sampler_penalties``), then, as Hugging
Face's logits warpers, divide by temperature, keep the ``top_k`` largest logits, then keep the smallest set of most
probable tokens whose probability mass reaches ``top_p``, renormalise, draw. ``temperature == 0`` means greedy
(argmax of the penalised logits, ties to the lowest id).

Penalties (llama.cpp semantics; every one off by default) over the last ``repeat_last_n`` tokens of the sequence
(prompt + generated; ``-1`` = all of them, ``0`` = none), ``c[j]`` the count of token j in that window:

* ``repeat_penalty`` r (CTRL / llama.cpp): a token with ``c[j] > 0`` gets ``l * r`` when its logit ``l <= 0``,
  else ``l / r`` (1 = off);
* ``frequency_penalty`` and ``presence_penalty`` (OpenAI's names): ``l - c[j] * frequency - (c[j] > 0) * presence``.

The sampler keeps the sequence's token history (:meth:`accept`; :meth:`sample` accepts the token it returns), so one
sampler serves one sequence.
"""
from __future__ import annotations

from collections import Counter, deque
from typing import Iterable

import numpy as np

from ...errors import OptionError


def _finite(name: str, v: float, lo: float | None = None, lo_open: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be a number, got {v!r}") from None
    if not np.isfinite(f) or isinstance(v, bool):
        raise OptionError(f"{name} must be a finite number, got {v!r}")
    if lo is not None and (f <= lo if lo_open else f < lo):
        raise OptionError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {v!r}")
    return f


class Sampler:
    """A token sampler; ``Sampler()`` is greedy. Same seed + same logits -> same tokens."""

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None, *, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                 history: Iterable[int] = ()) -> None:
        temperature = _finite("temperature", temperature, 0.0)
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise OptionError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
        top_p = _finite("top_p", top_p)
        if not (0 < top_p <= 1):
            raise OptionError(f"top_p must be in (0, 1], got {top_p}")
        self.repeat_penalty = _finite("repeat_penalty", repeat_penalty, 0.0, lo_open=True)
        self.frequency_penalty = _finite("frequency_penalty", frequency_penalty)
        self.presence_penalty = _finite("presence_penalty", presence_penalty)
        if isinstance(repeat_last_n, bool) or not isinstance(repeat_last_n, (int, np.integer)) or repeat_last_n < -1:
            raise OptionError(f"repeat_last_n must be an integer >= -1 (-1 = the whole sequence), got {repeat_last_n!r}")
        self.repeat_last_n = int(repeat_last_n)
        self.temperature, self.top_k, self.top_p, self.seed = float(temperature), int(top_k), float(top_p), seed
        self.rng = np.random.default_rng(seed)
        self.history: deque[int] = deque(maxlen=None if self.repeat_last_n < 0 else self.repeat_last_n)
        self.history.extend(int(t) for t in history)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        """Whether any penalty is on (and has a window to look at)."""
        return self.repeat_last_n != 0 and (self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0
                                            or self.presence_penalty != 0.0)

    def accept(self, token: int) -> None:
        """Record ``token`` as the sequence's next token (the penalty window slides)."""
        if self.repeat_last_n != 0:
            self.history.append(int(token))

    def penalize(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` ``[V]`` after the penalties of the current window (a float32 copy; the input unchanged)."""
        z = np.array(logits, dtype=np.float32, copy=True)
        if not self.penalized or not self.history:
            return z
        counts = Counter(t for t in self.history if 0 <= t < z.size)
        ids = np.fromiter(counts.keys(), dtype=np.int64)
        c = np.fromiter(counts.values(), dtype=np.float32)
        sel = z[ids]
        if self.repeat_penalty != 1.0:
            r = np.float32(self.repeat_penalty)
            sel = np.where(sel <= 0, sel * r, sel / r)
        sel = sel - c * np.float32(self.frequency_penalty) - np.float32(self.presence_penalty)
        z[ids] = sel
        return z

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """The distribution ``[V]`` (float64) that :meth:`sample` draws from (after penalties/temperature/top-k/
        top-p)."""
        z = np.asarray(self.penalize(logits), dtype=np.float64) / self.temperature
        if 0 < self.top_k < z.size:
            kth = np.partition(z, -self.top_k)[-self.top_k]
            z = np.where(z >= kth, z, -np.inf)
        p = np.exp(z - z.max())
        p /= p.sum()
        if self.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            sp = p[order]
            before = np.cumsum(sp) - sp  # probability mass strictly before each token
            keep = np.zeros_like(p, dtype=bool)
            keep[order[before < self.top_p]] = True  # the first token is always kept
            p = np.where(keep, p, 0.0)
            p /= p.sum()
        return p

    def sample(self, logits: np.ndarray) -> int:
        """Next token id for one position's ``logits`` ``[V]``; the token is :meth:`accept`-ed."""
        if self.greedy:
            tok = int(np.argmax(self.penalize(logits) if self.penalized else logits))
        else:
            p = self.probs(logits)
            tok = int(self.rng.choice(p.size, p=p))
        self.accept(tok)
        return tok

    __call__ = sample
