"""Gated feed-forward block (Llama/Mistral/Qwen2 MLP, each MoE expert, the Qwen2-MoE shared expert), numpy
reference: ``down(act(gate(x)) * up(x))`` with every product through the given kernel table's ``linear``
(:class:`~edgespool.kernels.table.KernelTable`; default the numpy :data:`~edgespool.kernels.table.REFERENCE`).
``act`` is ``silu`` (SwiGLU, the default), ``relu`` (ReGLU: ReluLLaMA / ProSparse-style Llama checkpoints with
``hidden_act: "relu"``, whose FFN activations are exactly sparse) or ``gelu_tanh`` (GeGLU: Gemma)."""
from __future__ import annotations

import numpy as np

from .quant import QTensor
from .table import REFERENCE, KernelTable


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


def relu(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)`` as a new float32 array (a kernel's output buffer may be reused by its next call)."""
    return np.maximum(x, np.float32(0.0))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (transformers' ``gelu_pytorch_tanh``, Gemma's GeGLU):
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` in float32."""
    x = np.asarray(x, dtype=np.float32)
    t = x * x
    t *= np.float32(0.044715)
    t *= x
    t += x
    t *= np.float32(0.7978845608028654)  # sqrt(2 / pi)
    np.tanh(t, out=t)
    t += np.float32(1.0)
    t *= np.float32(0.5)
    t *= x
    return t


ACTIVATIONS = {"silu": silu, "relu": relu, "gelu_tanh": gelu_tanh}  # canonical hidden_act -> gate activation


def swiglu(x: np.ndarray, gate: QTensor, up: QTensor, down: QTensor, act: str = "silu", *,
           kernels: KernelTable = REFERENCE) -> np.ndarray:
    """Gated FFN of ``x`` ``[T, H]`` with weights gate/up ``[I, H]`` and down ``[H, I]`` -> ``[T, H]``:
    ``down(act(gate x) * up x)``; ``act`` ``silu`` (SwiGLU) or ``relu`` (ReGLU). Products through
    ``kernels.linear``."""
    try:
        fn = ACTIVATIONS[act]
    except KeyError:
        raise ValueError(f"unknown FFN activation {act!r}; known: {', '.join(ACTIVATIONS)}") from None
    many = getattr(kernels, "linear_many", None)  # one dispatch for both when the kernels can fuse them
    g, u = many(x, [gate, up]) if many is not None else (kernels.linear(x, gate), kernels.linear(x, up))
    fused = getattr(kernels.backend, "silu_mul", None) if act == "silu" else None  # threaded C (block kernels)
    h = fused(g, u, in_place=True) if fused is not None else None  # g is this call's own: overwrite it
    if h is None:
        h = fn(g)
        h *= u
    return kernels.linear(h, down)


def reglu(x: np.ndarray, gate: QTensor, up: QTensor, down: QTensor, *,
          kernels: KernelTable = REFERENCE) -> np.ndarray:
    """ReGLU FFN ``down(relu(gate x) * up x)`` (see :func:`swiglu`)."""
    return swiglu(x, gate, up, down, "relu", kernels=kernels)
