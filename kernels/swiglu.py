"""SwiGLU feed-forward block (Llama/Mistral/Qwen2 MLP, each MoE expert, the Qwen2-MoE shared expert), numpy
reference: ``down(silu(gate(x)) * up(x))`` with every product through :func:`edgespool.kernels.linear.linear`."""
from __future__ import annotations

import numpy as np

from .linear import linear
from .quant import QTensor


def silu(x: np.ndarray) -> np.ndarray:
    """``x * sigmoid(x)`` in float32, overflow-free (sigmoid via tanh)."""
    t = np.float32(0.5) * x  # same operations as x * (0.5 * (1 + tanh(0.5 x))), without four temporaries
    np.tanh(t, out=t)
    t += np.float32(1.0)
    t *= np.float32(0.5)
    t *= x
    return t


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic sigmoid, overflow-free."""
    return np.float32(0.5) * (np.float32(1.0) + np.tanh(np.float32(0.5) * x))


def swiglu(x: np.ndarray, gate: QTensor, up: QTensor, down: QTensor) -> np.ndarray:
    """SwiGLU FFN of ``x`` ``[T, H]`` with weights gate/up ``[I, H]`` and down ``[H, I]`` -> ``[T, H]``."""
    h = silu(linear(x, gate))
    h *= linear(x, up)
    return linear(h, down)
