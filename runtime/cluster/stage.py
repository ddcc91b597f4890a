"""One board's share of a pipeline-parallel model: layers ``[start, stop)`` of the bundle, the embedding on the
first stage, the final norm and head on the last, and a KV cache that holds only the stage's own layers."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...errors import OptionError
from ..bundle.config import ModelConfig
from ..decoder.engine import Engine
from ..decoder.kvcache import KVCache


class StageKVCache(KVCache):
    """A :class:`KVCache` of layers ``first..first+n-1`` only: the engine writes and reads it with absolute layer
    indices, stored at ``layer - first``."""

    def __init__(self, config: ModelConfig, first: int, stop: int, max_len: int, dtype: str = "f32") -> None:
        if not 0 <= first < stop <= config.num_layers:
            raise OptionError(f"stage layers [{first}, {stop}) outside the model's {config.num_layers} layers")
        super().__init__(replace(config, num_layers=stop - first), max_len, dtype)
        self.first = first

    def write(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        super().write(layer - self.first, k, v)

    def view(self, layer: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        return super().view(layer - self.first, start, end)


class Stage:
    """Layers ``[start, stop)`` of ``engine``'s model. :meth:`step` takes token ids (first stage) or the previous
    stage's hidden states ``[T, H]`` and returns hidden states ``[T, H]`` (not the last stage) or float32 logits
    (the last stage; ``[1, V]`` with ``last_only``)."""

    def __init__(self, engine: Engine, start: int, stop: int) -> None:
        L = engine.config.num_layers
        if not 0 <= start < stop <= L:
            raise OptionError(f"stage layers [{start}, {stop}) outside the model's {L} layers")
        if getattr(engine.source, "device_layers", None) is not None:
            raise OptionError("a pipeline stage runs on the CPU engine; this source computes layers on a GPU")
        self.engine, self.start, self.stop = engine, start, stop

    @property
    def first(self) -> bool:
        return self.start == 0

    @property
    def last(self) -> bool:
        return self.stop == self.engine.config.num_layers

    def new_cache(self, max_len: int) -> StageKVCache:
        return StageKVCache(self.engine.config, self.start, self.stop, max_len, self.engine.kv_dtype)

    def step(self, inp: np.ndarray, cache: StageKVCache, last_only: bool = True,
             logits: bool = True) -> np.ndarray | None:
        """Run the stage's layers over ``inp`` (token ids when first, hidden states otherwise); the last stage
        returns nothing with ``logits=False`` (a prompt chunk that is not the prompt's last)."""
        layers = None if self.last else self.stop
        if self.first:
            return self.engine.forward(inp, cache, last_only=last_only, layers=layers, logits=logits,
                                       hidden_out=not self.last)
        return self.engine.forward(None, cache, last_only=last_only, layers=layers, logits=logits, hidden=inp,
                                   first_layer=self.start, hidden_out=not self.last)


def open_stage(bundle, start: int, stop: int, *, budget: int | str | None = None, kernels=None,
               kv_dtype: str = "f32", max_context: int | None = None, **stream_options) -> Stage:
    """Layers ``[start, stop)`` of ``bundle`` (a :class:`~edgespool.runtime.bundle.reader.Bundle`) as a
    :class:`Stage`: resident weights without ``budget`` (only the stage's groups are ever read), else streamed
    under the stage's own memory budget (:func:`~edgespool.schedulers.memory_plan.plan_memory` with a
    :class:`~edgespool.schedulers.stage_role.StageRole`: only its layers, the embedding on the first stage, the
    head on the last, a KV cache of ``max_context`` positions of its layers). ``stream_options`` go to
    :func:`~edgespool.offload.streaming_source.open_streaming` (e.g. ``rate_limiter``, ``direct``)."""
    from ...kernels.table import REFERENCE
    from ...offload.streaming_source import open_streaming
    from ...schedulers.stage_role import StageRole
    from ..decoder.weights import ResidentWeights

    kern = kernels or REFERENCE
    if budget is None:
        source = ResidentWeights(bundle)
    else:
        role = StageRole.of_range(start, stop, bundle.config.num_layers)
        source = open_streaming(bundle, budget, kernels=kern, stage=role, kv_dtype=kv_dtype,
                                max_context=max_context, **stream_options)
    return Stage(Engine(source, kern, kv_dtype=kv_dtype), start, stop)
