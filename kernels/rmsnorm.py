"""RMSNorm, computed the way Hugging Face's ``LlamaRMSNorm`` (and its Mistral/Qwen2/Mixtral/OLMoE copies) does:
float32 mean of squares over the last axis, ``x * rsqrt(mean + eps)``, then multiplied by the weight."""
from __future__ import annotations

import numpy as np


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMS-normalise ``x`` (``[..., H]``) over its last axis and scale by ``weight`` (``[H]``); float32 out."""
    x = np.asarray(x, dtype=np.float32)
    var = np.mean(x * x, axis=-1, keepdims=True)
    return (x * (1.0 / np.sqrt(var + np.float32(eps)))) * np.asarray(weight, dtype=np.float32)
