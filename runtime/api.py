"""The public Python API for on-device apps::

    from edgespool import load
    m = load("bundle/")                                   # resident
    m = load("bundle/", memory_budget="512MiB")           # streaming under a budget
    for piece in m.generate("Once upon a time", max_tokens=32, temperature=0.8, seed=1):
        print(piece, end="", flush=True)
    print(m.stats)                                        # tokens/s, prefill, peak RSS
"""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import BundleError, OptionError
from .bundle import Bundle
from .engine import Engine
from .sampling import Sampler
from .tokenizer import BundleTokenizer
from .weights import ResidentWeights, WeightSource


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (getrusage; Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@dataclass
class GenerationStats:
    """Measured figures of the last :meth:`Model.generate` call."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    peak_rss_bytes: int = 0

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        n = max(self.generated_tokens - 1, 0)  # the first token comes out of the prefill step
        return n / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
                "prefill_s": self.prefill_s, "decode_s": self.decode_s, "prefill_tok_s": self.prefill_tok_s,
                "decode_tok_s": self.decode_tok_s, "peak_rss_bytes": self.peak_rss_bytes}


class Model:
    """A loaded decoder bundle: tokenizer + weight source + engine."""

    def __init__(self, bundle: Bundle, source: WeightSource, tokenizer: BundleTokenizer) -> None:
        self.bundle = bundle
        self.config = bundle.config
        self.source = source
        self.tokenizer = tokenizer
        self.engine = Engine(source)
        self.stats = GenerationStats()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def logits(self, ids: Iterable[int]) -> np.ndarray:
        """float32 logits ``[T, V]`` of a whole sequence (fresh cache)."""
        ids = list(ids)
        cache = self.engine.new_cache(len(ids))
        return self.engine.forward(ids, cache)

    def generate_ids(self, prompt: str | Iterable[int], max_tokens: int = 32, *, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                     stop: Iterable[int] | None = None) -> Iterator[int]:
        """Token ids after ``prompt`` (text, encoded with the bundle's tokenizer, or ids). Stops at the model's EOS
        tokens unless ``stop`` is given (an empty list never stops early)."""
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            raise OptionError("the prompt encodes to no tokens and the model has no BOS token; give some text")
        stops = self.tokenizer.eos_token_ids if stop is None else tuple(stop)
        sampler = Sampler(temperature, top_k, top_p, seed)
        self.engine.stats.reset()
        st = self.stats = GenerationStats(prompt_tokens=len(ids))
        for tok in self.engine.generate(ids, max_tokens, sampler, stops):
            st.generated_tokens += 1
            st.prefill_s, st.decode_s = self.engine.stats.prefill_s, self.engine.stats.decode_s
            yield tok
        st.prefill_s, st.decode_s = self.engine.stats.prefill_s, self.engine.stats.decode_s
        st.peak_rss_bytes = peak_rss_bytes()

    def generate(self, prompt: str | Iterable[int], max_tokens: int = 32, **kw: Any) -> Iterator[str]:
        """Stream text pieces of the continuation of ``prompt`` (see :meth:`generate_ids` for options)."""
        return self.tokenizer.stream(self.generate_ids(prompt, max_tokens, **kw))

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(path: str | os.PathLike, *, memory_budget: str | int | None = None, target: str | None = None,
         verify: bool = True, **stream_options: Any) -> Model:
    """Open a decoder bundle. Without ``memory_budget`` every weight is read once and kept resident (CRC-checked
    when ``verify``); with one, weights stream from storage under that budget (see edgespool.offload)."""
    bundle = Bundle(Path(path))
    if bundle.kind != "decoder":
        raise BundleError(f"{path}: a {bundle.kind} bundle; decoder generation needs a decoder bundle "
                          "(CNN bundles run with `edgespool run BUNDLE --image ...`)")
    tok = BundleTokenizer.from_manifest(bundle.path, bundle.manifest["tokenizer"])
    if memory_budget is None:
        source: WeightSource = ResidentWeights(bundle, verify=verify)
    else:
        from ..units import parse_bytes
        from ..offload.streaming_source import open_streaming

        budget = parse_bytes(memory_budget, "memory_budget")
        source = open_streaming(bundle, budget, target=target, verify=verify, **stream_options)
    return Model(bundle, source, tok)
