"""edgespool.kernels: one op per module, each a numpy reference; faster versions plug in per model through a
:class:`~edgespool.kernels.table.KernelTable` (``table``: which linear and attention kernels one model runs;
:data:`~edgespool.kernels.table.REFERENCE` is the numpy-only one). There is no process-global kernel registry.

Modules: ``quant`` (formats, dequantise), ``linear`` (the numpy linear kernels), ``table``, ``rmsnorm``, ``rope``,
``attention``, ``swiglu``, ``moe``. The functions named like their module (``linear.linear``,
``attention.attention``, ``rmsnorm.rmsnorm``, ``swiglu.swiglu``) are imported from the module, so that
``edgespool.kernels.linear`` stays the module.
"""
from .attention import attention_mask
from .moe import combine_experts, expert_assignments, route, shared_expert, softmax, sparse_moe
from .quant import QTensor, dequantize, quantize
from .rope import Rope, apply_rope, rope_cos_sin, rope_inv_freq
from .swiglu import sigmoid, silu
from .table import REFERENCE, KernelTable

__all__ = [
    "attention_mask", "KernelTable", "REFERENCE", "combine_experts", "expert_assignments", "route", "shared_expert",
    "softmax", "sparse_moe", "QTensor", "dequantize", "quantize", "Rope", "apply_rope", "rope_cos_sin",
    "rope_inv_freq", "sigmoid", "silu",
]
