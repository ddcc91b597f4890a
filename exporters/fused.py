"""Fused projections split into canonical tensors at import (Phi-3).

Phi-3 stores q, k and v as one ``qkv_proj`` ``[nh*D + 2*nkv*D, H]`` (rows q, then k, then v) and the FFN's gate and
up as one ``gate_up_proj`` ``[2*I, H]`` (gate rows first: transformers ``chunk(2)``, llama.cpp's fused SwiGLU); in
GGUF these are ``attn_qkv`` and ``ffn_up`` (2*I rows). Importers expose each part as its canonical tensor
(``wq``/``wk``/``wv``, ``ffn.gate``/``ffn.up``), so the runtime never sees fused weights.
"""
from __future__ import annotations

from ..runtime.bundle.config import ModelConfig

# canonical leaf -> part of a fused tensor
FUSED_PARTS: dict[str, str] = {"wq": "q", "wk": "k", "wv": "v", "ffn.gate": "gate", "ffn.up": "up"}


def fused_rows(cfg: ModelConfig, part: str) -> tuple[int, int, int]:
    """(first row, end row, rows of the whole fused tensor) of ``part`` (q/k/v of qkv, gate/up of gate_up)."""
    q, kv, inter = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    qkv = q + 2 * kv
    return {"q": (0, q, qkv), "k": (q, q + kv, qkv), "v": (q + kv, qkv, qkv),
            "gate": (0, inter, 2 * inter), "up": (inter, 2 * inter, 2 * inter)}[part]
