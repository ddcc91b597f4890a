"""Speculative decoding: a drafter guesses k tokens, the target scores all of them in ONE batched pass.

A streamed model reads every weight once per forward pass, so decoding one token per pass can never beat
``bytes per pass / storage bandwidth``. :meth:`Engine.forward` of ``[last token, d1..dk]`` (T = k + 1) reads each
weight group once and returns the logits of all T positions; the accepted prefix of the draft plus one token of
the target's own (the correction at the first rejection, or a bonus token when all k are accepted) are emitted, and
:meth:`KVCache.truncate` forgets the rejected positions. Per pass: 1 to k + 1 tokens.

Acceptance:

* greedy -- draft token i is accepted while it equals the target's own choice at that position (the target
  sampler's :meth:`~Sampler.sample`, so penalties see the same history as in plain decoding): the output is the
  plain greedy output (up to the batched pass's float rounding, see docs/SPECULATIVE.md);
* sampling -- the standard rule (Leviathan et al. 2023, Chen et al. 2023): accept ``x ~ q`` with probability
  ``min(1, p(x) / q(x))``; at the first rejection draw from ``norm(max(p - q, 0))``; after k acceptances draw the
  bonus token from ``p``. ``p`` is the target sampler's distribution (temperature / top-k / top-p / penalties) at each
  position, ``q`` the drafter's (one-hot for deterministic drafters such as prompt lookup). The output is
  distributed exactly as the target's.

:class:`DraftLength` picks k before each pass from measured acceptance and measured costs (draft time per token,
verify time as a function of T): k maximising expected tokens per second, ``E(k) = (1 - a^(k+1)) / (1 - a)``
over ``k * draft_s + verify_s(k + 1)``; a streamed pass costs about the same for every small T (the weights dominate),
a resident one grows with T, so the best k differs. Its cap when ``--draft-tokens`` is not given is
:func:`default_draft_tokens`: larger for a streamed target, so the rule can reach the long drafts that pay there.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from ...errors import OptionError
from .drafts import Draft, Drafter
from .kvcache import KVCache
from .sampling import Sampler

MAX_DRAFT_TOKENS = 32
# the cap of the adaptive k when --draft-tokens is not given: a streamed verify pass costs seconds of reads whatever T
# is, so long drafts pay (measured: k <= 8 beat k <= 4 by 1.2x at 1/4, 97% acceptance); a resident pass grows with T
# and the rule settles at 1-4 there. Streamed, the cap costs (cap + 1) logit rows of workspace (0.6 MB each at a
# 151,936-token vocabulary) taken from the budget.
DEFAULT_DRAFT_TOKENS_STREAMED = 12
DEFAULT_DRAFT_TOKENS_RESIDENT = 4


def default_draft_tokens(streamed: bool) -> int:
    """The most draft tokens per pass when the user gives none: :data:`DEFAULT_DRAFT_TOKENS_STREAMED` for a target
    streamed under a memory budget, :data:`DEFAULT_DRAFT_TOKENS_RESIDENT` for a resident one (the adaptive rule of
    :class:`DraftLength` picks k below it)."""
    return DEFAULT_DRAFT_TOKENS_STREAMED if streamed else DEFAULT_DRAFT_TOKENS_RESIDENT


def check_draft_tokens(k: Any, max_batch_tokens: int | None = None) -> int:
    """``k`` as the number of draft tokens per pass, or OptionError: an integer in 1..32 (and k + 1 positions must
    fit the memory plan's batch of ``max_batch_tokens``)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_DRAFT_TOKENS:
        raise OptionError(f"--draft-tokens {k!r}: must be an integer in 1..{MAX_DRAFT_TOKENS} (tokens drafted per "
                          "verification pass)")
    if max_batch_tokens is not None and int(k) + 1 > max_batch_tokens:
        raise OptionError(f"--draft-tokens {k}: a verification pass of {int(k) + 1} positions exceeds the memory "
                          f"plan's batch of {max_batch_tokens} tokens; lower --draft-tokens or raise the budget")
    return int(k)


@dataclass
class SpecStats:
    """Counters of one speculative generation."""

    passes: int = 0  # target verification passes (decode)
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens accepted
    emitted: int = 0  # tokens produced by the decode passes (accepted + corrections/bonus)
    draft_s: float = 0.0
    verify_s: float = 0.0
    k_used: list[int] = field(default_factory=list)  # k asked of the drafter before each pass

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """Tokens emitted per target pass (1.0 = no gain over plain decoding)."""
        return self.emitted / self.passes if self.passes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"passes": self.passes, "drafted": self.drafted, "accepted": self.accepted, "emitted": self.emitted,
                "acceptance_rate": self.acceptance_rate, "tokens_per_pass": self.tokens_per_pass,
                "draft_s": self.draft_s, "verify_s": self.verify_s,
                "mean_k": float(np.mean(self.k_used)) if self.k_used else 0.0}


class DraftLength:
    """Chooses k (0..``k_max``) from measurements: the per-token acceptance probability ``a``, draft seconds per
    token, verify seconds per pass fitted as ``v0 + v1 * (T - 1)`` over the T seen. ``adaptive=False`` always asks
    for ``k_max``.

    ``a`` is estimated as accepted / tried tokens, where a pass that drafted d tokens and accepted n tried n + 1 of
    them when n < d (the first rejected one ends the pass) and d when all were accepted: the maximum-likelihood
    estimate of a per-token acceptance probability under the stop-at-first-rejection rule, smoothed over passes.
    (accepted / drafted would be biased low, the more so the longer the draft: at a = 0.9 and d = 8 it says 0.64,
    which made the rule shorten drafts that paid.)"""

    def __init__(self, k_max: int, adaptive: bool = True, prior_acceptance: float = 0.6, probe_every: int = 16,
                 decay: float = 0.8):
        self.k_max, self.adaptive = int(k_max), bool(adaptive)
        self.decay = float(decay)
        # smoothed accepted and tried counts; the prior weighs as one pass of 2 tried tokens
        self._acc, self._tried = 2.0 * float(prior_acceptance), 2.0
        self.draft_per_tok: float | None = None
        self.verify: dict[int, float] = {}  # T -> smoothed seconds of a verify pass
        self.probe_every = probe_every
        self.n = 0
        self.k = self.k_max

    @property
    def a(self) -> float:
        """The smoothed per-token acceptance probability."""
        return self._acc / self._tried if self._tried > 0 else 0.0

    def observe(self, k_asked: int, draft: Draft, accepted: int, verify_s: float) -> None:
        """Record one pass: ``draft`` (its tokens and seconds), how many of its tokens were ``accepted``, and the
        seconds of the verify pass over ``len(draft.tokens) + 1`` positions."""
        T = len(draft.tokens) + 1
        self.verify[T] = verify_s if T not in self.verify else 0.7 * self.verify[T] + 0.3 * verify_s
        d = len(draft.tokens)
        if d:
            tried = accepted + (1 if accepted < d else 0)
            self._acc = self.decay * self._acc + accepted
            self._tried = self.decay * self._tried + tried
            per = draft.seconds / d
            self.draft_per_tok = per if self.draft_per_tok is None else 0.8 * self.draft_per_tok + 0.2 * per
        self.n += 1

    def verify_cost(self, T: int) -> float:
        """Predicted seconds of a verify pass of T positions (linear fit of the measured ones; flat with one)."""
        pts = sorted(self.verify.items())
        if not pts:
            return 1.0
        if len(pts) == 1:
            return pts[0][1]
        x = np.array([p[0] for p in pts], float)
        y = np.array([p[1] for p in pts], float)
        v1, v0 = np.polyfit(x, y, 1)
        return float(max(v0 + max(v1, 0.0) * T, 1e-9))

    def expected_tokens(self, k: int) -> float:
        a = min(max(self.a, 0.0), 0.999)
        return (1 - a ** (k + 1)) / (1 - a)

    def choose(self) -> int:
        """k for the next pass."""
        if not self.adaptive or self.draft_per_tok is None:
            self.k = self.k_max
            return self.k
        best, best_rate = 0, 1.0 / self.verify_cost(1)
        for k in range(1, self.k_max + 1):
            rate = self.expected_tokens(k) / (k * self.draft_per_tok + self.verify_cost(k + 1))
            if rate > best_rate:
                best, best_rate = k, rate
        if self.n % self.probe_every == self.probe_every - 1:  # keep measuring a neighbour of the choice
            best = max(1, best - 1) if best == self.k_max else best + 1
        self.k = best
        return best


def _accept_sampled(logits: np.ndarray, draft: Draft, sampler: Sampler) -> tuple[int, int]:
    """The accept/reject rule over the verify pass's ``logits`` ``[k+1, V]``: (accepted count, next token).
    Accepted tokens and the next token are :meth:`Sampler.accept`-ed in order (penalty history)."""
    V = logits.shape[-1]
    for i, x in enumerate(draft.tokens):
        p = sampler.probs(logits[i])
        if draft.probs is None:
            q = np.zeros(V)
            q[x] = 1.0
        else:
            q = np.zeros(V)
            qd = np.asarray(draft.probs[i], dtype=np.float64)[:V]
            q[:qd.size] = qd
        if q[x] > 0 and sampler.rng.random() < min(1.0, p[x] / q[x]):
            sampler.accept(x)
            continue
        resid = np.maximum(p - q, 0.0)
        s = resid.sum()
        tok = int(sampler.rng.choice(V, p=resid / s)) if s > 0 else int(sampler.rng.choice(V, p=p))
        sampler.accept(tok)
        return i, tok
    p = sampler.probs(logits[len(draft.tokens)])
    tok = int(sampler.rng.choice(V, p=p))
    sampler.accept(tok)
    return len(draft.tokens), tok


def _accept_greedy(logits: np.ndarray, draft: Draft, sampler: Sampler) -> tuple[int, int]:
    """Greedy verification: the target's own choice at each position (``sampler.sample``, which accepts it);
    stop at the first that differs from the draft. (accepted count, next token)."""
    for i, x in enumerate(draft.tokens):
        tok = sampler.sample(logits[i])
        if tok != x:
            return i, tok
    return len(draft.tokens), sampler.sample(logits[len(draft.tokens)])


class SpeculativeDecoder:
    """Generation with ``drafter`` guessing up to ``draft_tokens`` tokens per target pass of ``engine``."""

    def __init__(self, engine: Any, drafter: Drafter, draft_tokens: int = 4, adaptive: bool = True) -> None:
        self.engine = engine
        self.drafter = drafter
        self.draft_tokens = check_draft_tokens(draft_tokens, getattr(engine, "prefill_chunk", None))
        self.adaptive = adaptive
        self.stats = SpecStats()

    def generate(self, prompt_ids: Iterable[int], max_tokens: int, sampler: Sampler | None = None,
                 stop_ids: Iterable[int] = (), cache: KVCache | None = None,
                 prefix: Iterable[int] = ()) -> Iterator[int]:
        """Yield up to ``max_tokens`` token ids after ``prompt_ids`` (as :meth:`Engine.generate`: stops without
        yielding at a token of ``stop_ids``; a given ``cache`` continues that sequence, whose tokens ``prefix``
        are, so the drafter sees the whole sequence). Timings go into the engine's stats (prefill, decode) and
        :attr:`stats` (passes, acceptance)."""
        eng = self.engine
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise OptionError("the prompt is empty: give at least one token (e.g. the BOS token)")
        if max_tokens < 0:
            raise OptionError(f"max_tokens must be >= 0, got {max_tokens}")
        self.stats = st = SpecStats()
        if max_tokens == 0:
            return
        sampler = sampler or Sampler()
        stops = set(int(s) for s in stop_ids)
        if cache is None:
            cache = eng.new_cache(len(prompt) + max_tokens)
        self.drafter.begin(cache.max_len, sampler)
        chooser = DraftLength(self.draft_tokens, self.adaptive)
        accept = _accept_greedy if sampler.greedy else _accept_sampled

        t0 = time.perf_counter()
        logits = eng.prefill(np.asarray(prompt, dtype=np.int64), cache)
        eng.stats.prefill_s += time.perf_counter() - t0
        eng.stats.prefill_tokens += len(prompt)
        tok = sampler.sample(logits[-1])
        if tok in stops:
            return
        yield tok
        context = [int(t) for t in prefix] + prompt + [tok]
        emitted = 1
        while emitted < max_tokens:
            t0 = time.perf_counter()
            # drafts must leave room: the pass writes k + 1 positions, and no more than max_tokens are emitted
            k = min(chooser.choose(), max_tokens - emitted - 1, cache.max_len - cache.length - 1)
            draft = self.drafter.propose(context, k) if k > 0 else Draft([])
            draft.tokens = draft.tokens[:max(0, k)]
            t1 = time.perf_counter()
            base = cache.length
            logits = eng.forward([tok] + draft.tokens, cache)
            n_acc, nxt = accept(logits, draft, sampler)
            cache.truncate(base + 1 + n_acc)
            t2 = time.perf_counter()
            chooser.observe(k, draft, n_acc, t2 - t1)
            out = draft.tokens[:n_acc] + [nxt]
            st.passes += 1
            st.drafted += len(draft.tokens)
            st.accepted += n_acc
            st.emitted += len(out)
            st.draft_s += t1 - t0
            st.verify_s += t2 - t1
            st.k_used.append(k)
            eng.stats.decode_s += t2 - t0
            eng.stats.decode_tokens += len(out)
            for t in out:
                if t in stops:
                    return
                yield t
                emitted += 1
                if emitted == max_tokens:
                    return
            context += out
            tok = nxt
