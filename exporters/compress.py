"""Compression policy: which scheme each tensor gets, and the reconstruction-error report.

Policy (EdgeMoE-style per-tensor-class bit widths): norms and biases stay f32; MoE routers and the Qwen2-MoE
shared-expert gate stay f32 (tiny, and routing is precision-sensitive); expert FFN weights take ``expert_bits``,
every other matrix (attention, dense FFN, shared expert, embeddings, lm_head) takes ``dense_bits``; both default to
the ``--quant`` scheme; ``head_bits`` overrides the output head alone (e.g. a speculative draft model's head, read
every draft pass: its bytes matter more than its last bit of agreement). An int4 matrix whose input width is not a multiple of the group size falls back to int8
(recorded in the report).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import OptionError
from ..kernels.quant import QTensor, dequantize, quantize
from ..runtime.bundle.names import tensor_class

BITS_TO_SCHEME = {32: "f32", 16: "f16", 8: "int8", 4: "int4"}
KEEP = "keep"  # store each tensor as the source stores it (a GGUF's block types, bytes identical)
QUANT_CHOICES = (KEEP, "f32", "f16", "int8", "int4")  # --quant
ALWAYS_F32 = ("norm", "bias", "router")


def scheme_from_bits(bits: int | None, option: str) -> str | None:
    """Map ``--expert-bits 4`` style values to a scheme name; None stays None."""
    if bits is None:
        return None
    try:
        return BITS_TO_SCHEME[int(bits)]
    except (KeyError, ValueError):
        raise OptionError(f"{option} must be one of 32, 16, 8, 4 (got {bits!r})") from None


@dataclass(frozen=True)
class QuantPolicy:
    """How to compress a model's tensors."""

    quant: str = "f32"  # default scheme for matrices: keep (a GGUF's own blocks), f32, f16, int8, int4
    group_size: int = 32  # int4 group size along the input dimension
    expert_bits: int | None = None  # override for MoE expert matrices
    dense_bits: int | None = None  # override for every other matrix
    head_bits: int | None = None  # override for the output head (lm_head) alone, before dense_bits

    def __post_init__(self) -> None:
        if self.quant not in QUANT_CHOICES:
            raise OptionError(f"--quant must be one of {', '.join(QUANT_CHOICES)} (got {self.quant!r})")
        if self.group_size < 2 or self.group_size % 2:
            raise OptionError(f"--group-size must be an even number >= 2 (got {self.group_size})")
        scheme_from_bits(self.expert_bits, "--expert-bits")
        scheme_from_bits(self.dense_bits, "--dense-bits")
        scheme_from_bits(self.head_bits, "--head-bits")

    def intended_scheme(self, name: str, shape: tuple[int, ...]) -> str:
        """The scheme the policy asks for, before the int4 -> int8 fallback for indivisible widths."""
        cls = tensor_class(name)
        if cls in ALWAYS_F32 or len(shape) != 2:
            return "f32"
        if cls == "expert":
            return scheme_from_bits(self.expert_bits, "--expert-bits") or self.quant
        if cls == "lm_head" and self.head_bits is not None:
            return scheme_from_bits(self.head_bits, "--head-bits") or self.quant
        return scheme_from_bits(self.dense_bits, "--dense-bits") or self.quant

    def keeps(self, name: str, shape: tuple[int, ...]) -> bool:
        """Whether tensor ``name`` is stored as the source stores it (``--quant keep`` and no override)."""
        return self.intended_scheme(name, shape) == KEEP

    def scheme_for(self, name: str, shape: tuple[int, ...]) -> str:
        """The scheme tensor ``name`` of ``shape`` is stored in."""
        s = self.intended_scheme(name, shape)
        if s == "int4" and shape[1] % self.group_size:
            return "int8"
        return s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClassStats:
    """Accumulated size and error figures for one tensor class."""

    tensors: int = 0
    params: int = 0
    bytes_before: int = 0  # as stored in the source (its dtype)
    bytes_after: int = 0  # as stored in the bundle
    sq_err: float = 0.0
    sq_ref: float = 0.0
    max_abs_err: float = 0.0
    schemes: dict[str, int] = field(default_factory=dict)

    @property
    def rel_rmse(self) -> float:
        return float(np.sqrt(self.sq_err / self.sq_ref)) if self.sq_ref > 0 else 0.0


class CompressionReport:
    """Per-tensor-class size before/after and reconstruction error (relative RMSE, max abs error)."""

    def __init__(self) -> None:
        self.classes: dict[str, ClassStats] = {}
        self.fallbacks: list[str] = []

    def add_kept(self, name: str, q: QTensor, source_bytes: int) -> None:
        """A tensor stored as the source stores it: same bytes, no reconstruction error by construction."""
        st = self.classes.setdefault(tensor_class(name), ClassStats())
        st.tensors += 1
        st.params += int(np.prod(q.shape))
        st.bytes_before += int(source_bytes)
        st.bytes_after += q.nbytes
        st.schemes[q.scheme] = st.schemes.get(q.scheme, 0) + 1

    def add(self, name: str, w: np.ndarray, q: QTensor, source_bytes: int) -> None:
        st = self.classes.setdefault(tensor_class(name), ClassStats())
        st.tensors += 1
        st.params += int(w.size)
        st.bytes_before += int(source_bytes)
        st.bytes_after += q.nbytes
        st.schemes[q.scheme] = st.schemes.get(q.scheme, 0) + 1
        if q.scheme != "f32":
            err = dequantize(q) - w
            st.sq_err += float(np.dot(err.ravel().astype(np.float64), err.ravel().astype(np.float64)))
            st.max_abs_err = max(st.max_abs_err, float(np.abs(err).max(initial=0.0)))
        st.sq_ref += float(np.dot(w.ravel().astype(np.float64), w.ravel().astype(np.float64)))

    def to_dict(self) -> dict[str, Any]:
        tot_b = sum(s.bytes_before for s in self.classes.values())
        tot_a = sum(s.bytes_after for s in self.classes.values())
        return {
            "bytes_before": tot_b,
            "bytes_after": tot_a,
            "ratio": (tot_b / tot_a) if tot_a else 0.0,
            "int4_fallbacks_to_int8": self.fallbacks,
            "classes": {
                k: {"tensors": s.tensors, "params": s.params, "bytes_before": s.bytes_before,
                    "bytes_after": s.bytes_after, "schemes": s.schemes, "rel_rmse": s.rel_rmse,
                    "max_abs_err": s.max_abs_err}
                for k, s in sorted(self.classes.items())
            },
        }


def compress_tensor(name: str, w: np.ndarray, policy: QuantPolicy, report: CompressionReport,
                    source_bytes: int | None = None) -> QTensor:
    """Quantise one canonical float32 tensor by ``policy`` and record it in ``report``."""
    scheme = policy.scheme_for(name, tuple(w.shape))
    if scheme != policy.intended_scheme(name, tuple(w.shape)):
        report.fallbacks.append(name)
    q = quantize(w, scheme, policy.group_size)
    report.add(name, w, q, source_bytes if source_bytes is not None else w.nbytes)
    return q


