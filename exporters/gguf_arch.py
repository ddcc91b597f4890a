"""What differs per architecture in the GGUF files llama.cpp's converter writes (used by exporters/gguf_source.py):
the architecture table, which q/k rows were permuted, Granite's scale keys, the top-k renormalisation llama.cpp
applies, Phi-3's fused tensors, Gemma's settings as llama.cpp derives them, and the Llama 3 RoPE parameters behind
a ``rope_freqs`` tensor."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError

# GGUF general.architecture -> canonical arch (llama becomes mixtral when it has experts)
GGUF_ARCHS: dict[str, str] = {"llama": "llama", "qwen2": "qwen2", "qwen2moe": "qwen2_moe", "olmoe": "olmoe",
                              "qwen3": "qwen3", "qwen3moe": "qwen3_moe", "granite": "granite", "phi3": "phi3",
                              "gemma2": "gemma2", "gemma3": "gemma3", "smollm3": "smollm3"}
SUPPORTED_ARCHS = ", ".join(GGUF_ARCHS)
# Architectures whose q/k rows the converter permuted for llama.cpp's interleaved RoPE.
PERMUTED_QK_ARCHS = ("llama", "granite", "smollm3")
# Granite's multipliers: canonical field -> GGUF key under ``granite.`` (llama.cpp reads them for granite only; an
# absent or 0 value means the default)
GRANITE_SCALES: dict[str, str] = {"embedding_multiplier": "embedding_scale", "attention_scale": "attention.scale",
                                  "residual_multiplier": "residual_scale", "logits_scaling": "logit_scale"}
# Top-k routing weights renormalised to sum 1, per GGUF arch (llama.cpp's build graphs; HF Mixtral renormalises,
# Qwen2-MoE and OLMoE by default do not). ``{arch}.expert_weights_norm`` overrides when present.
NORM_TOPK: dict[str, bool] = {"llama": True, "qwen2moe": False, "olmoe": False, "qwen3moe": True}

# Architectures whose q/k/v are one ``attn_qkv`` and gate/up one ``ffn_up`` (2*I rows), split by exporters/fused.py
FUSED_ARCHS: dict[str, dict[str, str]] = {"phi3": {"wq": "attn_qkv.weight", "wk": "attn_qkv.weight",
                                                   "wv": "attn_qkv.weight", "ffn.gate": "ffn_up.weight",
                                                   "ffn.up": "ffn_up.weight"}}


def gemma_config(m: Any, L: int, H: int, nh: int, D: int) -> dict[str, Any]:
    """Gemma 2 / 3 ModelConfig fields of GGUFModel ``m`` as llama.cpp reads them (its norm weights already hold
    ``1 + w``): embeddings times ``sqrtf(H)``, attention scale ``1/sqrt(D)`` (``1/sqrt(H/nh)`` for the 27B models,
    llama.cpp's rule: the file has no query_pre_attn_scalar), soft-caps (Gemma 2 defaults 50 / 30), and the sliding
    layers: ``attention.sliding_window_pattern`` (per-layer flags or n), else every 2nd (Gemma 2) / 6th (Gemma 3)
    layer global; Gemma 3's local layers use ``rope.freq_base_swa`` (default 10000), unscaled. ``m``'s checked
    metadata readers (``_meta_int`` / ``_meta_float``) do the type checks."""
    a, p = m.gguf_arch, f"{m.gguf_arch}."
    big = L == (46 if a == "gemma2" else 62)
    out: dict[str, Any] = dict(hidden_act="gelu_tanh", post_norms=True, embedding_multiplier=float(
        np.sqrt(np.float32(H))), attention_scale=(H // nh if big else D) ** -0.5)
    if a == "gemma2":
        out["attn_logit_softcap"] = m._meta_float(p + "attn_logit_softcapping", 50.0)
        out["final_logit_softcap"] = m._meta_float(p + "final_logit_softcapping", 30.0)
        window, n = m._meta_int(p + "attention.sliding_window", 4096), 2
    else:
        out["final_logit_softcap"] = m._meta_float(p + "final_logit_softcapping", 0.0) or None
        window, n = m._meta_int(p + "attention.sliding_window", 0), 6
    pattern = m.meta(p + "attention.sliding_window_pattern", n)
    swa = ([bool(x) for x in pattern] if isinstance(pattern, list) else
           [int(pattern) == 0 or i % int(pattern) < int(pattern) - 1 for i in range(L)])
    if len(swa) != L:
        raise ModelFormatError(f"{m.path}: attention.sliding_window_pattern has {len(swa)} entries for {L} "
                               "layers")
    out["sliding_window"] = window if window and any(swa) else None
    if out["sliding_window"] and not all(swa):
        out["layer_types"] = tuple("sliding_attention" if x else "full_attention" for x in swa)
    if a == "gemma3" and out["sliding_window"]:
        out["rope_local_theta"] = m._meta_float(p + "rope.freq_base_swa", 10000.0)
    elif m.meta(p + "rope.freq_base_swa") is not None:
        out["rope_local_theta"] = m._meta_float(p + "rope.freq_base_swa")
    return out


def llama3_freq_factors(head_dim: int, theta: float, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_max_position_embeddings: float) -> np.ndarray:
    """The per-frequency RoPE divisors llama.cpp's converter writes as ``rope_freqs`` for HF ``llama3`` scaling."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    old, lo, hi = original_max_position_embeddings, low_freq_factor, high_freq_factor
    out = []
    for f in freqs.astype(np.float64):
        wl = 2 * math.pi / f
        if wl < old / hi:
            out.append(1.0)
        elif wl > old / lo:
            out.append(factor)
        else:
            smooth = (old / wl - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def llama3_from_freq_factors(path: Path, factors: np.ndarray, head_dim: int, theta: float) -> dict[str, Any]:
    """Recover HF ``llama3`` rope parameters from the ``rope_freqs`` tensor the converter computed from them.

    The converter writes, per frequency, 1 (short wavelengths ``< old/hi``), ``factor`` (long ``> old/lo``) or the
    blend ``1/((1-s)/factor + s)`` with ``s = (old/wavelen - lo)/(hi - lo)``. Only the two wavelength thresholds
    ``old/lo`` and ``old/hi`` matter (scaling old, lo, hi together changes nothing), so ``low_freq_factor`` is fixed
    to 1 and ``s`` is fitted linearly in ``1/wavelen`` on the blended entries. The result is accepted only if it
    reproduces every factor."""
    factors = np.asarray(factors, dtype=np.float64).ravel()
    if factors.shape != (head_dim // 2,):
        raise ModelFormatError(f"{path}: tensor 'rope_freqs.weight' has {factors.size} values, expected "
                               f"{head_dim // 2}")
    factor = float(np.float32(factors.max()))
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    inv_wl = freqs.astype(np.float64) / (2 * math.pi)
    unsupported = UnsupportedModelError(f"{path}: tensor 'rope_freqs.weight' (per-frequency RoPE factors) is not a "
                                        "llama3 rope scaling; such files are not supported")
    if factor <= 1.0:
        raise unsupported
    ones = np.isclose(factors, 1.0, rtol=1e-6)
    full = np.isclose(factors, factor, rtol=1e-6)
    mid = ~ones & ~full
    s = (1 / factors[mid] - 1 / factor) / (1 - 1 / factor)
    if mid.sum() >= 2:  # s = a * inv_wl - b, a = old/(hi-lo), b = lo/(hi-lo)
        a, nb = np.polyfit(inv_wl[mid], s, 1)
        b = -nb
    elif mid.sum() == 1:  # assume Llama 3's high/low ratio of 4
        b = 1 / 3
        a = (s[0] + b) / inv_wl[mid][0]
    else:  # thresholds anywhere between the last 1 and the first `factor`: put both there
        if not ones.any() or not full.any():
            raise unsupported
        edge = math.sqrt(inv_wl[ones].min() * inv_wl[full].max())  # geometric middle of the gap, in 1/wavelen
        b = 1000.0
        a = (1 + b) / edge  # s reaches 1 (the short-wavelength end) at the edge
    if not (a > 0 and b > 0):
        raise unsupported
    lo = 1.0
    hi = 1.0 + 1.0 / b
    old = a / b
    tidy_hi, tidy_old = round(hi, 3), float(round(old))  # the round values checkpoints use, if they fit as well
    if tidy_old > 0 and np.allclose(llama3_freq_factors(head_dim, theta, factor, lo, tidy_hi, tidy_old), factors,
                                    rtol=1e-5, atol=0):
        hi, old = tidy_hi, tidy_old
    got = llama3_freq_factors(head_dim, theta, factor, lo, hi, old)
    if not np.allclose(got, factors, rtol=1e-4, atol=0):
        raise unsupported
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": lo, "high_freq_factor": float(hi),
            "original_max_position_embeddings": int(old) if float(old).is_integer() else float(old)}
