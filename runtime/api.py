"""The public Python API for on-device apps::

    from edgespool import load
    m = load("bundle/")                                   # resident
    m = load("bundle/", memory_budget="512MiB")           # streaming under a budget
    for piece in m.generate("Once upon a time", max_tokens=32, temperature=0.8, seed=1):
        print(piece, end="", flush=True)
    for piece in m.chat([{"role": "user", "content": "Hi!"}], max_tokens=32):  # the bundle's chat template
        print(piece, end="", flush=True)
    print(m.stats)                                        # tokens/s, prefill, peak RSS, finish reason
    r = m.create_chat_completion([{"role": "user", "content": "Hi!"}])  # llama-cpp-python's / OpenAI's shape
    for chunk in m.create_chat_completion(messages, stream=True): ...

Options are checked at the call: unknown keyword arguments are refused, naming the valid ones. A model keeps the KV
cache of its last sequence and reuses the longest common token prefix on the next call (a multi-turn chat
processes only the new turn); :meth:`Model.reset` forgets it.
"""
from __future__ import annotations

import os
import inspect
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import BundleError, OptionError
from ..kernels.table import REFERENCE, KernelTable
from ..units import parse_bytes, peak_rss_bytes
from .bundle.reader import Bundle
from .decoder.chat import ChatTemplate
from .decoder.engine import Engine, EngineStats
from .decoder.kvcache import KVCache
from .decoder.sampling import Sampler
from .decoder.tokenizer import BundleTokenizer
from .decoder.weights import ResidentWeights, WeightSource
from .serving import shapes
from .serving.text import TextOutput, split_stops


@dataclass
class GenerationStats:
    """Measured figures of the last :meth:`Model.generate` call: the engine's own timers (time inside forward
    passes only) plus what the caller sees (tokens yielded, prompt tokens reused from the kept KV cache, why it
    ended, peak RSS)."""

    engine: EngineStats = field(default_factory=EngineStats)
    generated_tokens: int = 0
    peak_rss_bytes: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV came from the previous call's cache (not recomputed)
    finish_reason: str | None = None  # "stop" (EOS, a stop id or string), "length" (max_tokens); None while running
    speculative: dict[str, Any] | None = None  # SpecStats.to_dict() of a speculative generation (load(draft=...))

    def to_dict(self) -> dict[str, Any]:
        e = self.engine
        return {"prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
                "generated_tokens": self.generated_tokens, "prefill_s": e.prefill_s, "decode_s": e.decode_s,
                "prefill_tok_s": e.prefill_tok_s, "decode_tok_s": e.decode_tok_s,
                "peak_rss_bytes": self.peak_rss_bytes, "finish_reason": self.finish_reason,
                **({"speculative": self.speculative} if self.speculative is not None else {})}

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the prompt, reused ones included."""
        return self.engine.prefill_tokens + self.cached_tokens

    @property
    def prefill_tok_s(self) -> float:
        return self.engine.prefill_tok_s

    @property
    def decode_tok_s(self) -> float:
        return self.engine.decode_tok_s


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def prompt_text(text: str | bytes | bytearray, what: str = "the prompt") -> str:
    """``text`` as a str that is valid Unicode (UTF-8 ``bytes`` are decoded); OptionError naming ``what`` and the
    first bad byte otherwise (e.g. undecodable command-line bytes, which Python keeps as lone surrogates)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise OptionError(f"{what} is not valid UTF-8 (byte {bytes(text)[e.start]:#04x} at offset {e.start}); "
                              "give UTF-8 text") from None
    if not isinstance(text, str):
        raise OptionError(f"{what} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        ch = ord(text[e.start])
        byte = f"byte {ch - 0xDC00:#04x}" if 0xDC80 <= ch <= 0xDCFF else f"character U+{ch:04X}"
        raise OptionError(f"{what} is not valid UTF-8 ({byte} at character {e.start}); give UTF-8 text") from None
    return text


def check_options(what: str, given: dict[str, Any], valid: Iterable[str]) -> None:
    """OptionError when ``given`` has a keyword outside ``valid``, naming it and every valid one."""
    valid = sorted(set(valid))
    bad = sorted(k for k in given if k not in valid)
    if bad:
        raise OptionError(f"{what}: unknown option{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}; "
                          f"valid options: {', '.join(valid)}")


#: Sampling / stopping options of every generation method (:meth:`Model.generate_ids`).
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "seed", "stop", "repeat_penalty", "repeat_last_n",
                    "frequency_penalty", "presence_penalty")


@dataclass
class Request:
    """A checked generation request: prompt ids, budget, sampler (holding the prompt as penalty history), stop ids
    (EOS unless ``stop`` named ids) and stop strings."""

    ids: list[int]
    max_tokens: int
    sampler: Sampler
    stop_ids: tuple[int, ...]
    stop_strs: tuple[str, ...]


class Model:
    """A loaded decoder bundle: tokenizer + weight source + engine, computing with its own kernel table
    (:attr:`kernels`, a :class:`~edgespool.kernels.table.KernelTable`: ``kernels.description`` says which kernels
    and why). Models loaded side by side in one process never share or disturb each other's kernels.

    One sequence at a time: the model keeps that sequence's KV cache and the ids in it, and a new call reuses the
    longest common prefix (llama.cpp's prompt cache). Start a new generation only after the previous generator is
    exhausted or closed (reading an older generator after a newer one started raises OptionError). Concurrent
    requests go through :mod:`edgespool.runtime.serving` (batched)."""

    def __init__(self, bundle: Bundle, source: WeightSource, tokenizer: BundleTokenizer,
                 kernels: KernelTable | None = None) -> None:
        self.bundle = bundle
        self.kernels: KernelTable = kernels if kernels is not None else REFERENCE
        self.config = bundle.config
        self.source = source
        self.tokenizer = tokenizer
        self.engine = Engine(source, self.kernels)
        self.stats = GenerationStats()
        self.name = bundle.path.name  # the model name in OpenAI-shaped responses
        self._kv: KVCache | None = None
        self._kv_ids: list[int] = []  # ids whose keys/values are in _kv (its first _kv.length are valid)
        self._generation = 0
        self.speculative: Any = None  # a SpeculativeDecoder (load(draft=...)): generation drafts and verifies
        self.draft: Any = None  # its DraftSetup (the draft's plan, for --plan)
        self.gpu_fallback: str | None = None  # load(gpu_memory=...) ran CPU-only: why

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(prompt_text(text))

    def logits(self, ids: Iterable[int]) -> np.ndarray:
        """float32 logits ``[T, V]`` of a whole sequence (fresh cache)."""
        ids = list(ids)
        cache = self.engine.new_cache(len(ids))
        return self.engine.forward(ids, cache)

    @property
    def context_length(self) -> int:
        """Positions one sequence may use: the memory plan's KV cache when streaming, else the model's context."""
        ctx = int(self.config.max_position_embeddings)
        return min(ctx, self.engine.max_context) if self.engine.max_context is not None else ctx

    def check_request(self, prompt_tokens: int, max_tokens: int) -> None:
        """OptionError unless ``prompt_tokens + max_tokens`` positions fit the model's context and, when
        streaming, the memory plan's KV cache (the message gives both numbers and the plan's budget). Called by
        :meth:`generate_ids` before any cache is allocated or any weight is read for the request."""
        need = prompt_tokens + max_tokens
        what = f"prompt {prompt_tokens} tokens + max_tokens {max_tokens} = {need} positions"
        planned = self.engine.max_context
        plan = getattr(self.source, "plan", None)
        if planned is not None and need > planned:
            from ..units import fmt_bytes

            budget = f" under the {fmt_bytes(plan.budget_bytes)} budget" if plan is not None else ""
            raise OptionError(f"{what} exceed the memory plan's KV cache of {planned} positions{budget}; raise "
                              "--max-context (and the budget) or shorten the prompt / max_tokens")
        ctx = self.config.max_position_embeddings
        if need > ctx:
            raise OptionError(f"{what} exceed the model's context of {ctx} tokens; shorten the prompt or "
                              "max_tokens")

    def request(self, prompt: str | bytes | Iterable[int], max_tokens: int | None = 32, *,
                temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                stop: Any = None, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
                frequency_penalty: float = 0.0, presence_penalty: float = 0.0) -> Request:
        """Check every option of a generation and return the :class:`Request` (nothing computed yet). ``prompt``:
        text (``str`` or UTF-8 ``bytes``, encoded with the bundle's tokenizer) or ids. ``max_tokens=None``: up to
        :attr:`context_length` (capped at 4096 positions when resident). ``stop``: strings (matched on the decoded
        text across token boundaries; EOS still stops) and/or token ids (which replace the EOS ids; ``[]`` never
        stops early). Penalties: see :mod:`edgespool.runtime.decoder.sampling`. Raises OptionError for invalid text,
        ids outside the vocabulary, a negative seed or max_tokens, a request longer than the context
        (:meth:`check_request`), bad sampling values."""
        if isinstance(prompt, (str, bytes, bytearray)):
            ids = self.encode(prompt_text(prompt))
        else:
            ids = self._check_ids(prompt)
        if not ids:
            raise OptionError("the prompt encodes to no tokens and the model has no BOS token; give some text")
        if max_tokens is None:
            limit = self.context_length if self.engine.max_context is not None else min(self.context_length, 4096)
            max_tokens = max(0, limit - len(ids))
        if not _is_int(max_tokens) or max_tokens < 0:
            raise OptionError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
        if seed is not None and (not _is_int(seed) or seed < 0):
            raise OptionError(f"seed must be an integer >= 0 (or None for a random one), got {seed!r}")
        max_tokens = int(max_tokens)
        self.check_request(len(ids), max_tokens)
        stop_ids, stop_strs = split_stops(stop, self.config.vocab_size)
        sampler = Sampler(temperature, top_k, top_p, None if seed is None else int(seed),
                          repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                          frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, history=ids)
        return Request(ids, max_tokens, sampler, self.tokenizer.eos_token_ids if stop_ids is None else stop_ids,
                       stop_strs)

    def _check_ids(self, ids: Iterable[Any]) -> list[int]:
        V = self.config.vocab_size
        out = []
        for t in ids:
            if not _is_int(t) or not 0 <= t < V:
                raise OptionError(f"prompt: token id {t!r} is not in the vocabulary (0..{V - 1})")
            out.append(int(t))
        return out

    def _request(self, what: str, prompt: Any, max_tokens: Any, options: dict[str, Any]) -> Request:
        check_options(what, options, SAMPLING_OPTIONS)
        return self.request(prompt, max_tokens, **options)

    def generate_ids(self, prompt: str | bytes | Iterable[int], max_tokens: int | None = 32,
                     **options: Any) -> Iterator[int]:
        """Token ids after ``prompt``; ``options``: :data:`SAMPLING_OPTIONS` (see :meth:`request`; checked here,
        at the call, before anything is computed). A stop string ends generation at the token that completes it
        (that token is not yielded; earlier tokens of a partial match are, as ids cannot be split)."""
        req = self._request("generate_ids", prompt, max_tokens, options)
        return (tok for tok, _ in self._run(req) if tok >= 0)

    def generate(self, prompt: str | bytes | Iterable[int], max_tokens: int | None = 32,
                 **options: Any) -> Iterator[str]:
        """Stream text pieces of the continuation of ``prompt`` (options as :meth:`generate_ids`); a stop string
        and anything after it are not emitted."""
        req = self._request("generate", prompt, max_tokens, options)
        return (text for _, text in self._run(req) if text)

    def reset(self) -> None:
        """Forget the kept KV cache (the next call processes its whole prompt)."""
        self._kv, self._kv_ids = None, []

    def _cache_for(self, ids: list[int], max_tokens: int) -> tuple[KVCache, int]:
        """The KV cache for a request and how many leading ``ids`` it already holds (at least one id is left to
        compute, for the first logits). The kept cache is reused when it is large enough and of the engine's
        format; else a new one: the plan's KV cache size when streaming (the plan budgets it), else the need
        rounded up to 1024 positions (capped at the model's context) so later turns fit, holding the kept cache's
        common prefix when the old one was merely too small (a long chat turn keeps the conversation's KV)."""
        need = len(ids) + max_tokens
        kv = self._kv
        p = 0
        if kv is not None and kv.dtype == self.engine.kv_dtype:
            for a, b in zip(self._kv_ids[:kv.length], ids[:-1]):
                if a != b:
                    break
                p += 1
            if kv.max_len >= need:
                kv.truncate(p)
                return kv, p
        if self.engine.max_context is not None:
            self._kv = kv = None  # free the old one before allocating
            return self.engine.new_cache(self.engine.max_context), 0
        size = max(need, min(int(self.config.max_position_embeddings), -(-need // 1024) * 1024))
        self._kv = None
        if p == 0 or type(kv) is not KVCache:
            kv = None  # nothing to keep: the old one is freed before allocating
        new = self.engine.new_cache(size)
        if kv is not None and type(new) is KVCache and new.dtype == kv.dtype:  # outgrown: keep its common prefix
            new.copy_prefix_from(kv, p)
            return new, p
        return new, 0

    def _run(self, req: Request) -> Iterator[tuple[int, str]]:
        """Generate ``req``: yield (token id, text to emit) per token; records :attr:`stats`."""
        self._generation += 1
        me = self._generation
        kv, reused = self._cache_for(req.ids, req.max_tokens)
        self._kv, self._kv_ids = kv, list(req.ids)
        self.engine.stats.reset()
        st = self.stats = GenerationStats(self.engine.stats, cached_tokens=reused)
        out = TextOutput(self.tokenizer, req.stop_strs)
        st.finish_reason = "length"
        if req.max_tokens == 0:
            return
        if self.speculative is not None:
            gen = self.speculative.generate(req.ids[reused:], req.max_tokens, req.sampler, req.stop_ids, cache=kv,
                                            prefix=req.ids[:reused])
        else:
            gen = self.engine.generate(req.ids[reused:], req.max_tokens, req.sampler, req.stop_ids, cache=kv)
        try:
            for tok in gen:
                if self._generation != me:
                    raise OptionError("another generation started on this model while this one was being read; "
                                      "finish or close one generator before starting the next")
                self._kv_ids.append(tok)
                text = out.push(tok)
                if out.stopped is not None:
                    st.finish_reason = "stop"
                    if text:
                        yield -1, text  # the text before the stop string (no token: it completed the stop)
                    return
                st.generated_tokens += 1
                yield tok, text
            if st.generated_tokens < req.max_tokens:
                st.finish_reason = "stop"  # a stop id / EOS
            tail = out.flush()
            if tail:
                yield -1, tail
        finally:
            gen.close()
            st.peak_rss_bytes = peak_rss_bytes()
            if self.speculative is not None:
                st.speculative = self.speculative.stats.to_dict()

    # -- llama-cpp-python / OpenAI shaped calls ---------------------------------------------------------------
    def _timings(self) -> dict[str, Any]:
        e, st = self.engine.stats, self.stats
        return shapes.timings(e.prefill_tokens, e.prefill_s, st.generated_tokens, e.decode_s, st.cached_tokens)

    def _usage(self) -> dict[str, Any]:
        st = self.stats
        return shapes.usage(st.prompt_tokens, st.generated_tokens, st.cached_tokens)

    def create_completion(self, prompt: str | bytes | Iterable[int], max_tokens: int | None = 16, *,
                          temperature: float = 0.8, top_p: float = 0.95, top_k: int = 40, stream: bool = False,
                          **options: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """A text completion as llama-cpp-python's ``Llama.create_completion`` returns it (OpenAI's
        ``text_completion`` object: choices[0].text / finish_reason, usage, plus llama-server's ``timings``), or
        with ``stream=True`` an iterator of its chunks (the last one carries finish_reason and usage). Defaults
        are llama-cpp-python's (max_tokens 16, temperature 0.8, top_p 0.95, top_k 40); other options:
        :data:`SAMPLING_OPTIONS`."""
        req = self._request("create_completion", prompt, max_tokens,
                            {"temperature": temperature, "top_p": top_p, "top_k": top_k, **options})
        cid = shapes.new_id("cmpl")
        if stream:
            return self._completion_chunks(cid, req)
        text = "".join(t for _, t in self._run(req))
        return shapes.completion(cid, self.name, text, self.stats.finish_reason, self._usage(),
                                 {"timings": self._timings()})

    def _completion_chunks(self, cid: str, req: Request) -> Iterator[dict[str, Any]]:
        for _, text in self._run(req):
            if text:
                yield shapes.completion(cid, self.name, text, None, None)
        yield shapes.completion(cid, self.name, "", self.stats.finish_reason, self._usage(),
                                {"timings": self._timings()})

    def create_chat_completion(self, messages: Iterable[Any], max_tokens: int | None = None, *,
                               temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40, stream: bool = False,
                               tools: list[dict] | None = None, template_vars: dict[str, Any] | None = None,
                               **options: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """The assistant's reply to chat ``messages`` as llama-cpp-python's ``create_chat_completion`` returns it
        (OpenAI's ``chat.completion``: choices[0].message, finish_reason, usage, timings), or with ``stream=True``
        an iterator of ``chat.completion.chunk`` dicts (a first delta with the role, content deltas, a last one
        with finish_reason and usage). The prompt is :meth:`chat_ids`; the previous turn's KV cache is reused for
        the common prefix. Defaults are llama-cpp-python's (temperature 0.2, top_p 0.95, top_k 40, max_tokens up
        to the context)."""
        ids = self.chat_ids(messages, **({"tools": tools} if tools is not None else {}), **(template_vars or {}))
        req = self._request("create_chat_completion", ids, max_tokens,
                            {"temperature": temperature, "top_p": top_p, "top_k": top_k, **options})
        cid = shapes.new_id("chatcmpl")
        if stream:
            return self._chat_chunks(cid, req)
        text = "".join(t for _, t in self._run(req))
        return shapes.chat_completion(cid, self.name, text, self.stats.finish_reason or "stop", self._usage(),
                                      {"timings": self._timings()})

    def _chat_chunks(self, cid: str, req: Request) -> Iterator[dict[str, Any]]:
        yield shapes.chat_chunk(cid, self.name, {"role": "assistant", "content": ""})
        for _, text in self._run(req):
            if text:
                yield shapes.chat_chunk(cid, self.name, {"content": text})
        yield shapes.chat_chunk(cid, self.name, {}, self.stats.finish_reason,
                                {"usage": self._usage(), "timings": self._timings()})

    @cached_property
    def chat_template(self) -> ChatTemplate:
        """The bundle's chat template (:class:`~edgespool.errors.ChatTemplateError` when the bundle has none)."""
        return ChatTemplate.from_bundle(self.bundle.path, self._chat_section())

    def _chat_section(self) -> dict[str, Any]:
        section = dict(self.bundle.manifest["tokenizer"])
        section.setdefault("special_tokens", self.tokenizer.special_tokens())
        return section

    def chat_prompt(self, messages: Iterable[Any], *, add_generation_prompt: bool = True,
                    template: str | ChatTemplate | None = None, **template_vars: Any) -> str:
        """The prompt text of chat ``messages`` (``[{"role": "user", "content": "..."}, ...]``), rendered with the
        bundle's chat template, or ``template`` (a Jinja string), byte for byte as transformers'
        ``apply_chat_template(messages, tokenize=False, add_generation_prompt=...)``. ``template_vars``:
        ``tools=[...]``, ``documents=[...]``, ``continue_final_message=True`` or any variable the template reads
        (e.g. ``enable_thinking=False``); see :meth:`ChatTemplate.render`."""
        if template is None:
            tmpl = self.chat_template
        elif isinstance(template, ChatTemplate):
            tmpl = template
        else:
            tmpl = ChatTemplate(template, self._chat_section()["special_tokens"], where="the template= chat template")
        return tmpl.render(messages, add_generation_prompt, **template_vars)

    def chat_ids(self, messages: Iterable[Any], **kw: Any) -> list[int]:
        """Token ids of :meth:`chat_prompt`: special-token texts parsed, BOS not doubled when the template emits it
        (:meth:`BundleTokenizer.encode_rendered`)."""
        return self.tokenizer.encode_rendered(prompt_text(self.chat_prompt(messages, **kw), "the chat prompt"))

    def chat(self, messages: Iterable[Any], max_tokens: int | None = 32, *,
             template: str | ChatTemplate | None = None, tools: list[dict] | None = None,
             template_vars: dict[str, Any] | None = None, **sampling: Any) -> Iterator[str]:
        """Stream the assistant's reply to chat ``messages`` as text pieces: the prompt is :meth:`chat_ids` (the
        bundle's chat template, or ``template``; ``tools`` and ``template_vars`` go to the template), then
        :meth:`generate` with ``sampling`` (:data:`SAMPLING_OPTIONS`). Template errors are raised here, before any
        token is generated."""
        check_options("chat", sampling, SAMPLING_OPTIONS)
        ids = self.chat_ids(messages, template=template, **({"tools": tools} if tools is not None else {}),
                            **(template_vars or {}))
        return self.generate(ids, max_tokens, **sampling)

    def close(self) -> None:
        self.reset()
        self.source.close()
        if self.draft is not None:
            self.draft.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_kernels(bundle: Bundle, enabled: bool = True, threads: int | None = None) -> KernelTable:
    """The kernel table a model of ``bundle`` runs with: the bundle's compiled kernels when they fit this machine
    (over the numpy reference), else the numpy reference (saying why in ``description``) when they are disabled,
    the bundle has none, they are for another CPU, or no TVM runtime is installed. Nothing global changes."""
    section = bundle.manifest.get("kernels") or {}

    def reference(why: str) -> KernelTable:
        return REFERENCE.replace(description=f"numpy reference kernels ({why})")

    if not enabled:
        return reference("compiled kernels disabled")
    if not section or section.get("status") == "skipped" or not (bundle.path / "kernels").is_dir():
        return reference(section.get("reason", "the bundle has no compiled kernels"))
    misfit = kernels_misfit(section.get("tvm_target") or {})
    if misfit:
        return reference(misfit)
    from ..errors import EdgespoolError

    from ..kernels.c_blocks import bundle_table

    tvm_why, table = "", None
    if section.get("kernels") or section.get("attention"):
        try:
            from ..kernels.tvm_backend import TvmKernels

            tk = TvmKernels.from_dir(bundle.path / "kernels")
            if tk.specs or tk.attention is not None:
                what = f"{len(tk.specs)} linear" + (", attention" if tk.attention is not None else "")
                table = tk.table(REFERENCE, f"TVM kernels from the bundle ({what}, for {section.get('target', '?')})")
            else:
                tvm_why = "; ".join(tk.fallbacks) or "none of the bundle's TVM kernels fit this machine"
        except (ImportError, EdgespoolError) as e:
            tvm_why = str(e)
    try:  # the C block kernels (int8, int4 g32, kept ggml formats) over the TVM ones
        table = bundle_table(bundle.path / "kernels", section, table, section.get("target", "?"),
                             threads=threads) or table
    except OptionError:  # the user's own setting (e.g. $EDGESPOOL_DECODE_FORM): named, not a silent fallback
        raise
    except EdgespoolError as e:
        tvm_why = "; ".join(filter(None, [tvm_why, str(e)]))
    if table is None:
        return reference(tvm_why or "none of the bundle's kernels fit this machine")
    return table


def kernels_misfit(tvm_target: dict[str, Any]) -> str | None:
    """Why kernels compiled for ``tvm_target`` must not run here (they could execute illegal instructions), or
    None when they fit: another ISA; on x86 an LLVM mcpu whose instruction sets (``X86_MCPU_NEEDS``; another mcpu than
    this CPU's when not tabled) this CPU lacks; on ARM, dotprod on a CPU without it."""
    from ..targets import get_target
    from ..targets.profiles import X86_MCPU_NEEDS

    host = get_target("host")
    triple = str(tvm_target.get("mtriple", ""))
    if triple and not triple.startswith(host.isa):
        return f"kernels are for {triple}, this machine is {host.isa}"
    mcpu = tvm_target.get("mcpu")
    if host.isa == "x86_64" and mcpu and mcpu != host.cpu:
        need = X86_MCPU_NEEDS.get(mcpu)
        if need is None:  # an mcpu whose instruction sets are not tabled here: only that CPU
            return f"kernels are for mcpu {mcpu}, this CPU is {host.cpu}; re-export with --target host"
        if not need <= set(host.features):
            return (f"kernels are for mcpu {mcpu}, which needs {', '.join(sorted(need - set(host.features)))}; "
                    f"this CPU ({host.cpu}) lacks it; re-export with --target host")
    if host.isa == "aarch64" and "+dotprod" in tvm_target.get("mattr", []) and "asimddp" not in host.features:
        return "kernels use the dotprod extension, which this CPU lacks; re-export for this board"
    return None


def load(path: str | os.PathLike, *, memory_budget: str | int | None = None, target: str | None = None,
         verify: bool = True, kernels: bool | KernelTable = True, mmap: bool = False, n_threads: int | None = None,
         draft: str | os.PathLike | None = None, draft_tokens: int | None = None, draft_budget: str | int | None = None,
         gpu_memory: str | int | None = None, gpu_context: int | None = None, gpu_zero_copy: bool | None = None,
         gpu_moe: bool = False,
         draft_gpu_memory: str | int | None = None, **stream_options: Any) -> Model:
    """Open a decoder bundle. Without ``memory_budget`` every weight is read once and kept resident (CRC-checked
    when ``verify``) the first time the engine needs it (``mmap=True``: mapped instead, llama.cpp-style); with one,
    weights stream from storage under that budget (see edgespool.offload); ``stream_options`` then go to the planner
    (max_context, max_batch_tokens, kv_dtype, ...) and the streaming source (io_threads, ...).
    ``kernels``: True = the bundle's compiled kernels when they fit this machine (:func:`resolve_kernels`), False =
    the numpy reference, or a :class:`~edgespool.kernels.table.KernelTable` to run with. ``n_threads``: worker
    threads of the bundle's C block kernels (default $EDGESPOOL_THREADS, else the usable cores); the numpy
    reference kernels use BLAS's own threads. The model keeps its table (:attr:`Model.kernels`); nothing
    process-global changes, so models load and close in any order.
    ``draft``: speculative decoding (docs/SPECULATIVE.md) with a draft bundle of the same tokenizer, ``"ngram"``
    (prompt lookup) or ``"self"`` / ``"self:N"`` (the first N layers + head); up to ``draft_tokens`` per verify
    pass (default: 12 streamed, 4 resident; the adaptive k picks below it); with a budget the draft model comes out
    of it (``draft_budget``: its share; default: all the target can spare).
    ``gpu_memory``: CPU/GPU split execution under that GPU memory budget (docs/GPU.md): the placement plan puts
    layers and the head GPU-resident, streamed to the GPU or on the CPU; without a usable GPU (no CuPy, no device)
    the model runs on the CPU and ``model.gpu_fallback`` says why. ``gpu_context``: positions of the GPU layers'
    KV cache (default: ``max_context`` when streaming, else the model's context up to 4096). ``gpu_zero_copy``:
    the GPU-resident weights are placed once in page-locked host memory the GPU reads in place, never copied to
    device memory (for unified-memory boards such as Jetson's; on a discrete GPU they are read over the bus every
    token; off by default until it has run on a GPU). ``gpu_moe``: MoE layers on the GPU too, their routed experts
    resident there or computed on the CPU as the plan says (experimental: not yet run on a GPU).
    ``draft_gpu_memory`` (Dovetail mode): the draft model runs on the GPU under that budget, the target verifies on
    the CPU; without a usable GPU the draft runs on the CPU and ``model.draft.gpu_fallback`` says why.
    Unknown keyword arguments (a misspelt ``memry_budget``) raise OptionError naming the valid ones."""
    _check_load_options(stream_options, memory_budget is not None)
    if n_threads is not None and (not _is_int(n_threads) or n_threads < 1):
        raise OptionError(f"n_threads must be an integer >= 1 (or None for the usable cores), got {n_threads!r}")
    bundle = Bundle(Path(path))
    if bundle.kind != "decoder":
        raise BundleError(f"{path}: a {bundle.kind} bundle; decoder generation needs a decoder bundle "
                          "(CNN bundles run with `edgespool run BUNDLE --image ...`)")
    tok = BundleTokenizer.from_manifest(bundle.path, bundle.manifest["tokenizer"])
    # the model's kernels first: the streaming plan reserves their workspace, the neuron windows compute with them
    table = kernels if isinstance(kernels, KernelTable) else resolve_kernels(bundle, bool(kernels), n_threads)
    spec = None
    if draft is None and draft_gpu_memory is not None:
        raise OptionError("draft_gpu_memory (--draft-gpu-budget) only applies with draft= (--draft BUNDLE)")
    if gpu_zero_copy is not None and gpu_memory is None:
        raise OptionError("gpu_zero_copy (--gpu-zero-copy) only applies with gpu_memory= (--gpu-budget)")
    if gpu_moe and gpu_memory is None:
        raise OptionError("gpu_moe only applies with gpu_memory= (--gpu-budget)")
    if draft is not None:  # checked and opened first: its share of the budget is reserved in the target's plan
        from ..offload.streaming_source import _PLAN_KEYS
        from .decoder.drafts import open_draft

        spec = open_draft(draft, bundle, draft_tokens=draft_tokens, draft_budget=draft_budget,
                          budget=None if memory_budget is None else parse_bytes(memory_budget, "memory_budget"),
                          kernels_for=lambda b: resolve_kernels(b, bool(kernels), n_threads), target_kernels=table,
                          target=target, verify=verify,
                          plan_options={k: v for k, v in stream_options.items() if k in _PLAN_KEYS},
                          draft_gpu_memory=draft_gpu_memory)
        if memory_budget is not None:
            stream_options = {**stream_options, **spec.target_plan_options}
    try:
        if memory_budget is None:
            source: WeightSource = ResidentWeights(bundle, verify=verify, mmap=mmap)
        else:
            from ..offload.streaming_source import open_streaming

            budget = parse_bytes(memory_budget, "memory_budget")
            source = open_streaming(bundle, budget, target=target, verify=verify, kernels=table, **stream_options)
        gpu_why = None
        if gpu_memory is not None:  # CPU/GPU split: the GPU layers wrap the CPU source
            from ..offload.gpu_split import open_split
            from .decoder.layer_probe import cpu_layer_step_seconds

            split, gpu_why = open_split(bundle, source, parse_bytes(gpu_memory, "gpu_memory"), table,
                                        max_context=gpu_context or stream_options.get("max_context"),
                                        cpu_layer_s=cpu_layer_step_seconds, zero_copy=gpu_zero_copy,
                                        moe=bool(gpu_moe))
            source = split if split is not None else source
        model = Model(bundle, source, tok, table)
        model.gpu_fallback = gpu_why or None
        if gpu_memory is not None and gpu_why == "":  # prompt chunks the planned GPU workspace holds
            from ..offload.gpu_split import placed_prefill_chunk

            chunk = placed_prefill_chunk(source)
            model.engine.prefill_chunk = min(model.engine.prefill_chunk or chunk, chunk)
        if spec is not None:
            model.speculative = spec.decoder(model.engine)
            model.draft = spec
    except BaseException:
        if spec is not None:
            spec.close()
        raise
    return model


def stream_option_names() -> tuple[str, ...]:
    """Keyword options :func:`load` passes on when streaming: the planner's and :class:`StreamingWeights`'."""
    from ..offload.streaming_source import _PLAN_KEYS, StreamingWeights

    params = inspect.signature(StreamingWeights.__init__).parameters
    own = {"self", "bundle", "plan", "verify", "kernels"}
    return tuple(_PLAN_KEYS) + tuple(n for n, p in params.items() if n not in own and p.kind == p.KEYWORD_ONLY)


def _check_load_options(options: dict[str, Any], streaming: bool) -> None:
    """OptionError for a keyword :func:`load` does not know (naming every valid one, from its signature and the
    streaming options), or a streaming option given without ``memory_budget``."""
    own = [n for n, p in inspect.signature(load).parameters.items()
           if p.kind == p.KEYWORD_ONLY]
    stream = stream_option_names()
    check_options("load()", options, (*own, *stream))
    if options and not streaming:
        raise OptionError(f"load(): {', '.join(sorted(options))} only appl{'ies' if len(options) == 1 else 'y'} when "
                          "streaming; give memory_budget= too (resident mode sizes the KV cache per request)")
