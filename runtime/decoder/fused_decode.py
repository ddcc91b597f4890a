"""Which decode steps run each decoder layer as one C call (issue 12), and the per-layer C descriptions.

:meth:`Engine.forward` asks :meth:`FusedDecode.for_step` before its layer loop; a layer then goes through
:class:`~edgespool.kernels.c_layer.DecoderLayerC` (bit-identical to the Python layer) exactly when all of these
hold, and through the generic Python path otherwise:

* the model: no q/k norms, no post-norms, no ``clip_qkv``, residual multiplier 1, no attention score soft-cap,
  SiLU FFN activation; the table's backend is the C block kernels and every linear / attention entry of the table
  is that backend's own (a table with wrapped kernels, e.g. ``edgespool bench``'s timed one, keeps the Python path);
* the step: one new token (a decode row; prompt chunks keep the batched Python path), one sequence in a float32
  :class:`KVCache`, a source that ``serves_fused_decode`` (:class:`ResidentWeights`, the split's CPU-layer cost
  probe; streaming sources need ``on_hidden`` between the blocks;
  a CPU/GPU split's CPU layers qualify when its CPU source is resident), no tensor-parallel reduction;
  ``$EDGESPOOL_FUSED_DECODE`` not ``0``;
* the layer: dense (not MoE, not a bundled FFN), with RoPE and no sliding window, all seven matrices x16-packed by
  the backend's library (``DecoderLayerC.build``).
"""
from __future__ import annotations

import os

import numpy as np

from ...kernels.c_blocks import BlockKernels, PrefillFirst
from ...kernels.c_layer import ORDER, DecoderLayerC
from ...kernels.table import KernelTable, RoutedLinear
from ..bundle.config import ModelConfig
from .kvcache import KVCache

ENV = "EDGESPOOL_FUSED_DECODE"


def model_reason(config: ModelConfig, kernels: KernelTable) -> str | None:
    """Why no layer of this model takes the fused decode path (None: layers may)."""
    c = config
    for flag, why in ((c.qk_norm, "q/k norms"), (c.post_norms, "post-norms"), (c.clip_qkv is not None, "clip_qkv"),
                      (c.residual_multiplier != 1, "residual multiplier"),
                      (bool(c.attn_logit_softcap), "attention soft-cap"), (c.hidden_act != "silu", c.hidden_act)):
        if flag:
            return why
    kern = kernels.backend
    if not isinstance(kern, BlockKernels):
        return "no C block kernels"
    att = kernels.attention_kernel
    if not isinstance(att, PrefillFirst) or getattr(att.first, "__self__", None) is not kern:
        return "the table's attention is not the block kernels' own"
    return None


class FusedDecode:
    """The C layers of one engine, built on first use per layer and re-pointed at each new KV cache."""

    def __init__(self, config: ModelConfig, kernels: KernelTable) -> None:
        self.config, self.kernels = config, kernels
        self.reason = model_reason(config, kernels)
        if os.environ.get(ENV, "1").strip() == "0":
            self.reason = f"${ENV}=0"
        self.enabled = self.reason is None
        self._layers: dict[int, tuple[int, DecoderLayerC | None]] = {}
        self.layer_calls = 0  # layers run through the C path (tests, benchmarks)
        D = config.head_dim
        scale = config.attention_scale
        self._scale = float(np.float32(D ** -0.5 if scale is None else scale))

    def for_step(self, T: int, cache: object, source: object, dev: object, reduce: object) -> bool:
        """Whether this step's layers may take the C path (see the module docstring)."""
        # a CPU/GPU split (``dev``: its GPU layers) takes the C path for its CPU layers when they are resident
        cpu = getattr(source, "cpu", None) if dev is not None else source
        return (self.enabled and T == 1 and type(cache) is KVCache and cache.dtype == "f32"  # type: ignore[attr-defined]
                and getattr(cpu, "serves_fused_decode", False) and reduce is None)

    def layer(self, i: int, w: dict, p: str, cache: KVCache) -> DecoderLayerC | None:
        """Layer ``i``'s C layer writing into ``cache`` (None: this layer keeps the Python path)."""
        c = self.config
        got = self._layers.get(i)
        key = id(w)
        if got is not None and got[0] == key:
            lay = got[1]
            if lay is None or lay.bind(cache.k[i], cache.v[i]):
                return lay
        lay = None
        if (not c.is_moe_layer(i) and not c.window_of(i) and c.rope_of(i) is not None
                and all(isinstance(self.kernels.linear_kernels.get(t.scheme), RoutedLinear)
                        and self.kernels.linear_kernels[t.scheme].kernels is self.kernels.backend
                        for t in (w.get(p + n) for n in ORDER) if t is not None)):
            lay = DecoderLayerC.build(self.kernels.backend, w, p, cache.k[i], cache.v[i], num_heads=c.num_heads,
                                      eps=c.rms_norm_eps, scale=self._scale)
        self._layers[i] = (key, lay)
        return lay
