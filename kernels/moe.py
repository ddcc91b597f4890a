"""Mixture-of-experts routing and combination, numpy reference, with each architecture's exact normalisation.

Routing (all three architectures): router logits ``x @ router.T`` -> softmax in float32 over all experts -> the
``top_k`` largest probabilities. Then:

* Mixtral always renormalises the top-k weights to sum to 1 (``norm_topk_prob=True`` in the canonical config);
* Qwen2-MoE and OLMoE renormalise only when ``norm_topk_prob`` is set in config.json (default False).

Each token's output is ``sum_k w_k * expert_k(x)``; Qwen2-MoE adds a shared SwiGLU expert scaled by
``sigmoid(x @ shared_gate.T)``. Experts are run one at a time over exactly the tokens routed to them, through a
callback, so the engine can fetch each expert's weights only when at least one token needs it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .quant import QTensor
from .swiglu import sigmoid, swiglu
from .table import REFERENCE, KernelTable


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable float32 softmax."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def route(router_logits: np.ndarray, top_k: int, norm_topk_prob: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-k routing of ``router_logits`` ``[T, E]``: returns (weights ``[T, k]`` float32, expert ids ``[T, k]``),
    ordered by decreasing probability like ``torch.topk``."""
    probs = softmax(router_logits, axis=-1)
    idx = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    w = np.take_along_axis(probs, idx, axis=-1)
    if norm_topk_prob:
        w = w / w.sum(axis=-1, keepdims=True)
    return w.astype(np.float32), idx


def expert_assignments(idx: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """For top-k ids ``[T, k]``: ``[(expert, token_rows, slot), ...]`` for every expert chosen by at least one
    token, in increasing expert order (the order HF's expert loop uses)."""
    out = []
    for e in np.unique(idx):
        rows, slots = np.nonzero(idx == e)
        out.append((int(e), rows, slots))
    return out


def combine_experts(x: np.ndarray, weights: np.ndarray, idx: np.ndarray,
                    run_expert: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """``sum_k weights[t, k] * expert_{idx[t, k]}(x[t])`` for every token. ``run_expert(e, xs)`` computes expert
    ``e`` on the rows ``xs`` ``[n, H]`` routed to it (it may fetch and release the expert's weights)."""
    out = np.zeros_like(x, dtype=np.float32)
    for e, rows, slots in expert_assignments(idx):
        y = run_expert(e, x[rows])
        out[rows] += y * weights[rows, slots][:, None]  # a token picks an expert at most once: rows are unique
    return out


def shared_expert(x: np.ndarray, gate: QTensor, up: QTensor, down: QTensor, shared_gate: QTensor, *,
                  kernels: KernelTable = REFERENCE) -> np.ndarray:
    """Qwen2-MoE shared expert: ``sigmoid(x @ shared_gate.T) * swiglu(x)`` for ``x`` ``[T, H]`` (products through
    ``kernels.linear``)."""
    return sigmoid(kernels.linear(x, shared_gate)) * swiglu(x, gate, up, down, kernels=kernels)


def sparse_moe(x: np.ndarray, router: QTensor, experts: dict[int, tuple[QTensor, QTensor, QTensor]], top_k: int,
               norm_topk_prob: bool, shared: tuple[QTensor, QTensor, QTensor, QTensor] | None = None, *,
               kernels: KernelTable = REFERENCE) -> np.ndarray:
    """The whole MoE block on ``x`` ``[T, H]`` with all experts given as ``{e: (gate, up, down)}`` (reference use;
    the engine uses :func:`route` + :func:`combine_experts` to fetch experts lazily). ``shared`` is
    ``(gate, up, down, shared_gate)`` for Qwen2-MoE."""
    w, idx = route(kernels.linear(x, router), top_k, norm_topk_prob)
    out = combine_experts(x, w, idx, lambda e, xs: swiglu(xs, *experts[e], kernels=kernels))
    if shared is not None:
        out += shared_expert(x, *shared, kernels=kernels)
    return out
