"""The public Python API for on-device apps::

    from edgespool import load
    m = load("bundle/")                                   # resident
    m = load("bundle/", memory_budget="512MiB")           # streaming under a budget
    for piece in m.generate("Once upon a time", max_tokens=32, temperature=0.8, seed=1):
        print(piece, end="", flush=True)
    for piece in m.chat([{"role": "user", "content": "Hi!"}], max_tokens=32):  # the bundle's chat template
        print(piece, end="", flush=True)
    print(m.stats)                                        # tokens/s, prefill, peak RSS
"""
from __future__ import annotations

import os
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
from .decoder.sampling import Sampler
from .decoder.tokenizer import BundleTokenizer
from .decoder.weights import ResidentWeights, WeightSource


@dataclass
class GenerationStats:
    """Measured figures of the last :meth:`Model.generate` call: the engine's own timers (time inside forward
    passes only) plus what the caller sees (tokens yielded, peak RSS)."""

    engine: EngineStats = field(default_factory=EngineStats)
    generated_tokens: int = 0
    peak_rss_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        e = self.engine
        return {"prompt_tokens": e.prefill_tokens, "generated_tokens": self.generated_tokens,
                "prefill_s": e.prefill_s, "decode_s": e.decode_s, "prefill_tok_s": e.prefill_tok_s,
                "decode_tok_s": e.decode_tok_s, "peak_rss_bytes": self.peak_rss_bytes}

    @property
    def prompt_tokens(self) -> int:
        return self.engine.prefill_tokens

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


class Model:
    """A loaded decoder bundle: tokenizer + weight source + engine, computing with its own kernel table
    (:attr:`kernels`, a :class:`~edgespool.kernels.table.KernelTable`: ``kernels.description`` says which kernels
    and why). Models loaded side by side in one process never share or disturb each other's kernels."""

    def __init__(self, bundle: Bundle, source: WeightSource, tokenizer: BundleTokenizer,
                 kernels: KernelTable | None = None) -> None:
        self.bundle = bundle
        self.kernels: KernelTable = kernels if kernels is not None else REFERENCE
        self.config = bundle.config
        self.source = source
        self.tokenizer = tokenizer
        self.engine = Engine(source, self.kernels)
        self.stats = GenerationStats()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(prompt_text(text))

    def logits(self, ids: Iterable[int]) -> np.ndarray:
        """float32 logits ``[T, V]`` of a whole sequence (fresh cache)."""
        ids = list(ids)
        cache = self.engine.new_cache(len(ids))
        return self.engine.forward(ids, cache)

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

    def generate_ids(self, prompt: str | bytes | Iterable[int], max_tokens: int = 32, *, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                     stop: Iterable[int] | None = None) -> Iterator[int]:
        """Token ids after ``prompt`` (text -- ``str`` or UTF-8 ``bytes`` -- encoded with the bundle's tokenizer,
        or ids). Stops at the model's EOS tokens unless ``stop`` is given (an empty list never stops early).
        Every argument is checked here, at the call, before anything is computed: invalid text, token ids outside
        the vocabulary, a negative seed or max_tokens, a request longer than the model's context or the memory
        plan's KV cache (:meth:`check_request`) raise :class:`~edgespool.errors.OptionError`."""
        if isinstance(prompt, (str, bytes, bytearray)):
            ids = self.encode(prompt_text(prompt))
        else:
            ids = self._check_ids(prompt)
        if not ids:
            raise OptionError("the prompt encodes to no tokens and the model has no BOS token; give some text")
        if not _is_int(max_tokens) or max_tokens < 0:
            raise OptionError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
        if seed is not None and (not _is_int(seed) or seed < 0):
            raise OptionError(f"seed must be an integer >= 0 (or None for a random one), got {seed!r}")
        max_tokens = int(max_tokens)
        self.check_request(len(ids), max_tokens)
        stop = None if stop is None else tuple(stop)
        if stop is not None and not all(_is_int(t) for t in stop):
            raise OptionError(f"stop must be token ids (integers), got {list(stop)[:8]!r}")
        stops = self.tokenizer.eos_token_ids if stop is None else tuple(int(t) for t in stop)
        sampler = Sampler(temperature, top_k, top_p, None if seed is None else int(seed))
        return self._generate(ids, max_tokens, sampler, stops)

    def _check_ids(self, ids: Iterable[Any]) -> list[int]:
        V = self.config.vocab_size
        out = []
        for t in ids:
            if not _is_int(t) or not 0 <= t < V:
                raise OptionError(f"prompt: token id {t!r} is not in the vocabulary (0..{V - 1})")
            out.append(int(t))
        return out

    def _generate(self, ids: list[int], max_tokens: int, sampler: Sampler, stops: tuple[int, ...]) -> Iterator[int]:
        self.engine.stats.reset()
        st = self.stats = GenerationStats(self.engine.stats)
        for tok in self.engine.generate(ids, max_tokens, sampler, stops):
            st.generated_tokens += 1
            yield tok
        st.peak_rss_bytes = peak_rss_bytes()

    def generate(self, prompt: str | Iterable[int], max_tokens: int = 32, **kw: Any) -> Iterator[str]:
        """Stream text pieces of the continuation of ``prompt`` (see :meth:`generate_ids` for options)."""
        return self.tokenizer.stream(self.generate_ids(prompt, max_tokens, **kw))

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

    def chat(self, messages: Iterable[Any], max_tokens: int = 32, *, template: str | ChatTemplate | None = None,
             tools: list[dict] | None = None, template_vars: dict[str, Any] | None = None,
             **sampling: Any) -> Iterator[str]:
        """Stream the assistant's reply to chat ``messages`` as text pieces: the prompt is :meth:`chat_ids` (the
        bundle's chat template, or ``template``; ``tools`` and ``template_vars`` go to the template), then
        :meth:`generate` with ``sampling`` (temperature, top_k, top_p, seed, stop). Template errors are raised
        here, before any token is generated."""
        ids = self.chat_ids(messages, template=template, **({"tools": tools} if tools is not None else {}),
                            **(template_vars or {}))
        return self.generate(ids, max_tokens, **sampling)

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_kernels(bundle: Bundle, enabled: bool = True) -> KernelTable:
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
        table = bundle_table(bundle.path / "kernels", section, table, section.get("target", "?")) or table
    except EdgespoolError as e:
        tvm_why = "; ".join(filter(None, [tvm_why, str(e)]))
    if table is None:
        return reference(tvm_why or "none of the bundle's kernels fit this machine")
    return table


def kernels_misfit(tvm_target: dict[str, Any]) -> str | None:
    """Why kernels compiled for ``tvm_target`` must not run here (they could execute illegal instructions), or
    None when they fit: another ISA; on x86 another LLVM mcpu than this CPU's; on ARM, dotprod on a CPU without it."""
    from ..targets import get_target

    host = get_target("host")
    triple = str(tvm_target.get("mtriple", ""))
    if triple and not triple.startswith(host.isa):
        return f"kernels are for {triple}, this machine is {host.isa}"
    if host.isa == "x86_64" and tvm_target.get("mcpu") and tvm_target.get("mcpu") != host.cpu:
        return f"kernels are for mcpu {tvm_target.get('mcpu')}, this CPU is {host.cpu}; re-export with --target host"
    if host.isa == "aarch64" and "+dotprod" in tvm_target.get("mattr", []) and "asimddp" not in host.features:
        return "kernels use the dotprod extension, which this CPU lacks; re-export for this board"
    return None


def load(path: str | os.PathLike, *, memory_budget: str | int | None = None, target: str | None = None,
         verify: bool = True, kernels: bool | KernelTable = True, mmap: bool = False,
         **stream_options: Any) -> Model:
    """Open a decoder bundle. Without ``memory_budget`` every weight is read once and kept resident (CRC-checked
    when ``verify``) the first time the engine needs it (``mmap=True``: mapped instead, llama.cpp-style); with one,
    weights stream from storage under that budget (see edgespool.offload).
    ``kernels``: True = the bundle's compiled kernels when they fit this machine (:func:`resolve_kernels`), False =
    the numpy reference, or a :class:`~edgespool.kernels.table.KernelTable` to run with. The model keeps its
    table (:attr:`Model.kernels`); nothing process-global changes, so models load and close in any order."""
    bundle = Bundle(Path(path))
    if bundle.kind != "decoder":
        raise BundleError(f"{path}: a {bundle.kind} bundle; decoder generation needs a decoder bundle "
                          "(CNN bundles run with `edgespool run BUNDLE --image ...`)")
    tok = BundleTokenizer.from_manifest(bundle.path, bundle.manifest["tokenizer"])
    # the model's kernels first: the streaming plan reserves their workspace, the neuron windows compute with them
    table = kernels if isinstance(kernels, KernelTable) else resolve_kernels(bundle, bool(kernels))
    if memory_budget is None:
        source: WeightSource = ResidentWeights(bundle, verify=verify, mmap=mmap)
    else:
        from ..offload.streaming_source import open_streaming

        budget = parse_bytes(memory_budget, "memory_budget")
        source = open_streaming(bundle, budget, target=target, verify=verify, kernels=table, **stream_options)
    return Model(bundle, source, tok, table)
