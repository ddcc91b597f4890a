"""Choosing the next token from logits: greedy, or temperature + top-k + top-p sampling with a seeded generator.

Order of operations (as Hugging Face's logits warpers): divide by temperature, keep the ``top_k`` largest logits,
then keep the smallest set of most probable tokens whose probability mass reaches ``top_p``, renormalise, draw.
``temperature == 0`` means greedy (argmax, ties to the lowest id). Repetition penalties are not implemented.
"""
from __future__ import annotations

import numpy as np

from ...errors import OptionError


class Sampler:
    """A token sampler; ``Sampler()`` is greedy. Same seed + same logits -> same tokens."""

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None) -> None:
        if not (temperature >= 0 and np.isfinite(temperature)):
            raise OptionError(f"temperature must be a finite number >= 0, got {temperature}")
        if top_k < 0:
            raise OptionError(f"top_k must be >= 0 (0 = off), got {top_k}")
        if not (0 < top_p <= 1):
            raise OptionError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature, self.top_k, self.top_p, self.seed = float(temperature), int(top_k), float(top_p), seed
        self.rng = np.random.default_rng(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """The distribution ``[V]`` (float64) that :meth:`sample` draws from (after temperature/top-k/top-p)."""
        z = np.asarray(logits, dtype=np.float64) / self.temperature
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
        """Next token id for one position's ``logits`` ``[V]``."""
        if self.greedy:
            return int(np.argmax(logits))
        p = self.probs(logits)
        return int(self.rng.choice(p.size, p=p))

    __call__ = sample
