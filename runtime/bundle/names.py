"""Canonical tensor and streaming-group names: built and parsed here only.

Tensors (every source maps onto these; shapes in :meth:`edgespool.runtime.bundle.config.ModelConfig.tensor_shapes`)::

    embed                                  [V, H]  token embeddings
    layers.{i}.attn_norm / wq / wk / wv / wo / bq / bk / bv / q_norm / k_norm / post_attn_norm
    layers.{i}.ffn_norm / ffn.gate / ffn.up / ffn.down / post_ffn_norm    dense FFN
    layers.{i}.ffn.bundles                 a dense FFN stored as neuron bundles (ffn_geometry)
    layers.{i}.router / shared.gate / shared.up / shared.down / shared_gate
    layers.{i}.experts.{e}.gate / up / down                      one MoE expert
    norm, lm_head                          final norm and output head

Streaming groups (the unit the runtime fetches; each contiguous in weights.bin)::

    embed | layers.{i} | layers.{i}.experts.{e} | layers.{i}.ffn_bundled | head
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import BundleError

EMBED = "embed"
HEAD = "head"
FINAL_NORM = "norm"
LM_HEAD = "lm_head"
_LAYERS = "layers"
_EXPERTS = "experts"
_FFN_BUNDLED = "ffn_bundled"


def layer_prefix(i: int) -> str:
    """``layers.{i}.``: the prefix of layer ``i``'s tensor names."""
    return f"{_LAYERS}.{i}."


def layer_group(i: int) -> str:
    """The streaming group of layer ``i``'s dense part (attention, norms, router, shared expert, dense FFN)."""
    return f"{_LAYERS}.{i}"


def expert_group(i: int, e: int) -> str:
    """The streaming group of expert ``e`` of layer ``i`` (also the prefix of its tensor names, plus ``.``)."""
    return f"{_LAYERS}.{i}.{_EXPERTS}.{e}"


def expert_prefix(i: int, e: int) -> str:
    """``layers.{i}.experts.{e}.``: the prefix of an expert's tensor names."""
    return expert_group(i, e) + "."


def experts_prefix(i: int) -> str:
    """``layers.{i}.experts.``: the prefix every expert tensor of layer ``i`` starts with."""
    return f"{_LAYERS}.{i}.{_EXPERTS}."


def ffn_group(i: int) -> str:
    """The streaming group of layer ``i``'s bundled FFN."""
    return f"{_LAYERS}.{i}.{_FFN_BUNDLED}"


def ffn_tensor(i: int) -> str:
    """The tensor name of layer ``i``'s bundled FFN."""
    return f"{_LAYERS}.{i}.ffn.bundles"


@dataclass(frozen=True)
class GroupName:
    """A parsed group name: ``kind`` is ``embed``, ``head``, ``layer``, ``expert`` or ``ffn_bundled``."""

    kind: str
    layer: int | None = None
    expert: int | None = None

    @property
    def is_layer(self) -> bool:
        """The dense part of a layer (``layers.{i}``)."""
        return self.kind == "layer"


def parse_group(name: str) -> GroupName:
    """Parse a streaming-group name (BundleError naming it when it is not one)."""
    if name in (EMBED, HEAD):
        return GroupName(name)
    parts = name.split(".")
    try:
        if parts[0] == _LAYERS:
            i = int(parts[1])
            if len(parts) == 2:
                return GroupName("layer", i)
            if len(parts) == 3 and parts[2] == _FFN_BUNDLED:
                return GroupName("ffn_bundled", i)
            if len(parts) == 4 and parts[2] == _EXPERTS:
                return GroupName("expert", i, int(parts[3]))
    except (IndexError, ValueError):
        pass
    raise BundleError(f"{name!r} is not a streaming group name (embed, head, layers.N, layers.N.experts.E, "
                      "layers.N.ffn_bundled)")


@dataclass(frozen=True)
class TensorName:
    """A parsed canonical tensor name: ``layer`` / ``expert`` indices (None outside layers / experts) and the
    ``leaf`` after the layer/expert prefix (``wq``, ``ffn.gate``, ``gate`` of an expert, ``embed``, ``lm_head``)."""

    layer: int | None
    expert: int | None
    leaf: str

    @property
    def pattern(self) -> str:
        """The name with its indices as ``{i}`` / ``{e}`` (``layers.{i}.experts.{e}.gate``): the key of weight-name
        mapping tables."""
        if self.layer is None:
            return self.leaf
        if self.expert is None:
            return f"{_LAYERS}.{{i}}.{self.leaf}"
        return f"{_LAYERS}.{{i}}.{_EXPERTS}.{{e}}.{self.leaf}"


def parse_tensor(name: str) -> TensorName:
    """Split a canonical tensor name into layer, expert and leaf (see :class:`TensorName`)."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == _LAYERS and parts[1].isdigit():
        i = int(parts[1])
        if len(parts) >= 5 and parts[2] == _EXPERTS and parts[3].isdigit():
            return TensorName(i, int(parts[3]), ".".join(parts[4:]))
        return TensorName(i, None, ".".join(parts[2:]))
    return TensorName(None, None, name)


def layer_of(name: str) -> int | None:
    """The layer index of a tensor or group name (None for embed / norm / lm_head / head)."""
    parts = name.split(".")
    if len(parts) > 1 and parts[0] == _LAYERS and parts[1].isdigit():
        return int(parts[1])
    return None


def is_layer_name(name: str) -> bool:
    """Whether ``name`` (tensor or group) belongs to a layer."""
    return layer_of(name) is not None


def group_of(name: str) -> str:
    """The streaming group a canonical tensor belongs to: ``embed``, ``layers.{i}``, ``layers.{i}.experts.{e}``,
    or ``head`` (final norm + lm_head). (A bundled FFN tensor's group is :func:`ffn_group`; the writer decides.)"""
    if name == EMBED:
        return EMBED
    if name in (FINAL_NORM, LM_HEAD):
        return HEAD
    parts = name.split(".")
    if parts[0] == _LAYERS and len(parts) > 2 and parts[1].isdigit():
        if len(parts) > 3 and parts[2] == _EXPERTS:
            return expert_group(int(parts[1]), int(parts[3]))
        return layer_group(int(parts[1]))
    raise BundleError(f"tensor {name!r} has no streaming group")


def tensor_class(name: str) -> str:
    """Coarse class of a tensor for reports and quantisation policy: embed, attn, ffn, expert, shared_expert,
    router, norm, bias, lm_head."""
    last = name.rsplit(".", 1)[-1]
    if name == EMBED:
        return "embed"
    if name == LM_HEAD:
        return "lm_head"
    if last.endswith("norm"):
        return "norm"
    if last in ("bq", "bk", "bv"):
        return "bias"
    if last in ("router", "shared_gate"):
        return "router"
    if f".{_EXPERTS}." in name:
        return "expert"
    if ".shared." in name:
        return "shared_expert"
    if ".ffn." in name:
        return "ffn"
    return "attn"


def is_expert_group(name: str) -> bool:
    """Whether group ``name`` is one MoE expert (``layers.{i}.experts.{e}``)."""
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == _LAYERS and parts[2] == _EXPERTS
