"""MoE layers on the GPU (issue 17 item 4; ktransformers / Fiddler style): a GPU-placed MoE layer computes its
attention, KV cache, router and shared expert on the GPU; each routed expert runs where the placement put it --
resident on the GPU (the hot ones, by the planner's time saved per byte) or on the CPU from host memory, so a
cold expert's weights never cross the link: only the hidden rows of the tokens routed to it go over and back.

Routing is computed on the host from the GPU's router logits with the CPU engine's own :func:`route` (same top-k
order and tie-breaking), and experts are summed in the same order as :func:`combine_experts`.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..kernels.moe import expert_assignments, route
from ..runtime.bundle.config import ModelConfig
from ..runtime.bundle.names import expert_group, expert_prefix, layer_prefix
from .gpu_ops import GpuOps, GpuTensor

CpuExpert = Callable[[int, int, np.ndarray], np.ndarray]  # (layer, expert, rows [n, H]) -> [n, H] on the CPU


def moe_ffn(ops: GpuOps, cfg: ModelConfig, i: int, w: dict[str, GpuTensor], h: Any,
            resident: dict[str, dict[str, GpuTensor]], cpu_expert: CpuExpert | None,
            to_host: Callable[[Any], np.ndarray], to_device: Callable[[np.ndarray], Any]) -> tuple[Any, int]:
    """The MoE block of layer ``i`` on the normalised hidden states ``h`` (device ``[T, H]``): returns the block's
    output (device ``[T, H]``) and how many routed experts ran on the CPU. ``w``: the layer group's GPU tensors
    (router, shared expert); ``resident``: GPU-resident groups by name (the experts placed on the GPU);
    ``cpu_expert`` computes an expert that is not (None: every routed expert must be resident)."""
    cp = ops.cp
    p = layer_prefix(i)
    weights, idx = route(to_host(ops.linear(h, w[p + "router"])), cfg.num_experts_per_tok, cfg.norm_topk_prob)
    out = cp.zeros(h.shape, cp.float32)
    h_host = None
    on_cpu = 0
    for e, rows, slots in expert_assignments(idx):
        ew = resident.get(expert_group(i, e))
        rd = cp.asarray(rows)
        if ew is not None:
            pe = expert_prefix(i, e)
            xs = h[rd]
            y = ops.linear(ops.act_mul(ops.linear(xs, ew[pe + "gate"]), ops.linear(xs, ew[pe + "up"]), "silu"),
                           ew[pe + "down"])
        else:
            if cpu_expert is None:
                raise RuntimeError(f"expert {e} of layer {i} is neither on the GPU nor computable on the CPU")
            if h_host is None:
                h_host = to_host(h)
            y = to_device(cpu_expert(i, e, h_host[rows]))
            on_cpu += 1
        out[rd] += y * cp.asarray(weights[rows, slots][:, None])
    if cfg.shared_expert_intermediate_size:  # Qwen2-MoE: sigmoid(x . shared_gate) * SwiGLU(x)
        a = ops.act_mul(ops.linear(h, w[p + "shared.gate"]), ops.linear(h, w[p + "shared.up"]), "silu")
        z = ops.linear(h, w[p + "shared_gate"])
        out += ops.linear(a, w[p + "shared.down"]) / (1 + cp.exp(-z))
    return out, on_cpu
