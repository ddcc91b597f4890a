"""Drafters for speculative decoding: who guesses the next tokens the target model then verifies in one pass.

Every drafter fills one small protocol (:class:`Drafter`): ``begin(max_len, sampler)`` before a generation,
``propose(context, k) -> Draft`` (up to ``k`` guessed tokens after ``context``, the whole sequence so far), ``close()``.
A :class:`Draft` carries the tokens and, for a drafter that samples, the distribution ``q`` each token was drawn
from (the accept/reject rule needs it); ``probs=None`` means the tokens are deterministic (``q`` one-hot).

* :class:`NgramDrafter` -- prompt lookup (no model): the last ``n`` tokens (n = ``max_ngram`` down to
  ``min_ngram``) are searched for earlier in the sequence; the tokens that followed the most recent earlier match
  are the draft (transformers' ``prompt_lookup_num_tokens``, llama.cpp's ``LlamaPromptLookupDecoding``).
* :class:`ModelDrafter` -- a small model with the same tokenizer (:func:`check_same_tokenizer`), its own KV cache,
  rolled back to the longest prefix it shares with the verified sequence at each proposal.
* :class:`ModelDrafter` over :meth:`Engine.forward_prefix` -- self-drafting: the target's own first layers + head
  (an early exit; :func:`self_drafter`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ...errors import BundleError, OptionError
from .kvcache import KVCache
from .sampling import Sampler


@dataclass
class Draft:
    """Guessed tokens after a context; ``probs[i]`` the distribution ``[V]`` token i was drawn from (None:
    deterministic, one-hot); ``seconds``: wall time the drafter took for these tokens (a draft model's catch-up on
    a long new context, e.g. the prompt, is not counted: it is paid once, not per drafted token)."""

    tokens: list[int]
    probs: list[np.ndarray] | None = None
    seconds: float = 0.0


class Drafter(Protocol):
    """What the speculative decoder needs from a drafter."""

    name: str

    def begin(self, max_len: int, sampler: Sampler) -> None:
        """Start a new sequence of at most ``max_len`` positions; ``sampler`` is the target's (its settings)."""
        ...

    def propose(self, context: Sequence[int], k: int) -> Draft:
        """Up to ``k`` tokens likely to follow ``context`` (the whole verified sequence, prompt included)."""
        ...

    def close(self) -> None:
        ...


class NgramDrafter:
    """Prompt-lookup drafting: copy what followed the most recent earlier occurrence of the context's last n-gram.

    Costs no model pass; drafts only when the sequence repeats itself (code edits, quoting the prompt).
    ``prefer="first"`` takes the first occurrence instead (exactly transformers' ``PromptLookupCandidateGenerator``
    and llama-cpp-python's ``LlamaPromptLookupDecoding``); the default, the most recent, follows local repetition."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, prefer: str = "last") -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise OptionError(f"n-gram drafting: need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        if prefer not in ("first", "last"):
            raise OptionError(f"n-gram drafting: prefer must be 'first' or 'last', got {prefer!r}")
        self.name = f"ngram (prompt lookup, n {max_ngram}..{min_ngram})"
        self.max_ngram, self.min_ngram, self.prefer = int(max_ngram), int(min_ngram), prefer

    def begin(self, max_len: int, sampler: Sampler) -> None:
        return None

    def propose(self, context: Sequence[int], k: int) -> Draft:
        t0 = time.perf_counter()
        ctx = np.asarray(context, dtype=np.int64)
        L = ctx.size
        for n in range(min(self.max_ngram, L - 1), self.min_ngram - 1, -1):
            windows = np.lib.stride_tricks.sliding_window_view(ctx[:L - 1], n)  # n-grams ending before the last
            hits = np.flatnonzero((windows == ctx[L - n:]).all(axis=1))
            if hits.size:
                start = int(hits[-1] if self.prefer == "last" else hits[0]) + n  # what followed that occurrence
                toks = [int(t) for t in ctx[start:start + k]]
                if toks:
                    return Draft(toks, None, time.perf_counter() - t0)
        return Draft([], None, time.perf_counter() - t0)

    def close(self) -> None:
        return None


Forward = Callable[[Sequence[int], KVCache], np.ndarray]  # (tokens, cache) -> last position's logits [1, V]


class ModelDrafter:
    """Drafts with a model run by ``forward`` into a cache from ``new_cache(max_len)``: greedy when the target's
    sampler is greedy, else sampled with the same temperature / top-k / top-p (its own seeded generator), keeping
    the distributions. Its KV cache is rolled back to the longest prefix it shares with each new context, so only
    the tokens it has not seen (the target's correction or bonus token) are fed before drafting."""

    def __init__(self, name: str, forward: Forward, new_cache: Callable[[int], KVCache], vocab_size: int,
                 close: Callable[[], None] | None = None) -> None:
        self.name = name
        self._forward, self._new_cache, self.vocab_size = forward, new_cache, int(vocab_size)
        self._close = close
        self.cache: KVCache | None = None
        self.fed: list[int] = []
        self.sampler: Sampler | None = None
        self.forward_s = 0.0  # time in draft-model passes (this generation)
        self.passes = 0

    def begin(self, max_len: int, sampler: Sampler) -> None:
        if self.cache is None or self.cache.max_len < max_len:
            self.cache = None  # drop the old arrays before allocating the new ones
            self.cache = self._new_cache(max_len)
        self.cache.reset()
        self.fed = []
        self.forward_s, self.passes = 0.0, 0
        seed = None if sampler.seed is None else int(sampler.seed) + 1
        self.sampler = Sampler(sampler.temperature, sampler.top_k, sampler.top_p, seed)

    def _run(self, tokens: Sequence[int]) -> np.ndarray:
        assert self.cache is not None
        t0 = time.perf_counter()
        out = self._forward(tokens, self.cache)
        self.forward_s += time.perf_counter() - t0
        self.passes += 1
        return out[-1]

    def propose(self, context: Sequence[int], k: int) -> Draft:
        assert self.cache is not None and self.sampler is not None, "begin() first"
        t0 = time.perf_counter()
        ctx = [int(t) for t in context]
        p = 0
        for a, b in zip(self.fed, ctx):
            if a != b:
                break
            p += 1
        p = min(p, len(ctx) - 1)  # at least one token is fed: its logits give the first draft
        self.cache.truncate(min(p, self.cache.length))
        self.fed = self.fed[:self.cache.length]
        room = self.cache.max_len - self.cache.length - (len(ctx) - self.cache.length)
        k = max(0, min(k, room + 1))
        if k == 0:
            return Draft([], None, time.perf_counter() - t0)
        feed = ctx[self.cache.length:]
        t_feed = time.perf_counter()
        logits = self._run(feed)
        if len(feed) > 2:  # a catch-up (the prompt): not a per-token drafting cost
            t0 += time.perf_counter() - t_feed
        self.fed = list(ctx)
        toks: list[int] = []
        probs: list[np.ndarray] | None = None if self.sampler.greedy else []
        for i in range(k):
            if self.sampler.greedy:
                tok = int(np.argmax(logits))
            else:
                q = self.sampler.probs(logits)
                tok = int(self.sampler.rng.choice(q.size, p=q))
                assert probs is not None
                probs.append(q)
            toks.append(tok)
            if i + 1 < k:
                logits = self._run([tok])
                self.fed.append(tok)
        return Draft(toks, probs, time.perf_counter() - t0)

    def close(self) -> None:
        self.cache = None
        if self._close is not None:
            self._close()


def self_drafter(engine: Any, n_layers: int) -> ModelDrafter:
    """A :class:`ModelDrafter` running the target ``engine``'s first ``n_layers`` layers and its head
    (:meth:`Engine.forward_prefix`). Refused (OptionError) when the engine streams any of those layers or the head:
    a self-draft pass must not read weights from storage."""
    c = engine.config
    if not 1 <= int(n_layers) < c.num_layers:
        raise OptionError(f"--draft self:{n_layers}: the number of layers must be in 1..{c.num_layers - 1}")
    plan = getattr(engine.source, "plan", None)
    if plan is not None and not plan.is_resident:
        streamed = sorted(set(plan.streamed_layers) & set(range(n_layers)))
        if streamed or plan.head_streamed:
            what = f"layers {streamed[:4]}" if streamed else "the head"
            raise OptionError(f"--draft self:{n_layers}: the memory plan streams {what}; self-drafting needs the "
                              "first layers and the head resident (raise the budget, use fewer layers, or --draft "
                              "ngram)")
    n = int(n_layers)
    return ModelDrafter(f"self ({n} of {c.num_layers} layers + head)",
                        lambda toks, cache: engine.forward_prefix(toks, cache, n, last_only=True),
                        lambda max_len: engine.new_prefix_cache(n, max_len), c.vocab_size)


def tokenizer_identity(bundle_dir: Path, section: dict) -> dict[str, Any]:
    """What must match for two bundles to share token ids: vocabulary, merges, added/special tokens, BOS/EOS."""
    path = Path(bundle_dir) / section["file"]
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: cannot read the tokenizer ({e})") from None
    model = tj.get("model") or {}
    added = sorted((int(t.get("id", -1)), str(t.get("content")), bool(t.get("special")))
                   for t in tj.get("added_tokens") or [])
    return {"type": model.get("type"), "vocab": model.get("vocab"), "merges": model.get("merges"),
            "added_tokens": added, "bos": section.get("bos_token_id"),
            "eos": sorted(section.get("eos_token_ids") or [])}


def check_same_tokenizer(target: Any, draft: Any) -> None:
    """BundleError (one line naming both bundles and the first difference) unless the bundles ``target`` and
    ``draft`` (:class:`~edgespool.runtime.bundle.reader.Bundle`) have the same tokenizer. Reads tokenizer files
    only, no weights."""
    a = tokenizer_identity(target.path, target.manifest["tokenizer"])
    b = tokenizer_identity(draft.path, draft.manifest["tokenizer"])
    for key, what in (("type", "tokenizer type"), ("vocab", "vocabulary"), ("merges", "merges"),
                      ("added_tokens", "special/added tokens"), ("bos", "BOS token"), ("eos", "EOS tokens")):
        if a[key] != b[key]:
            detail = ""
            if key == "vocab" and isinstance(a[key], dict) and isinstance(b[key], dict):
                detail = f" ({len(a[key])} vs {len(b[key])} entries)"
            raise BundleError(f"draft {draft.path} does not share the tokenizer of {target.path}: the {what} do not "
                              f"match{detail}; a draft model must use the target's tokenizer (or use --draft ngram)")


def parse_draft(spec: Any) -> tuple[str, Any]:
    """``--draft`` / ``draft=`` as ``(kind, arg)``: ``("ngram", max n)`` for ``ngram`` / ``ngram:N``,
    ``("self", layers or None)`` for ``self`` / ``self:N``, else ``("model", path)``; OptionError for the rest."""
    if isinstance(spec, Path):
        return "model", spec
    if not isinstance(spec, str) or not spec.strip():
        raise OptionError(f"--draft {spec!r}: give a draft bundle directory, 'ngram' (prompt lookup) or 'self' "
                          "(the target's first layers)")
    s = spec.strip()
    for kind in ("ngram", "self"):
        if s == kind or s.startswith(kind + ":"):
            arg = s[len(kind) + 1:]
            if not arg:
                return kind, (3 if kind == "ngram" else None)
            if not arg.isdigit() or int(arg) < 1:
                raise OptionError(f"--draft {s}: the number after '{kind}:' must be an integer >= 1")
            return kind, int(arg)
    p = Path(s).expanduser()
    if not (p / "manifest.json").is_file():
        raise OptionError(f"--draft {s}: not a bundle directory (no manifest.json), nor 'ngram' / 'self'")
    return "model", p


def draft_model_budget(draft: Any, budget: int, draft_budget: int | None, target_minimum: int, target: Any,
                       target_keep: int = 0, **plan_kw: Any) -> Any:
    """The draft model's :class:`~edgespool.schedulers.memory_plan.MemoryPlan` inside a total ``budget`` (bytes):
    under ``draft_budget`` when given, else the smaller of what keeps the whole draft resident and everything
    the target does not need for its minimum working set plus ``target_keep`` (one more layer slot, so its reads
    still overlap compute). Why the draft first: a byte pinned in the draft saves k reads per verify pass (k draft
    passes), a byte pinned in the target saves one. At least the draft's minimum. BudgetError (one line, both
    bundles, the numbers) when the rest is below the target's minimum ``target_minimum``."""
    from ...errors import BudgetError
    from ...schedulers.memory_plan import minimum_budget, plan_memory
    from ...units import fmt_bytes

    lo = minimum_budget(draft, target, **plan_kw)
    if draft_budget is None:
        whole = plan_memory(draft, target, max(budget, lo) + 4 * draft.weights_nbytes + (1 << 30), **plan_kw)
        share = max(lo, min(whole.total_bytes, budget - target_minimum - target_keep))
    else:
        share = int(draft_budget)
        if share < lo:
            raise BudgetError(f"--draft-budget {fmt_bytes(share)} is below the minimum working set of the draft "
                              f"{draft.path} ({fmt_bytes(lo)}); raise it or use --draft ngram")
    if budget - share < target_minimum:
        raise BudgetError(f"draft {draft.path} needs {fmt_bytes(share)} of the {fmt_bytes(budget)} budget, leaving "
                          f"{fmt_bytes(max(0, budget - share))} below the target's minimum working set of "
                          f"{fmt_bytes(target_minimum)}; raise --memory-budget, lower --draft-budget or use --draft "
                          "ngram")
    return plan_memory(draft, target, share, **plan_kw)


@dataclass
class DraftSetup:
    """What :func:`open_draft` prepared before the target is opened: the drafter (None for self-drafting, which
    needs the target's engine: :meth:`decoder`), the options the target's plan must get (the reserved bytes, logit
    rows for a verify pass), the draft's own plan (streamed draft) and k."""

    kind: str
    arg: Any
    draft_tokens: int
    drafter: Any = None
    plan: Any = None
    target_plan_options: dict = None  # type: ignore[assignment]
    gpu_fallback: str | None = None  # draft_gpu_memory= given but the draft runs on the CPU: why (one line)
    placement: Any = None  # the draft's GPU placement (Dovetail mode), None on the CPU
    auto_k: bool = False  # draft_tokens was not given: k is speculative.default_draft_tokens, capped by the plan

    def decoder(self, engine: Any, adaptive: bool = True) -> Any:
        """The :class:`~edgespool.runtime.decoder.speculative.SpeculativeDecoder` over the target ``engine``."""
        from .speculative import SpeculativeDecoder

        drafter = self.drafter
        if self.kind == "self":
            n = self.arg if self.arg is not None else max(1, engine.config.num_layers // 4)
            drafter = self_drafter(engine, n)
        k = self.draft_tokens
        chunk = getattr(engine, "prefill_chunk", None)
        if self.auto_k and chunk:  # the default cap, not the user's: fit it to the plan's batch instead of refusing
            k = max(1, min(k, int(chunk) - 1))
        return SpeculativeDecoder(engine, drafter, k, adaptive)

    def preload(self) -> None:
        """Read a resident draft model's weights now (as the target's ``load_all``), so decode timings exclude it."""
        eng = getattr(self.drafter, "engine", None)
        fn = getattr(getattr(eng, "source", None), "load_all", None)
        if fn is not None:
            fn()

    def close(self) -> None:
        if self.drafter is not None:
            self.drafter.close()


def open_draft(spec: Any, target_bundle: Any, *, draft_tokens: Any, budget: int | None, draft_budget: Any = None,
               kernels_for: Callable[[Any], Any], target_kernels: Any = None, target: str | None = None,
               verify: bool = True, plan_options: dict | None = None, draft_gpu_memory: Any = None) -> DraftSetup:
    """Check ``spec`` (``--draft``) and ``draft_tokens`` (None: :func:`~.speculative.default_draft_tokens` of a
    streamed / resident target, capped by the target plan's batch), and open a draft model (tokenizer checked first, before any
    weight is read; resident without a ``budget``, else streamed under its share of it, which the target's plan
    then reserves). ``kernels_for(bundle)`` gives a bundle's kernel table. ``draft_gpu_memory`` (Dovetail mode):
    the draft model runs through the CPU/GPU split executor under that GPU budget while the target verifies on
    the CPU; without CuPy / a CUDA device the draft runs on the CPU and ``setup.gpu_fallback`` says why."""
    from .speculative import check_draft_tokens, default_draft_tokens
    from ..bundle.reader import Bundle
    from .weights import ResidentWeights
    from .engine import Engine

    k = default_draft_tokens(budget is not None) if draft_tokens is None else check_draft_tokens(draft_tokens)
    kind, arg = parse_draft(spec)
    if draft_gpu_memory is not None and kind != "model":
        raise OptionError(f"--draft-gpu-budget needs a draft model (--draft BUNDLE), not --draft {spec}")
    plan_kw = dict(plan_options or {})
    opts: dict[str, Any] = {"logits_rows": max(k + 1, int(plan_kw.get("logits_rows", 1)))}
    setup = DraftSetup(kind, arg, k, target_plan_options=opts, auto_k=draft_tokens is None)
    if kind == "ngram":
        setup.drafter = NgramDrafter(max_ngram=arg)
        return setup
    if kind == "self":
        return setup
    draft = Bundle(Path(arg))
    if draft.kind != "decoder" or draft.config is None:
        raise BundleError(f"--draft {arg}: a {draft.kind} bundle; a draft must be a decoder bundle")
    check_same_tokenizer(target_bundle, draft)
    table = kernels_for(draft)
    if budget is None:
        dsrc: Any = ResidentWeights(draft, verify=verify)
        if draft_budget is not None:
            raise OptionError("--draft-budget only applies with --memory-budget")
    else:
        from ...offload.streaming_source import StreamingWeights
        from ...schedulers.memory_plan import minimum_budget
        from ...targets.profiles import get_target
        from ...units import fmt_bytes, parse_bytes

        prof = get_target(target or "host")
        tkw = {kk: v for kk, v in {**plan_kw, **opts}.items() if kk != "max_batch_tokens" or v}
        # the draft's prefill chunks stay short: its workspace is memory its weights could pin instead
        dkw = {"max_batch_tokens": 64, **{kk: v for kk, v in plan_kw.items() if kk in ("kv_dtype", "max_context")}}
        dbud = None if draft_budget is None else parse_bytes(draft_budget, "--draft-budget")
        from ...schedulers.memory_plan import plan_memory

        tk = {"kernels": target_kernels} if target_kernels else {}
        tmin = minimum_budget(target_bundle, prof, **tk, **tkw)
        slot = plan_memory(target_bundle, prof, tmin, **tk, **tkw).layer_slot_bytes if budget >= tmin else 0
        dplan = draft_model_budget(draft, int(budget), dbud, tmin, prof, target_keep=slot, kernels=table, **dkw)
        dsrc = StreamingWeights(draft, dplan, kernels=table)
        setup.plan = dplan
        how = "resident" if dplan.is_resident else "streamed"
        opts.update(reserved_bytes=dplan.total_bytes,
                    reserved_for=f"draft model {draft.path.name} ({how}, {fmt_bytes(dplan.total_bytes)}: weights, "
                                 f"its KV cache of {dplan.max_context} positions, workspace)")
    setup.gpu_fallback, dsrc = _draft_on_gpu(setup, draft, dsrc, table, draft_gpu_memory, plan_kw)
    eng = Engine(dsrc, table)
    if setup.placement is not None:  # as load(gpu_memory=): prefill in chunks the GPU workspace holds
        from ...offload.gpu_split import placed_prefill_chunk

        chunk = placed_prefill_chunk(dsrc)
        eng.prefill_chunk = min(eng.prefill_chunk or chunk, chunk)

    def new_cache(max_len: int) -> KVCache:
        return eng.new_cache(min(max_len, eng.max_context or max_len))

    setup.drafter = ModelDrafter(f"draft model {draft.path.name}", lambda t, c: eng.forward(t, c, last_only=True),
                                 new_cache, draft.config.vocab_size, close=dsrc.close)
    setup.drafter.engine = eng
    return setup


def _draft_on_gpu(setup: DraftSetup, draft: Any, dsrc: Any, table: Any, gpu_memory: Any,
                  plan_kw: dict) -> tuple[str | None, Any]:
    """Dovetail mode: ``(None, split source)`` with the draft's groups placed on the GPU under ``gpu_memory``
    (docs/GPU.md's executor; a budget below its minimum is a BudgetError), ``(why, dsrc)`` when no GPU is usable
    (the draft stays on the CPU), ``(None, dsrc)`` when no GPU budget was asked for."""
    if gpu_memory is None:
        return None, dsrc
    from ...offload.gpu_split import open_split
    from ...units import parse_bytes

    from .layer_probe import cpu_layer_step_seconds

    split, why = open_split(draft, dsrc, parse_bytes(gpu_memory, "--draft-gpu-budget"), table,
                            max_context=plan_kw.get("max_context"), cpu_layer_s=cpu_layer_step_seconds)
    if split is None:
        return f"draft model {draft.path.name} runs on the CPU: {why.splitlines()[0]}", dsrc
    setup.placement = split.placement
    return None, split
