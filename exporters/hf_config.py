"""Mapping a Hugging Face ``config.json`` (transformers 4.x or 5.x spelling) onto the canonical
:class:`~edgespool.runtime.bundle.config.ModelConfig` (see :func:`config_from_hf`)."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..kernels.rope import ROPE_TYPES
from ..runtime.bundle.config import ARCHITECTURES, MAX_LAYERS, ModelConfig

# HF class name -> canonical architecture
HF_ARCHS: dict[str, str] = {hf: arch for arch, spec in ARCHITECTURES.items() for hf in spec["hf"]}
SUPPORTED = ", ".join(HF_ARCHS)

# Defaults transformers uses when config.json omits a key (from each architecture's configuration class).
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048},
    "mistral": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096 * 32},
    "qwen2": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 32768},
    "mixtral": {"rms_norm_eps": 1e-5, "rope_theta": 1e6, "max_position_embeddings": 4096 * 32},
    "qwen2_moe": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 32768},
    "olmoe": {"rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096},
    "qwen3": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 32768, "head_dim": 128},
    "qwen3_moe": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 32768},
    "granite": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048},
    "phi3": {"rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096},
    "gemma2": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 8192, "head_dim": 256,
               "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window_pattern": 2,
               "tie_word_embeddings": True},
    "gemma3": {"rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 131072, "head_dim": 256,
               "attn_logit_softcapping": None, "final_logit_softcapping": None, "sliding_window_pattern": 6,
               "tie_word_embeddings": True},
    "smollm3": {"rms_norm_eps": 1e-6, "rope_theta": 2e6, "max_position_embeddings": 32768,
                "tie_word_embeddings": True},
}
GEMMA = ("gemma2", "gemma3")
GEMMA_ACT = "gelu_pytorch_tanh"  # Gemma's GeGLU gate activation (canonical hidden_act "gelu_tanh")
# Architectures whose q/k get an RMSNorm before RoPE: over the whole projection (OLMoE) or per head (Qwen3).
QK_NORM = {"olmoe": "projection", "qwen3": "head", "qwen3_moe": "head", "gemma3": "head"}

# -- config.json -----------------------------------------------------------------------------------------------
_MISSING = object()


def _key(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = _MISSING,
         nullable: bool = False) -> Any:
    """``d[key]`` checked against ``kind`` (bools are not ints); ModelFormatError naming the key otherwise."""
    if key not in d or (d[key] is None and not nullable and default is not _MISSING):
        if default is _MISSING:
            raise ModelFormatError(f"{where}: required key {key!r} is missing")
        return default
    v = d[key]
    if v is None and nullable:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds)
    if float in kinds and isinstance(v, int) and not isinstance(v, bool):
        ok = True
    if not ok:
        names = "/".join(k.__name__ for k in kinds)
        raise ModelFormatError(f"{where}: key {key!r} should be {names}, found {v!r}")
    return v


def _positive(d: dict[str, Any], key: str, where: str, default: Any = _MISSING) -> int:
    v = _key(d, key, int, where, default)
    if v <= 0:
        raise ModelFormatError(f"{where}: key {key!r} must be a positive integer, found {v!r}")
    return v


def _token_ids(v: Any, key: str, where: str) -> tuple[int, ...]:
    if v is None:
        return ()
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,)
    if isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return tuple(v)
    raise ModelFormatError(f"{where}: key {key!r} should be an int or a list of ints, found {v!r}")


def _rope(d: dict[str, Any], arch: str, max_pos: int, where: str) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, canonical rope_scaling) from transformers-5 ``rope_parameters`` or 4.x ``rope_theta`` +
    ``rope_scaling``."""
    key = "rope_parameters" if d.get("rope_parameters") else "rope_scaling"
    params = d.get(key) or {}
    if not isinstance(params, dict):
        raise ModelFormatError(f"{where}: key {key!r} should be an object, found {params!r}")
    if params and all(isinstance(v, dict) for v in params.values()) and arch == "gemma3" and \
            "full_attention" in params:  # Gemma 3: the global layers' RoPE (the local one: _local_rope_theta)
        params = params["full_attention"]
    elif params and all(isinstance(v, dict) for v in params.values()):  # per-layer-type nesting
        distinct = {json.dumps(v, sort_keys=True) for v in params.values()}
        if len(distinct) != 1:
            raise UnsupportedModelError(f"{where}: different RoPE parameters per layer type ({key}) are not supported")
        params = next(iter(params.values()))
    params = dict(params)
    theta = params.pop("rope_theta", None)
    if theta is None:
        theta = _key(d, "rope_theta", float, where, ARCH_DEFAULTS[arch]["rope_theta"])
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or theta <= 0:
        raise ModelFormatError(f"{where}: key '{key}.rope_theta' should be a positive number, found {theta!r}")
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if kind in ("longrope", "su"):
        raise UnsupportedModelError(f"{where}: rope type {kind!r} (LongRoPE: per-frequency long/short factors chosen "
                                    "by context length, e.g. Phi-3's 128k-context models) is not supported; models "
                                    "without rope scaling (Phi-3 4k) are")
    if kind not in ROPE_TYPES:
        raise UnsupportedModelError(f"{where}: rope type {kind!r} is not supported; supported: "
                                    f"{', '.join(ROPE_TYPES)}")
    prf = params.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
    if prf not in (None, 1, 1.0):
        raise UnsupportedModelError(f"{where}: partial_rotary_factor={prf} is not supported (only full rotary)")
    params.pop("partial_rotary_factor", None)
    if kind == "default":
        return float(theta), None
    required = {"linear": ("factor",), "dynamic": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor"), "yarn": ()}[kind]
    for r in required:
        if not isinstance(params.get(r), (int, float)) or isinstance(params.get(r), bool):
            raise ModelFormatError(f"{where}: key '{key}.{r}' (a number) is required for rope type {kind!r}")
    if kind in ("llama3", "yarn"):
        params.setdefault("original_max_position_embeddings", d.get("original_max_position_embeddings", max_pos))
    return float(theta), {"rope_type": kind, **params}


def _local_rope_theta(d: dict[str, Any], where: str) -> float:
    """Gemma 3's RoPE base of the sliding-window layers (transformers 5 ``rope_parameters.sliding_attention``, 4.x
    ``rope_local_base_freq``); scaling there is unsupported (llama.cpp scales only the global layers too)."""
    params = d.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get("sliding_attention"), dict):
        local = params["sliding_attention"]
        kind = local.get("rope_type", local.get("type")) or "default"
        if kind != "default":
            raise UnsupportedModelError(f"{where}: rope type {kind!r} on the sliding-window layers "
                                        "(rope_parameters.sliding_attention) is not supported")
        theta = local.get("rope_theta", 10000.0)
    else:
        theta = _key(d, "rope_local_base_freq", float, where, 10000.0)
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or theta <= 0:
        raise ModelFormatError(f"{where}: the local RoPE base should be a positive number, found {theta!r}")
    return float(theta)


def _embed_scale(d: dict[str, Any], hidden: int, where: str) -> float:
    """Gemma's embedding scale ``sqrt(hidden)`` as transformers applies it: a float32 tensor cast to the model's
    dtype (config.json ``dtype`` / ``torch_dtype``: bf16 rounds sqrt(2560) = 50.596 to 50.5)."""
    v = np.float32(math.sqrt(hidden))
    dtype = d.get("dtype", d.get("torch_dtype")) or "float32"
    if dtype == "bfloat16":  # round to nearest even on the top 16 bits
        bits = int(v.view(np.uint32))
        v = np.uint32((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).view(np.float32)
    elif dtype == "float16":
        v = np.float32(np.float16(v))
    elif dtype != "float32":
        raise ModelFormatError(f"{where}: key 'dtype' should be float32, float16 or bfloat16, found {dtype!r}")
    return float(v)


def _sliding_window(d: dict[str, Any], arch: str, n_layers: int,
                    where: str) -> tuple[int | None, tuple[str, ...]]:
    """(window, layer_types): the sliding window and, when only some layers use it, every layer's type
    (``sliding_attention`` / ``full_attention``; ``()`` when all layers are alike)."""
    if arch in ("llama", "olmoe", "granite"):
        return None, ()
    window = _key(d, "sliding_window", int, where, None, nullable=True)
    if arch in ("mistral", "mixtral", "phi3"):
        return window or None, ()
    if arch in GEMMA:  # layer_types, else the pattern (every n-th layer global: Gemma 2 n = 2, Gemma 3 n = 6)
        window = _key(d, "sliding_window", int, where, 4096, nullable=True)
        n = _positive(d, "sliding_window_pattern", where,
                      d.get("_sliding_window_pattern") or ARCH_DEFAULTS[arch]["sliding_window_pattern"])
        types = d.get("layer_types") or ["sliding_attention" if (i + 1) % n else "full_attention"
                                         for i in range(n_layers)]
        return _layer_types(types, window, n_layers, where)
    # Qwen2 / Qwen2-MoE / Qwen3(-MoE) / SmolLM3: window only where use_sliding_window, per layer (layer_types or
    # the legacy rule; Qwen3-MoE has none: every layer)
    use = _key(d, "use_sliding_window", bool, where, False)
    types = d.get("layer_types")
    if types is None and arch == "smollm3":  # SmolLM3Config: the NoPE layers slide when use_sliding_window
        nope = _nope_layers(d, n_layers, where)
        types = ["sliding_attention" if i in nope else "full_attention" for i in range(n_layers)]
    if types is None:
        mwl = _key(d, "max_window_layers", int, where, 28)
        if not (use and window) or arch == "qwen3_moe":
            types = ["sliding_attention" if use and window else "full_attention"] * n_layers
        elif arch in ("qwen2", "qwen3"):
            types = ["sliding_attention" if i >= mwl else "full_attention" for i in range(n_layers)]
        else:
            types = ["sliding_attention" if (i + 1) % 2 and i < mwl else "full_attention" for i in range(n_layers)]
    return _layer_types(types, window if use else None, n_layers, where)


def _nope_layers(d: dict[str, Any], n_layers: int, where: str) -> tuple[int, ...]:
    """SmolLM3's layers without RoPE: ``no_rope_layers`` (per layer 1 = RoPE, 0 = NoPE), else every
    ``no_rope_layer_interval``-th layer (default 4)."""
    flags = d.get("no_rope_layers")
    if flags is None:
        n = _positive(d, "no_rope_layer_interval", where, 4)
        flags = [int((i + 1) % n != 0) for i in range(n_layers)]
    if not isinstance(flags, list) or len(flags) != n_layers or not set(flags) <= {0, 1}:
        raise ModelFormatError(f"{where}: key 'no_rope_layers' should be a list of {n_layers} 0/1 flags, found "
                               f"{flags!r}")
    return tuple(i for i, f in enumerate(flags) if not f)


def _layer_types(types: Any, window: int | None, n_layers: int, where: str) -> tuple[int | None, tuple[str, ...]]:
    if not isinstance(types, list) or len(types) != n_layers or not set(types) <= {"full_attention",
                                                                                  "sliding_attention"}:
        raise ModelFormatError(f"{where}: key 'layer_types' should be a list of {n_layers} 'full_attention' / "
                               f"'sliding_attention', found {types!r}")
    if set(types) == {"full_attention"} or not window:
        return None, ()
    if set(types) == {"sliding_attention"}:
        return window, ()
    return window, tuple(types)


def config_from_hf(d: dict[str, Any], where: str = "config.json",
                   generation: dict[str, Any] | None = None) -> ModelConfig:
    """Map a parsed HF ``config.json`` (and optional ``generation_config.json``) onto :class:`ModelConfig`.

    Raises :class:`UnsupportedModelError` for an architecture or feature outside what edgespool runs, and
    :class:`ModelFormatError` naming the key for a missing or mistyped value."""
    if not isinstance(d, dict):
        raise ModelFormatError(f"{where}: expected a JSON object, found {type(d).__name__}")
    archs = d.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise ModelFormatError(f"{where}: key 'architectures' should be a list of class names, found {archs!r}")
    hf_name = archs[0] if archs else None
    if hf_name in HF_ARCHS:
        arch = HF_ARCHS[hf_name]
    elif hf_name is None and d.get("model_type") in ARCHITECTURES:
        arch = d["model_type"]
    else:
        found = hf_name or f"model_type {d.get('model_type')!r}"
        raise UnsupportedModelError(f"{where}: architecture {found!r} is not supported; supported: {SUPPORTED}")
    defaults = ARCH_DEFAULTS[arch]

    H = _positive(d, "hidden_size", where)
    nh = _positive(d, "num_attention_heads", where)
    nkv = _positive(d, "num_key_value_heads", where, nh)
    if nh % nkv:
        raise ModelFormatError(f"{where}: num_attention_heads {nh} is not a multiple of num_key_value_heads {nkv}")
    head_dim = _key(d, "head_dim", int, where, None, nullable=True) or defaults.get("head_dim") or H // nh
    L = _positive(d, "num_hidden_layers", where)
    if L > MAX_LAYERS:  # before anything is sized by it
        raise ModelFormatError(f"{where}: num_hidden_layers {L} is beyond any real model (at most {MAX_LAYERS})")
    V = _positive(d, "vocab_size", where)
    inter = _positive(d, "intermediate_size", where)
    max_pos = _positive(d, "max_position_embeddings", where, defaults["max_position_embeddings"])
    eps = float(_key(d, "rms_norm_eps", float, where, defaults["rms_norm_eps"]))
    if arch in GEMMA:  # Gemma's MLP reads hidden_activation
        act = _key(d, "hidden_activation", str, where, GEMMA_ACT)
        if act != GEMMA_ACT:
            raise UnsupportedModelError(f"{where}: hidden_activation {act!r} is not supported for {hf_name or arch} "
                                        f"(supported: {GEMMA_ACT!r})")
        act = "gelu_tanh"
    else:
        act = _key(d, "hidden_act", str, where, "silu")
    if act not in ("silu", "relu", "gelu_tanh") or (act == "relu" and ARCHITECTURES[arch]["moe"]):
        raise UnsupportedModelError(f"{where}: hidden_act {act!r} is not supported for {hf_name or arch} (supported: "
                                    "'silu'; 'relu' for dense Llama/Mistral/Qwen2 FFNs, e.g. ReluLLaMA / ProSparse)")
    theta, scaling = _rope(d, arch, max_pos, where)

    attention_bias = False
    if arch == "qwen2":
        attention_bias = True
    elif arch == "qwen2_moe":
        attention_bias = _key(d, "qkv_bias", bool, where, True)
    elif arch in ("llama", "olmoe", "qwen3", "qwen3_moe", "granite", "smollm3", *GEMMA):
        if _key(d, "attention_bias", bool, where, False):
            raise UnsupportedModelError(f"{where}: attention_bias=true ({hf_name or arch} then also has an o_proj "
                                        "bias) is not supported")
    if arch in ("llama", "granite", "smollm3") and _key(d, "mlp_bias", bool, where, False):
        raise UnsupportedModelError(f"{where}: mlp_bias=true is not supported")

    kw: dict[str, Any] = {}
    if arch == "granite":  # config.json's multipliers (GraniteConfig defaults 1.0; attention_multiplier replaces
        # head_dim ** -0.5 even at its default)
        kw = {ours: float(_key(d, key, float, where, 1.0)) for ours, key in (
            ("embedding_multiplier", "embedding_multiplier"), ("attention_scale", "attention_multiplier"),
            ("residual_multiplier", "residual_multiplier"), ("logits_scaling", "logits_scaling"))}
    if arch in GEMMA:
        if _key(d, "use_bidirectional_attention", bool, where, False, nullable=True):
            raise UnsupportedModelError(f"{where}: use_bidirectional_attention=true (an encoder, e.g. EmbeddingGemma) "
                                        "is not supported")
        caps = {ours: float(v) if (v := _key(d, key, float, where, defaults[key], nullable=True)) is not None
                else None for ours, key in (("attn_logit_softcap", "attn_logit_softcapping"),
                                            ("final_logit_softcap", "final_logit_softcapping"))}
        kw = dict(attention_scale=float(_key(d, "query_pre_attn_scalar", float, where, 256)) ** -0.5,
                  embedding_multiplier=_embed_scale(d, H, where), post_norms=True, **caps)
        if arch == "gemma3":
            kw["rope_local_theta"] = _local_rope_theta(d, where)
    if arch == "smollm3":
        kw = dict(nope_layers=_nope_layers(d, L, where))
    if arch == "mixtral":
        kw = dict(num_experts=_positive(d, "num_local_experts", where),
                  num_experts_per_tok=_positive(d, "num_experts_per_tok", where),
                  moe_intermediate_size=inter, norm_topk_prob=True, moe_layers=tuple(range(L)))
    elif arch == "olmoe":
        kw = dict(num_experts=_positive(d, "num_experts", where),
                  num_experts_per_tok=_positive(d, "num_experts_per_tok", where),
                  moe_intermediate_size=inter, norm_topk_prob=_key(d, "norm_topk_prob", bool, where, False),
                  moe_layers=tuple(range(L)))
    elif arch in ("qwen2_moe", "qwen3_moe"):
        E = _key(d, "num_experts", int, where) if "num_experts" in d else _key(d, "num_local_experts", int, where)
        step = _positive(d, "decoder_sparse_step", where, 1)
        mlp_only = _key(d, "mlp_only_layers", list, where, [], nullable=True) or []
        layers = tuple(i for i in range(L) if i not in mlp_only and E > 0 and (i + 1) % step == 0)
        if E > 0 and layers:
            kw = dict(num_experts=E, num_experts_per_tok=_positive(d, "num_experts_per_tok", where),
                      moe_intermediate_size=_positive(d, "moe_intermediate_size", where),
                      norm_topk_prob=_key(d, "norm_topk_prob", bool, where, False), moe_layers=layers)
            if arch == "qwen2_moe":  # Qwen3-MoE has no shared expert
                kw["shared_expert_intermediate_size"] = _positive(d, "shared_expert_intermediate_size", where)
    if kw.get("num_experts_per_tok", 0) > kw.get("num_experts", 0):
        raise ModelFormatError(f"{where}: num_experts_per_tok {kw['num_experts_per_tok']} > number of experts "
                               f"{kw['num_experts']}")

    window, layer_types = _sliding_window(d, arch, L, where)
    gen = generation or {}
    bos = gen.get("bos_token_id", d.get("bos_token_id"))
    if bos is not None and (not isinstance(bos, int) or isinstance(bos, bool)):
        raise ModelFormatError(f"{where}: key 'bos_token_id' should be an int, found {bos!r}")
    eos = _token_ids(gen.get("eos_token_id", d.get("eos_token_id")), "eos_token_id", where)

    cfg = ModelConfig(
        arch=arch, vocab_size=V, hidden_size=H, intermediate_size=inter, num_layers=L, num_heads=nh,
        num_kv_heads=nkv, head_dim=head_dim, rms_norm_eps=eps, rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=max_pos,
        tie_word_embeddings=_key(d, "tie_word_embeddings", bool, where, defaults.get("tie_word_embeddings", False)),
        attention_bias=attention_bias, qk_norm=arch in QK_NORM, qk_norm_per_head=QK_NORM.get(arch) == "head",
        clip_qkv=(float(c) if (c := _key(d, "clip_qkv", float, where, None, nullable=True)) is not None
                  and arch == "olmoe" else None),
        sliding_window=window, layer_types=layer_types, bos_token_id=bos, eos_token_ids=eos, hidden_act=act, **kw,
    )
    bad = cfg.problem()
    if bad is not None:
        key = HF_KEYS.get(bad[0], bad[0])
        raise ModelFormatError(f"{where}: key {key!r}: {bad[1]}")
    return cfg


# ModelConfig field -> the config.json key it comes from (for error messages)
HF_KEYS = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads",
           "rope_theta": "rope_theta", "eos_token_ids": "eos_token_id", "num_experts": "num_experts",
           "max_position_embeddings": "max_position_embeddings"}
