"""edgespool.kernels: one op per module, each a numpy reference; faster versions plug in through
:data:`edgespool.kernels.linear.KERNELS`.

Modules: ``quant`` (formats, dequantise), ``linear`` (the one matmul entry point), ``rmsnorm``, ``rope``,
``attention``, ``swiglu``, ``moe``. The functions named like their module (``linear.linear``,
``attention.attention``, ``rmsnorm.rmsnorm``, ``swiglu.swiglu``) are imported from the module, so that
``edgespool.kernels.linear`` stays the module (and ``KERNELS`` can be patched on it).
"""
from .attention import attention_mask
from .linear import KERNELS
from .moe import combine_experts, expert_assignments, route, shared_expert, softmax, sparse_moe
from .quant import QTensor, dequantize, quantize
from .rope import Rope, apply_rope, rope_cos_sin, rope_inv_freq
from .swiglu import sigmoid, silu

__all__ = [
    "attention_mask", "KERNELS", "combine_experts", "expert_assignments", "route", "shared_expert", "softmax",
    "sparse_moe", "QTensor", "dequantize", "quantize", "Rope", "apply_rope", "rope_cos_sin", "rope_inv_freq",
    "sigmoid", "silu",
]
