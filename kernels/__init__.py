"""edgespool.kernels: one op per module, each a numpy reference (faster versions plug in through
:data:`edgespool.kernels.linear.KERNELS`)."""
from .attention import attention, attention_mask
from .linear import KERNELS, linear
from .moe import combine_experts, expert_assignments, route, shared_expert, softmax, sparse_moe
from .quant import QTensor, dequantize, quantize
from .rmsnorm import rmsnorm
from .rope import Rope, apply_rope, rope_cos_sin, rope_inv_freq
from .swiglu import sigmoid, silu, swiglu

__all__ = [
    "attention", "attention_mask", "KERNELS", "linear", "combine_experts", "expert_assignments", "route",
    "shared_expert", "softmax", "sparse_moe", "QTensor", "dequantize", "quantize", "rmsnorm", "Rope", "apply_rope",
    "rope_cos_sin", "rope_inv_freq", "sigmoid", "silu", "swiglu",
]
