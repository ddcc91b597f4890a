"""The canonical decoder model config and the canonical tensor names shared by exporters and runtime.

Every source format (HF safetensors, GGUF) is mapped onto this one config and one naming scheme; the runtime only
ever sees these. Linear weights are stored PyTorch-style ``[out_features, in_features]`` (y = x @ W.T).

Canonical tensor names (shapes with H=hidden, D=head_dim, nh/nkv=heads, I=intermediate, E=experts, V=vocab)::

    embed                               [V, H]        token embeddings
    layers.{i}.attn_norm                [H]           RMSNorm weight before attention
    layers.{i}.wq / wk / wv             [nh*D | nkv*D, H]
    layers.{i}.bq / bk / bv             [nh*D | nkv*D]  (only when attention_bias)
    layers.{i}.q_norm / k_norm          [nh*D] / [nkv*D] (OLMoE: RMSNorm over the whole projection);
                                        [D] / [D] with qk_norm_per_head (Qwen3: RMSNorm over each head)
    layers.{i}.wo                       [H, nh*D]
    layers.{i}.post_attn_norm           [H]           RMSNorm weight of the attention output (only with post_norms)
    layers.{i}.ffn_norm                 [H]           RMSNorm weight before the FFN / MoE block
    layers.{i}.ffn.gate / ffn.up        [I, H]        dense SwiGLU FFN (non-MoE layers)
    layers.{i}.ffn.down                 [H, I]
    layers.{i}.post_ffn_norm            [H]           RMSNorm weight of the FFN output (only with post_norms)
    layers.{i}.router                   [E, H]        MoE router (gate) weight
    layers.{i}.experts.{e}.gate / up    [I_moe, H]
    layers.{i}.experts.{e}.down         [H, I_moe]
    layers.{i}.shared.gate / up / down  [I_sh, H] / [H, I_sh]  Qwen2-MoE shared expert
    layers.{i}.shared_gate              [1, H]        Qwen2-MoE sigmoid gate of the shared expert
    norm                                [H]           final RMSNorm
    lm_head                             [V, H]        absent when tie_word_embeddings

Norm weights are the multipliers the RMSNorm applies: checkpoints that store ``w`` for ``x * (1 + w)`` (Gemma) are
imported as ``1 + w`` (llama.cpp's converter does the same), so one RMSNorm serves every architecture.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ...errors import BundleError
from .names import expert_prefix, layer_prefix

# Sanity bounds of a config (far above any real model; they keep a corrupt header from sizing allocations)
MAX_LAYERS = 4096
MAX_DIM = 1 << 24  # hidden / intermediate / head sizes, vocabulary, heads, experts
MAX_POSITIONS = 1 << 31

_INT_FIELDS = {  # field -> smallest allowed value
    "vocab_size": 1, "hidden_size": 1, "intermediate_size": 0, "num_layers": 1, "num_heads": 1, "num_kv_heads": 1,
    "head_dim": 1, "max_position_embeddings": 1, "num_experts": 0, "num_experts_per_tok": 0,
    "moe_intermediate_size": 0, "shared_expert_intermediate_size": 0,
}
_FLOAT_FIELDS = ("rms_norm_eps", "rope_theta", "embedding_multiplier", "residual_multiplier", "logits_scaling")
_OPTIONAL_POSITIVE = ("attention_scale", "attn_logit_softcap", "final_logit_softcap", "rope_local_theta",
                      "clip_qkv")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Architecture registry: plain data (MLC-LLM habit). The value says what the architecture has.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": {"hf": ["LlamaForCausalLM"], "moe": False},
    "mistral": {"hf": ["MistralForCausalLM"], "moe": False},
    "qwen2": {"hf": ["Qwen2ForCausalLM"], "moe": False},
    "mixtral": {"hf": ["MixtralForCausalLM"], "moe": True},
    "qwen2_moe": {"hf": ["Qwen2MoeForCausalLM"], "moe": True},
    "olmoe": {"hf": ["OlmoeForCausalLM"], "moe": True},
    "qwen3": {"hf": ["Qwen3ForCausalLM"], "moe": False},
    "qwen3_moe": {"hf": ["Qwen3MoeForCausalLM"], "moe": True},
    "granite": {"hf": ["GraniteForCausalLM"], "moe": False},
    "phi3": {"hf": ["Phi3ForCausalLM"], "moe": False},
    "gemma2": {"hf": ["Gemma2ForCausalLM"], "moe": False},
    "gemma3": {"hf": ["Gemma3ForCausalLM"], "moe": False},
    "smollm3": {"hf": ["SmolLM3ForCausalLM"], "moe": False},
}


@dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer hyper-parameters, normalised across source formats."""

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # dense FFN width (non-MoE layers)
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF rope_scaling dict ("llama3", "linear", ...) or None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections have biases (Qwen2, Qwen2-MoE)
    qk_norm: bool = False  # RMSNorm on q and k before RoPE (OLMoE, Qwen3)
    qk_norm_per_head: bool = False  # that RMSNorm over each head's D values (Qwen3) instead of the whole projection
    clip_qkv: float | None = None  # OLMoE optional clamp of q/k/v
    sliding_window: int | None = None  # Mistral/Qwen2 sliding-window attention (None = full)
    # scales (Granite's multipliers)
    embedding_multiplier: float = 1.0  # token embeddings are multiplied by this
    attention_scale: float | None = None  # softmax scale of q.k (None: head_dim ** -0.5)
    residual_multiplier: float = 1.0  # attention and FFN outputs are multiplied by this before the residual add
    logits_scaling: float = 1.0  # logits are divided by this
    # Gemma 2 / 3
    post_norms: bool = False  # RMSNorm of the attention and FFN outputs before the residual adds
    attn_logit_softcap: float | None = None  # attention scores -> cap * tanh(scores / cap)
    final_logit_softcap: float | None = None  # logits -> cap * tanh(logits / cap)
    layer_types: tuple[str, ...] = ()  # per layer "sliding_attention" / "full_attention"; () = all sliding_window
    rope_local_theta: float | None = None  # RoPE base of the sliding-window layers, unscaled (None: the global RoPE)
    nope_layers: tuple[int, ...] = ()  # layers without RoPE (SmolLM3: every 4th)
    # MoE
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False  # renormalise the top-k routing weights to sum to 1 (Mixtral: True)
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE shared expert (0 = none)
    moe_layers: tuple[int, ...] = ()  # indices of MoE layers; others use the dense FFN
    # tokens
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    hidden_act: str = "silu"

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, i: int) -> bool:
        return self.num_experts > 0 and i in self.moe_layers

    def window_of(self, i: int) -> int | None:
        """The sliding window of layer ``i`` (None: full causal attention)."""
        if self.layer_types and self.layer_types[i] != "sliding_attention":
            return None
        return self.sliding_window

    def rope_of(self, i: int) -> tuple[float, dict[str, Any] | None] | None:
        """(theta, rope_scaling) of layer ``i``'s RoPE; None for a layer without positional encoding (NoPE)."""
        if i in self.nope_layers:
            return None
        if self.rope_local_theta is not None and self.window_of(i):
            return self.rope_local_theta, None
        return self.rope_theta, self.rope_scaling

    def problem(self) -> tuple[str, str] | None:
        """The first inconsistency of this config as ``(field, what is wrong)``, or None: types, ranges (finite
        positive epsilons and RoPE bases, sizes within :data:`MAX_DIM`, at most :data:`MAX_LAYERS` layers),
        head and expert arithmetic, layer index lists within the layer count, BOS/EOS ids within the vocabulary.
        Exporters and the bundle reader raise their own error class with it."""
        if not isinstance(self.arch, str) or self.arch not in ARCHITECTURES:
            return "arch", f"architecture {self.arch!r} is unknown (known: {', '.join(ARCHITECTURES)})"
        for name, lo in _INT_FIELDS.items():
            v = getattr(self, name)
            hi = MAX_LAYERS if name == "num_layers" else MAX_POSITIONS if name == "max_position_embeddings" \
                else MAX_DIM
            if not _is_int(v) or not lo <= v <= hi:
                return name, f"{name} is {v!r}, expected an integer in {lo}..{hi}"
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if not _is_num(v) or not math.isfinite(v) or v <= 0:
                return name, f"{name} is {v!r}, expected a finite number > 0"
        if self.rms_norm_eps >= 1:
            return "rms_norm_eps", f"rms_norm_eps is {self.rms_norm_eps!r}, expected a small positive number (< 1)"
        for name in _OPTIONAL_POSITIVE:
            v = getattr(self, name)
            if v is not None and (not _is_num(v) or not math.isfinite(v) or v <= 0):
                return name, f"{name} is {v!r}, expected null or a finite number > 0"
        if self.num_heads % self.num_kv_heads:
            return "num_kv_heads", (f"num_heads {self.num_heads} is not a multiple of num_kv_heads "
                                    f"{self.num_kv_heads}")
        if self.sliding_window is not None and (not _is_int(self.sliding_window) or self.sliding_window < 1):
            return "sliding_window", f"sliding_window is {self.sliding_window!r}, expected null or an integer >= 1"
        L = self.num_layers
        for name in ("moe_layers", "nope_layers"):
            v = getattr(self, name)
            if not all(_is_int(i) and 0 <= i < L for i in v) or len(set(v)) != len(v):
                return name, f"{name} {list(v)[:8]!r} should be distinct layer indices in 0..{L - 1}"
        if self.layer_types and len(self.layer_types) != L:
            return "layer_types", f"layer_types has {len(self.layer_types)} entries for {L} layers"
        if self.num_experts:
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                return "num_experts_per_tok", (f"num_experts_per_tok {self.num_experts_per_tok} is not in "
                                               f"1..num_experts {self.num_experts}")
            if not self.moe_layers or self.moe_intermediate_size < 1:
                return "moe_layers", "a MoE config needs moe_layers and moe_intermediate_size >= 1"
        elif self.moe_layers:
            return "moe_layers", "moe_layers given but num_experts is 0"
        if len(self.moe_layers) < L and self.intermediate_size < 1:
            return "intermediate_size", "dense layers need intermediate_size >= 1"
        V = self.vocab_size
        if self.bos_token_id is not None and (not _is_int(self.bos_token_id) or not 0 <= self.bos_token_id < V):
            return "bos_token_id", (f"bos_token_id {self.bos_token_id!r} is not a token id of the vocabulary "
                                    f"(0..{V - 1})")
        for e in self.eos_token_ids:
            if not _is_int(e) or not 0 <= e < V:
                return "eos_token_ids", f"eos token id {e!r} is not a token id of the vocabulary (0..{V - 1})"
        if not isinstance(self.hidden_act, str):
            return "hidden_act", f"hidden_act is {self.hidden_act!r}, expected a string"
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["moe_layers"] = list(self.moe_layers)
        d["eos_token_ids"] = list(self.eos_token_ids)
        d["layer_types"] = list(self.layer_types)
        d["nope_layers"] = list(self.nope_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise BundleError(f"{source}: unknown model config keys {sorted(unknown)}")
        kw = dict(d)
        kw["moe_layers"] = tuple(kw.get("moe_layers", ()))
        kw["eos_token_ids"] = tuple(kw.get("eos_token_ids", ()))
        kw["layer_types"] = tuple(kw.get("layer_types", ()))
        kw["nope_layers"] = tuple(kw.get("nope_layers", ()))
        try:
            cfg = cls(**kw)
        except TypeError as e:
            raise BundleError(f"{source}: bad model config ({e})") from None
        bad = cfg.problem()
        if bad is not None:
            raise BundleError(f"{source}: model config field {bad[0]!r}: {bad[1]}; re-export the bundle")
        return cfg

    # -- canonical tensor inventory -------------------------------------------------------------------------
    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every canonical tensor this config needs, with its shape, in streaming layout order."""
        H, D, V = self.hidden_size, self.head_dim, self.vocab_size
        q, kv = self.num_heads * D, self.num_kv_heads * D
        out: dict[str, tuple[int, ...]] = {"embed": (V, H)}
        for i in range(self.num_layers):
            p = layer_prefix(i)
            out[p + "attn_norm"] = (H,)
            out[p + "wq"], out[p + "wk"], out[p + "wv"] = (q, H), (kv, H), (kv, H)
            if self.attention_bias:
                out[p + "bq"], out[p + "bk"], out[p + "bv"] = (q,), (kv,), (kv,)
            if self.qk_norm:
                out[p + "q_norm"], out[p + "k_norm"] = ((D,), (D,)) if self.qk_norm_per_head else ((q,), (kv,))
            out[p + "wo"] = (H, q)
            if self.post_norms:
                out[p + "post_attn_norm"] = (H,)
            out[p + "ffn_norm"] = (H,)
            if self.is_moe_layer(i):
                out[p + "router"] = (self.num_experts, H)
                if self.shared_expert_intermediate_size:
                    S = self.shared_expert_intermediate_size
                    out[p + "shared.gate"], out[p + "shared.up"], out[p + "shared.down"] = (S, H), (S, H), (H, S)
                    out[p + "shared_gate"] = (1, H)
                M = self.moe_intermediate_size
                for e in range(self.num_experts):
                    pe = expert_prefix(i, e)
                    out[pe + "gate"], out[pe + "up"], out[pe + "down"] = (M, H), (M, H), (H, M)
            else:
                I = self.intermediate_size
                out[p + "ffn.gate"], out[p + "ffn.up"], out[p + "ffn.down"] = (I, H), (I, H), (H, I)
            if self.post_norms:
                out[p + "post_ffn_norm"] = (H,)
        out["norm"] = (H,)
        if not self.tie_word_embeddings:
            out["lm_head"] = (V, H)
        return out
