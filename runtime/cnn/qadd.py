"""int8 residual add with onnxruntime ``com.microsoft.QLinearAdd``'s exact arithmetic (its x86-64 AVX2 kernel).

The CNN paths (numpy executor, onnxruntime lowering, generated C) all compute an int8 add this way, so the
onnxruntime path can run the add as one fused ``QLinearAdd`` node and stay bit-identical to the numpy reference.
MLAS (``qladd_avx2.cpp``, onnxruntime 1.32's Linux x86-64 wheel) computes, for uint8 codes ``a``, ``b`` (int8 + 128),
ratios ``m1 = s_a / s_c``, ``m2 = s_b / s_c`` (float32) and uint8 zero points ``za``, ``zb``, ``zc``::

    fixed = float32(zc - fma(m1, za, float32(m2 * zb)))       # gcc contracts m1*za + m2*zb into one fma
    v     = fma(a, m1, fma(b, m2, fixed))                      # two fused multiply-adds per element
    c     = saturate_u8(rint_half_even(v))

(checked numerically: every (a, b) in 256 x 256 for 400 random parameter sets, 0 mismatches; the unfused "fixed"
differs in ~1 element per set). edgespool passes ``A_scale = m1``, ``B_scale = m2``, ``C_scale = 1`` so onnxruntime's
ratios are our float32 multipliers exactly. Caveat: onnxruntime's ARM NEON kernel uses a fixed-point formula
instead (another rounding), so on ARM the ``QLinearAdd`` lowering is not guaranteed bit-exact with this reference.
"""
from __future__ import annotations

import numpy as np

U8 = 128  # int8 value + 128 = the uint8 code onnxruntime sees


def fma32(x: np.ndarray | float, y: np.ndarray | float, z: np.ndarray | float) -> np.ndarray:
    """float32 ``fma(x, y, z)`` rounded once (C ``fmaf``), vectorised: ``x * y`` is exact in float64; the float64
    sum's rounding error is recovered exactly (TwoSum) and used to break the ties where rounding twice (float64,
    then float32) would go the wrong way."""
    p = np.asarray(x, np.float32).astype(np.float64) * np.asarray(y, np.float32).astype(np.float64)
    zz = np.asarray(z, np.float32).astype(np.float64)
    s = p + zz
    bb = s - p
    e = (p - (s - bb)) + (zz - bb)  # p + zz == s + e exactly
    r = np.asarray(s.astype(np.float32))
    r64 = r.astype(np.float64)
    toward = np.where(s > r64, np.float32(np.inf), np.float32(-np.inf)).astype(np.float32)
    other = np.nextafter(r, toward).astype(np.float64)
    tie = (e != 0) & (r64 != s) & ((r64 + other) * 0.5 == s)  # s is a float32 midpoint but the exact sum is not
    if np.any(tie):
        s = np.where(tie, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)
        r = np.asarray(s.astype(np.float32))
    return r


def add_fixed(za: int, zb: int, zo: int, m1: np.float32, m2: np.float32) -> np.float32:
    """QLinearAdd's constant term for int8 zero points ``za``, ``zb``, ``zo`` (as uint8 codes: + 128)."""
    t = fma32(np.float32(m1), np.float32(za + U8), np.float32(m2) * np.float32(zb + U8))
    return np.float32(np.float32(zo + U8) - np.float32(t))


def qlinear_add(a: np.ndarray, b: np.ndarray, za: int, zb: int, zo: int, m1: np.float32, m2: np.float32,
                lo: int = -128, hi: int = 127) -> np.ndarray:
    """int8 ``a + b`` requantised as QLinearAdd does (module docstring), then clamped to ``[lo, hi]`` (a fused
    activation's int8 bounds)."""
    fx = add_fixed(za, zb, zo, m1, m2)
    af = a.astype(np.float32) + np.float32(U8)
    bf = b.astype(np.float32) + np.float32(U8)
    v = fma32(af, np.float32(m1), fma32(bf, np.float32(m2), fx))
    q = np.clip(np.rint(v), 0, 255) - U8
    return np.clip(q, lo, hi).astype(np.int8)
