"""GEMVs on Q8_0-rounded activations (llama.cpp's Q4_0/Q8_0 x Q8_0 numerics), one generator per weight scheme,
parametrised by the integer dot-product instruction of the target (:class:`DotISA`): x86 AVX-512 VNNI
``vpdpbusd`` (16 int32 lanes, 64 byte pairs per instruction, u8 x s8) or aarch64 ``sdot`` (4 lanes, 16 byte
pairs, s8 x s8). Each int32 lane sums 4 byte products, so both read the same activation layout.

Per call a small prep kernel (``<name>_prep``, compiled into the same library) rounds x to Q8_0 blocks of 32
(d = max|x|/127, codes round-half-even(x/d)) and lays the codes and block scales out per int32 lane; the GEMV
then multiplies codes with the stored weight bytes as they are (no repacking):

* ``int8``: prep ``x -> xq int8 [n], dxl f32 [n/4], c f32 [1]``. An unsigned-weight ISA (vpdpbusd) reads the
  weights as ``w ^ 0x80 = w + 128`` (u8), so every product carries ``128 * x`` extra: ``c`` = sum over blocks of
  128 * d * sum(codes), subtracted once per row. Per step: load, (xor), dot, convert, fma with the lanes' block
  scales, times the row scale at the end.
* ``int4`` (g = 32): prep ``x -> xlo, xhi int8 [n/2]`` (the first/second 16 codes of every block, matching the
  low/high nibbles of the stored bytes), ``off int32 [n/8]`` (8 x the sum of the 8 codes each int32 lane sees:
  the nibble bias), ``dxl f32 [n/8]``. Per step: two dots (nibbles 0..15 are valid u8 and s8 alike), minus
  ``off``, to f32, times block scale x the group's weight scale.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import TargetError
from .tvm_build import CpuSchedule, LinearSpec, _tvm, has_dotprod, has_vnni, largest_divisor, weight_bytes


@dataclass(frozen=True)
class DotISA:
    """An int8 dot-product instruction: ``lanes`` int32 accumulators, each += the dot of 4 byte pairs."""

    name: str
    intrin: str  # LLVM intrinsic: (int32 x lanes acc, int8 x bytes a, int8 x bytes b) -> int32 x lanes
    lanes: int
    unsigned_weights: bool  # the weight operand is read as u8 (vpdpbusd): int8 weights go in as w ^ 0x80
    available: Callable[[dict[str, Any]], bool]

    @property
    def bytes(self) -> int:
        """Byte pairs per instruction (= weight bytes per step)."""
        return 4 * self.lanes

    def dot(self, T, acc, a, b):
        """One instruction: ``acc + dot4(a, b)`` per int32 lane."""
        return T.call_llvm_pure_intrin(f"int32x{self.lanes}", self.intrin, acc, a, b)


VNNI = DotISA("avx512vnni", "llvm.x86.avx512.vpdpbusd.512", 16, True, has_vnni)
SDOT = DotISA("dotprod", "llvm.aarch64.neon.sdot.v4i32.v16i8", 4, False, has_dotprod)
ISAS = (VNNI, SDOT)


def isa_for(target: dict[str, Any]) -> DotISA | None:
    """The dot-product ISA of an llvm ``target`` dict (None without one)."""
    return next((isa for isa in ISAS if isa.available(target)), None)


def _row_macros(T, R: int, L: int):
    """TVMScript macros shared by the GEMVs: zero a block's ``R x L`` f32 accumulators; add row ``r``'s ``L``
    lanes to ``y[0, o]`` in lane order."""

    @T.macro
    def zero(acc):
        for r in T.unroll(R):
            acc[r, T.Ramp(0, 1, L)] = T.Broadcast(T.float32(0), L)

    @T.macro
    def lane_sum(y, acc, o, r):
        for lane in range(L):
            y[0, o] = y[0, o] + acc[r, lane]

    return zero, lane_sum


def int8_gemv(spec: LinearSpec, isa: DotISA, rows: int, parallel_min_bytes: int = 16 << 20):
    """int8 GEMV on the prep's ``xq``/``dxl``/``c`` (module docstring), ``rows`` output rows per step."""
    from tvm.script import tirx as T

    O, I = spec.out_features, spec.in_features
    R = largest_divisor(O, rows)
    L, B = isa.lanes, isa.bytes
    F32, S8, U8 = f"float32x{L}", f"int8x{B}", f"uint8x{B}"
    NS = I // B
    par = weight_bytes(spec) >= parallel_min_bytes
    zero, lane_sum = _row_macros(T, R, L)
    unsigned = isa.unsigned_weights

    def weights(v):  # the instruction's weight operand from the stored int8 bytes
        return T.reinterpret(S8, T.reinterpret(U8, v) ^ T.Broadcast(T.uint8(128), B)) if unsigned else v

    def row_start(c):  # unsigned weights: the 128 x sum(codes) bias comes off once per row
        return T.float32(0) - c[0] if unsigned else T.float32(0)

    @T.prim_func
    def gemv(xq: T.Buffer((I,), "int8", align=4), dxl: T.Buffer((I // 4,), "float32", align=4),
             c: T.Buffer((1,), "float32", align=4), w: T.Buffer((O, I), "int8", align=4),
             scale: T.Buffer((O,), "float32", align=4), y: T.Buffer((1, O), "float32", align=4)):
        T.func_attr({"tirx.noalias": True})
        for ob in T.parallel(O // R) if par else T.serial(O // R):
            acc = T.alloc_buffer((R, L), "float32", scope="local")
            zero(acc)
            for ks in range(NS):
                for r in T.unroll(R):
                    d = isa.dot(T, T.Broadcast(T.int32(0), L), weights(w[ob * R + r, T.Ramp(ks * B, 1, B)]),
                                xq[T.Ramp(ks * B, 1, B)])
                    acc[r, T.Ramp(0, 1, L)] = acc[r, T.Ramp(0, 1, L)] + T.Cast(F32, d) * dxl[T.Ramp(ks * L, 1, L)]
            for r in T.unroll(R):
                y[0, ob * R + r] = row_start(c)
                lane_sum(y, acc, ob * R + r, r)
                y[0, ob * R + r] = y[0, ob * R + r] * scale[ob * R + r]

    return gemv


def int4_gemv(spec: LinearSpec, isa: DotISA, rows: int, parallel_min_bytes: int = 16 << 20):
    """int4 (g = 32) GEMV on the prep's ``xlo``/``xhi``/``off``/``dxl`` (module docstring), ``rows`` output rows
    per step. One step covers ``isa.bytes`` weight bytes = ``isa.bytes / 16`` groups."""
    from tvm.script import tirx as T

    O, I = spec.out_features, spec.in_features
    R = largest_divisor(O, rows)
    L, B = isa.lanes, isa.bytes
    F32, S8 = f"float32x{L}", f"int8x{B}"
    GS = B // 16  # groups (of 16 weight bytes) per step
    FS = f"float32x{GS}" if GS > 1 else "float32"
    NS = I // (2 * B)
    par = weight_bytes(spec) >= parallel_min_bytes
    zero, lane_sum = _row_macros(T, R, L)

    def spread(s):
        """The step's group scales, each on its L / GS lanes. Several groups: one GS-lane f16 load + convert +
        permute (scalar loads + inserts per scale cost ~12 instructions per 64 weight bytes; TVM's Shuffle wants
        >= 16 input lanes: the same vector L / GS times, which LLVM folds); one group: a broadcast scalar."""
        if GS == 1:
            return T.Broadcast(s, L)
        return T.Shuffle([s] * (L // GS), [i // (L // GS) for i in range(L)])

    @T.prim_func
    def gemv(xlo: T.Buffer((I // 2,), "int8", align=4), xhi: T.Buffer((I // 2,), "int8", align=4),
             off: T.Buffer((I // 8,), "int32", align=4), dxl: T.Buffer((I // 8,), "float32", align=4),
             w: T.Buffer((O, I // 2), "uint8", align=4), scale: T.Buffer((O, I // 32), "float16", align=4),
             y: T.Buffer((1, O), "float32", align=4)):
        T.func_attr({"tirx.noalias": True})
        for ob in T.parallel(O // R) if par else T.serial(O // R):
            acc = T.alloc_buffer((R, L), "float32", scope="local")
            zero(acc)
            for ks in range(NS):
                for r in T.unroll(R):
                    wv = w[ob * R + r, T.Ramp(ks * B, 1, B)]
                    lo = T.reinterpret(S8, wv & T.Broadcast(T.uint8(15), B))
                    hi = T.reinterpret(S8, wv >> T.Broadcast(T.uint8(4), B))
                    d = isa.dot(T, T.Broadcast(T.int32(0), L), lo, xlo[T.Ramp(ks * B, 1, B)])
                    d2 = isa.dot(T, d, hi, xhi[T.Ramp(ks * B, 1, B)])
                    # the step's group scales: loaded once (several groups; one group: used in place)
                    s = T.Cast(FS, scale[ob * R + r, T.Ramp(ks * GS, 1, GS)]) if GS > 1 else T.meta_var(
                        T.Cast(FS, scale[ob * R + r, ks]))
                    acc[r, T.Ramp(0, 1, L)] = acc[r, T.Ramp(0, 1, L)] + T.Cast(
                        F32, d2 - off[T.Ramp(ks * L, 1, L)]) * (dxl[T.Ramp(ks * L, 1, L)] * spread(s))
            for r in T.unroll(R):
                y[0, ob * R + r] = T.float32(0)
                lane_sum(y, acc, ob * R + r, r)

    return gemv


def prep_int8(n: int):
    """``x f32 [n] -> xq int8 [n], dxl f32 [n/4], c f32 [1]`` for :func:`int8_gemv` (Q8_0 blocks of 32)."""
    from tvm.script import tirx as T

    G = n // 32

    @T.prim_func
    def prep(x: T.Buffer((n,), "float32", align=4), xq: T.Buffer((n,), "int8", align=4),
             dxl: T.Buffer((n // 4,), "float32", align=4), c: T.Buffer((1,), "float32", align=4)):
        T.func_attr({"tirx.noalias": True})
        c[0] = T.float32(0)
        for g in range(G):
            amax = T.alloc_buffer((1,), "float32", scope="local")
            qs = T.alloc_buffer((1,), "int32", scope="local")
            amax[0] = T.float32(0)
            for j in range(32):
                amax[0] = T.max(amax[0], T.fabs(x[g * 32 + j]))
            d = amax[0] / T.float32(127)
            qs[0] = 0
            for j in range(32):
                xq[g * 32 + j] = T.Cast("int8", T.if_then_else(d > T.float32(0), T.nearbyint(x[g * 32 + j] / d),
                                                                T.float32(0)))
                qs[0] = qs[0] + T.Cast("int32", xq[g * 32 + j])
            for lane in range(8):
                dxl[g * 8 + lane] = d
            c[0] = c[0] + T.Cast("float32", qs[0] * 128) * d

    return prep


def prep_int4(n: int):
    """``x f32 [n] -> xlo, xhi int8 [n/2], off int32 [n/8], dxl f32 [n/8]`` for :func:`int4_gemv`."""
    from tvm.script import tirx as T

    G = n // 32

    @T.prim_func
    def prep(x: T.Buffer((n,), "float32", align=4), xlo: T.Buffer((n // 2,), "int8", align=4),
             xhi: T.Buffer((n // 2,), "int8", align=4), off: T.Buffer((n // 8,), "int32", align=4),
             dxl: T.Buffer((n // 8,), "float32", align=4)):
        T.func_attr({"tirx.noalias": True})
        for g in range(G):
            amax = T.alloc_buffer((1,), "float32", scope="local")
            amax[0] = T.float32(0)
            for j in range(32):
                amax[0] = T.max(amax[0], T.fabs(x[g * 32 + j]))
            d = amax[0] / T.float32(127)
            for j in range(16):
                xlo[g * 16 + j] = T.Cast("int8", T.if_then_else(d > T.float32(0), T.nearbyint(x[g * 32 + j] / d),
                                                                 T.float32(0)))
                xhi[g * 16 + j] = T.Cast("int8", T.if_then_else(d > T.float32(0),
                                                                 T.nearbyint(x[g * 32 + 16 + j] / d), T.float32(0)))
            for lane in range(4):
                off[g * 4 + lane] = T.int32(0)
                for t in range(4):
                    off[g * 4 + lane] = off[g * 4 + lane] + T.Cast("int32", xlo[g * 16 + lane * 4 + t]) * 8 \
                        + T.Cast("int32", xhi[g * 16 + lane * 4 + t]) * 8
                dxl[g * 4 + lane] = d

    return prep


@dataclass(frozen=True)
class Q8Family:
    """The q8 kernels of one weight scheme: the GEMV generator, its activation prep, and the
    :class:`~.tvm_build.CpuSchedule` field giving its rows per step."""

    gemv: Callable
    prep: Callable
    rows: str


# scheme name -> its q8 family (the registry lists them as "<scheme>_q8" in the scheme's kernel_families)
FAMILIES = {"int8": Q8Family(int8_gemv, prep_int8, "q8_rows"),
            "int4": Q8Family(int4_gemv, prep_int4, "q8_rows_int4")}


def schedule(spec: LinearSpec, target: dict[str, Any], cpu: CpuSchedule):
    """IRModule of the q8 ``spec`` for ``target``: the GEMV ``spec.name`` and its prep ``spec.name + "_prep"``."""
    tvm = _tvm()
    isa = isa_for(target)
    if isa is None:
        raise TargetError(f"{spec.name} needs AVX-512 VNNI (x86) or dotprod (aarch64); target {target} has "
                          "neither")
    fam = FAMILIES[spec.scheme]
    pmin = cpu.parallel_min_bytes if cpu.parallel else 1 << 62
    f = fam.gemv(spec, isa, getattr(cpu, fam.rows), pmin).with_attr("global_symbol", spec.name)
    prep = fam.prep(spec.in_features).with_attr("global_symbol", spec.name + "_prep")
    return tvm.IRModule({spec.name: f, spec.name + "_prep": prep})
