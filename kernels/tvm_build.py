"""TVM definitions and schedules of the quantised linear kernels (y = x @ W.T), per target.

The kernels read the exact stored layout of :mod:`edgespool.kernels.quant` (no repacking at load time):

* ``int8``: ``w`` int8 ``[out, in]``, ``scale`` float32 ``[out]``.
* ``int4``: ``w`` uint8 ``[out, in // 2]`` (Q4_0 nibble order inside each group of ``g``: byte ``j`` holds value ``j``
  in its low nibble and value ``j + g/2`` in its high nibble), ``scale`` float16 ``[out, in // g]``.
* ``f16``: ``w`` float16 ``[out, in]`` (no scale).

Activations ``x`` are float32. Two batch forms per weight shape:

* ``gemv``: ``x [1, in] -> y [1, out]`` (decode).
* ``gemm``: ``x [mb, rt, in] -> y [mb, rt, out]`` with ``mb`` symbolic and ``rt`` (the row tile) fixed, so that the
  caller views ``M = mb * rt`` rows without a copy (it pads only when ``M`` is not a multiple of ``rt``). Every
  weight row is read once per call and reused for all ``M`` rows (prefill chunks of ~1..16 rows).

Every buffer is declared with 4-byte alignment so that numpy activations at any address can be passed zero-copy
(TVM's default assumes 64-byte alignment and emits aligned vector loads that fault otherwise).

Targets: ``kind: llvm`` (x86-64 AVX2/AVX-512 via ``mcpu``, aarch64 NEON/dotprod) gets a hand schedule: rows split
over threads, the reduction split into ``lanes`` vector accumulators (``rfactor``), a few output rows interleaved to
hide FMA latency; ``kind: cuda`` gets a warp-per-row schedule with a cross-thread (shuffle) reduction.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import OptionError, TargetError

LINEAR_SCHEMES = ("int8", "int4", "f16")
BATCH_FORMS = ("gemv", "gemm")
ACTIVATIONS = ("f32", "q8")
# x86 CPUs (LLVM mcpu) with AVX-512 VNNI (vpdpbusd), used by the q8-activation int4 kernel
_VNNI_MCPUS = ("znver4", "znver5", "sapphirerapids", "icelake-server", "icelake-client", "tigerlake", "cascadelake",
               "cooperlake", "graniterapids", "emeraldrapids")


def q8_supported(scheme: str, in_features: int, group_size: int = 0, batch: str = "gemv") -> bool:
    """Whether a q8-activation (AVX-512 VNNI) kernel exists for this weight."""
    if batch != "gemv":
        return False
    if scheme == "int4":
        return group_size == 32 and in_features % 128 == 0
    return scheme == "int8" and in_features % 64 == 0


@dataclass(frozen=True)
class LinearSpec:
    """One compiled linear kernel: scheme, weight shape ``[out, in]``, group size (int4) and batch form."""

    scheme: str
    out_features: int
    in_features: int
    group_size: int = 0  # int4 only
    batch: str = "gemv"  # "gemv" (x [1, in]) or "gemm" (x [mb, row_tile, in], mb symbolic)
    row_tile: int = 4  # gemm only: rows of x per tile
    act: str = "f32"  # "f32": exact float activations; "q8": x quantised per call to Q8_0 blocks (int4 g32 gemv)

    def __post_init__(self) -> None:
        if self.scheme not in LINEAR_SCHEMES:
            raise OptionError(f"kernel scheme {self.scheme!r} has no TVM kernel; valid: {', '.join(LINEAR_SCHEMES)}")
        if self.batch not in BATCH_FORMS:
            raise OptionError(f"kernel batch form {self.batch!r} is unknown; valid: {', '.join(BATCH_FORMS)}")
        if self.out_features <= 0 or self.in_features <= 0:
            raise OptionError(f"kernel shape [{self.out_features}, {self.in_features}] must be positive")
        if self.scheme == "int4":
            g = self.group_size
            if g <= 0 or g % 2 or self.in_features % g:
                raise OptionError(f"int4 group size {g} must be even and divide in_features {self.in_features}")
        elif self.group_size:
            raise OptionError(f"{self.scheme} kernels take no group size (got {self.group_size})")
        if self.batch == "gemm" and self.row_tile < 1:
            raise OptionError(f"gemm row tile must be >= 1, got {self.row_tile}")
        if self.act not in ACTIVATIONS:
            raise OptionError(f"kernel activations {self.act!r} unknown; valid: {', '.join(ACTIVATIONS)}")
        if self.act == "q8" and not q8_supported(self.scheme, self.in_features, self.group_size, self.batch):
            raise OptionError(f"q8 activations exist only for gemv of int4 g32 (in_features % 128 == 0) and int8 "
                              f"(in_features % 64 == 0), got {self.scheme} g{self.group_size} {self.batch} "
                              f"in={self.in_features}")

    @property
    def name(self) -> str:
        """Function name inside the compiled module, e.g. ``linear_int4g32_o4096_i4096_gemv``."""
        q = f"int4g{self.group_size}" if self.scheme == "int4" else self.scheme
        b = "gemv" if self.batch == "gemv" else f"gemm{self.row_tile}"
        a = "" if self.act == "f32" else f"_{self.act}"
        return f"linear_{q}_o{self.out_features}_i{self.in_features}_{b}{a}"

    def to_dict(self) -> dict[str, Any]:
        return {"op": "linear", "scheme": self.scheme, "out_features": self.out_features,
                "in_features": self.in_features, "group_size": self.group_size, "batch": self.batch,
                "row_tile": self.row_tile, "act": self.act}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> LinearSpec:
        return LinearSpec(d["scheme"], int(d["out_features"]), int(d["in_features"]), int(d.get("group_size", 0)),
                          d.get("batch", "gemv"), int(d.get("row_tile", 4)), d.get("act", "f32"))


@dataclass(frozen=True)
class CpuSchedule:
    """Knobs of the CPU schedule. ``lanes``: f32 accumulator lanes per row for int8/f16 (int4 uses 2 x 16: low and
    high nibbles); ``rows``: output rows interleaved per inner loop (gemv). Measured on znver4: 32 x 2 is best;
    128 or more accumulator lanes in total (lanes x rows, or x row_tile) fall off registers and run ~5x slower."""

    lanes: int = 32
    rows: int = 2
    vector: int = 0  # f32 lanes of one SIMD register; 0 = from the target (AVX-512 16, AVX2 8, NEON 4)
    # rows per step of the q8 kernels. Cold (a decode step streams every weight from DRAM once), znver4, all GEMVs
    # of a 20-layer hidden-1024 model in order on one thread: int8 2 rows 8.0-8.6 ms vs 4 rows 10.3; int4 1 row
    # 5.2-5.5 ms vs 2 rows 5.7-6.4, 4 rows 6.9 (4 rows win only when the weights sit in cache)
    q8_rows: int = 2
    q8_rows_int4: int = 1
    parallel: bool = True
    # below this many weight bytes, one thread: waking the pool costs 7-30 us here (1024x1024 int8: 24 us on one
    # thread vs 52 us on two), more than it saves. Measured on the shared 2-vCPU host, every GEMV of a 20-layer
    # hidden-1024 int8 model (2.9 MB FFN matrices) in order: 7.6-7.9 ms/token serial vs 9.5 ms split over 2 TVM
    # threads and 14 ms with the parallel build on a 1-thread pool (TVM pins the caller to a core that another
    # process may hold): only matrices of 16 MiB and more (4096x4096 int8) are split.
    parallel_min_bytes: int = 16 << 20


@dataclass(frozen=True)
class CudaSchedule:
    """Knobs of the CUDA schedule: ``threads`` per row (warp multiple), rows per block, elements per thread step."""

    threads: int = 64  # H100 (sm_90), 4096x4096 int8 GEMV: 64x4x4 1230 GB/s, 32x4x4 ~1190, 128x1x8 690
    rows_per_block: int = 4
    vec: int = 4


@dataclass(frozen=True)
class BuildOptions:
    cpu: CpuSchedule = field(default_factory=CpuSchedule)
    cuda: CudaSchedule = field(default_factory=CudaSchedule)


def _tvm():
    try:
        import tvm  # noqa: F401
        from tvm import te  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise TargetError("compiling kernels needs apache-tvm (pip install apache-tvm==0.27.0.post1)") from e
    return tvm


# ----------------------------------------------------------------------------------------------------------------
# compute definitions


def linear_te(spec: LinearSpec) -> list:
    """TE placeholders and output of ``spec``: ``[x, w, (scale,) y]`` in argument order."""
    tvm = _tvm()
    te = tvm.te
    O, I = spec.out_features, spec.in_features
    if spec.batch == "gemv":
        xshape: tuple = (1, I)
        yshape: tuple = (1, O)
    else:
        mb = tvm.tirx.Var("mb", "int32")
        xshape = (mb, spec.row_tile, I)
        yshape = (mb, spec.row_tile, O)
    nb = len(xshape) - 1  # batch dims before `in`
    x = te.placeholder(xshape, "float32", name="x")

    def xat(b, k):
        return x[(*b, k)]

    if spec.scheme in ("int8", "f16"):
        w = te.placeholder((O, I), spec.scheme if spec.scheme == "f16" else "int8", name="w")
        k = te.reduce_axis((0, I), name="k")
        acc = te.compute(yshape, lambda *i: te.sum(xat(i[:nb], k) * w[i[nb], k].astype("float32"), axis=k),
                         name="acc" if spec.scheme == "int8" else "y")
        if spec.scheme == "f16":
            return [x, w, acc]
        s = te.placeholder((O,), "float32", name="scale")
        y = te.compute(yshape, lambda *i: acc[i] * s[i[nb]], name="y")
        return [x, w, s, y]
    g = spec.group_size
    h2 = g // 2
    w = te.placeholder((O, I // 2), "uint8", name="w")
    s = te.placeholder((O, I // g), "float16", name="scale")
    kg = te.reduce_axis((0, I // g), name="kg")
    hh = te.reduce_axis((0, 2), name="h")
    j = te.reduce_axis((0, h2), name="j")

    def body(*i):
        o = i[nb]
        byte = w[o, kg * h2 + j]
        q = ((byte >> (hh * 4).astype("uint8")) & tvm.tirx.const(15, "uint8")).astype("int32") - 8
        return te.sum(xat(i[:nb], kg * g + hh * h2 + j) * (q.astype("float32") * s[o, kg].astype("float32")),
                      axis=[kg, hh, j])

    y = te.compute(yshape, body, name="y")
    return [x, w, s, y]


_BUF_RE = re.compile(r'(\w+): T\.Buffer\(((?:\([^)]*\))|\w+), ("\w+")\)')


def linear_primfunc(spec: LinearSpec):
    """The PrimFunc of ``spec`` with every argument buffer declared 4-byte aligned (any numpy address works)."""
    tvm = _tvm()
    args = linear_te(spec)
    f = tvm.te.create_prim_func(args)
    src = f.script()
    head, sep, rest = src.partition("):\n")  # the signature ends at the first "):\n"
    new_head, n = _BUF_RE.subn(r'\1: T.Buffer(\2, \3, align=4)', head)
    if n != len(args):  # pragma: no cover - guards a TVMScript printer change
        raise TargetError(f"could not relax the alignment of {spec.name}: {n} of {len(args)} buffers matched")
    return tvm.script.from_source(new_head + sep + rest)


# ----------------------------------------------------------------------------------------------------------------
# schedules


def weight_bytes(spec: LinearSpec) -> int:
    """Bytes of the stored weight (data + scales) ``spec`` reads per call."""
    o, i = spec.out_features, spec.in_features
    if spec.scheme == "int8":
        return o * i + 4 * o
    if spec.scheme == "int4":
        return o * i // 2 + 2 * o * (i // spec.group_size)
    return 2 * o * i


def vector_lanes(target: dict[str, Any]) -> int:
    """float32 lanes of one SIMD register of an llvm ``target`` dict (AVX-512: 16, AVX2: 8, NEON: 4)."""
    triple = str(target.get("mtriple", ""))
    mcpu = str(target.get("mcpu", ""))
    mattr = " ".join(target.get("mattr", []) or [])
    if triple.startswith("x86_64") or not triple:
        if "avx512" in mattr or mcpu in ("znver4", "znver5", "skylake-avx512", "icelake-server", "sapphirerapids",
                                         "cascadelake", "cooperlake", "tigerlake", "icelake-client"):
            return 16
        return 8
    return 4


def _cpu_schedule(func, spec: LinearSpec, opt: CpuSchedule, vec: int):
    """Rows of ``out`` split over threads; per row, ``lanes`` f32 accumulators (``rfactor`` of the reduction),
    unrolled in registers of ``vec`` lanes; several rows (gemv) or all rows of a tile (gemm) interleaved."""
    tvm = _tvm()
    sch = tvm.s_tir.Schedule(func)
    main = sch.get_sblock("acc" if spec.scheme == "int8" else "y")
    loops = sch.get_loops(main)
    nsp = len(loops) - (3 if spec.scheme == "int4" else 1)
    red = loops[nsp:]
    if spec.scheme == "int4":
        kg, hh, j = red
        h2 = spec.group_size // 2
        ji_n = min(16, h2)
        if spec.batch == "gemm":  # 2 x ji_n lanes per row x row_tile rows within registers (<= 64 lanes)
            ji_n = min(ji_n, max(4, 32 // spec.row_tile))
        while h2 % ji_n:
            ji_n //= 2
        jo, ji = sch.split(j, [None, ji_n])
        sch.reorder(kg, jo, hh, ji)
        lane = sch.fuse(hh, ji)  # 2 * ji_n accumulators: low and high nibbles accumulate independently
        vec = min(vec, ji_n)
        while ji_n % vec:
            vec //= 2
    else:
        (k,) = red
        lanes = opt.lanes
        if spec.batch == "gemm":  # keep lanes x row_tile accumulators within registers (<= 64 lanes)
            lanes = max(vec, min(lanes, 64 // spec.row_tile))
        while spec.in_features % lanes:
            lanes //= 2
        ko, lane = sch.split(k, [None, lanes])
        vec = min(vec, lanes)
    rf = sch.rfactor(lane, 0)
    # main block loops now: spatial..., lane; rf block vars: lane, spatial..., reductions...
    o = sch.get_loops(main)[nsp - 1]
    rows = 1
    if spec.batch == "gemv":
        rows = opt.rows
        while spec.out_features % rows:
            rows //= 2
    oo, _ = sch.split(o, [None, rows])
    if spec.batch == "gemm":
        # per o-block, walk all row tiles: the block's weights stay in L1 while every row of x uses them
        mb, rt = sch.get_loops(main)[:2]
        sch.reorder(oo, mb, rt)
        anchor = mb
    else:
        anchor = oo
    sch.compute_at(rf, anchor, preserve_unit_loops=True)
    sch.set_scope(rf, 0, "local")
    # rf loops: the two anchor loops, then one loop per rf block var: lane, spatial..., reductions (block order)
    own = sch.get_loops(rf)[2:]
    lane_loop, sp, red_loops = own[0], own[1:1 + nsp], own[1 + nsp:]
    lu, lv = sch.split(lane_loop, [None, vec])
    sch.reorder(*red_loops, *sp, lu, lv)
    for lp in (*sp, lu):
        sch.unroll(lp)
    sch.vectorize(lv)
    if spec.scheme == "int8":  # epilogue y = acc * scale next to its producer; acc stays in registers
        sch.reverse_compute_at(sch.get_sblock("y"), anchor)
        sch.set_scope(main, 0, "local")
    if opt.parallel and weight_bytes(spec) >= opt.parallel_min_bytes:
        sch.parallel(oo)
    sch.decompose_reduction(rf, red_loops[0])
    return sch.mod


def has_vnni(target: dict[str, Any]) -> bool:
    """True for an x86-64 llvm target whose CPU has AVX-512 VNNI (vpdpbusd)."""
    mattr = " ".join(target.get("mattr", []) or [])
    return (target.get("kind") == "llvm" and str(target.get("mtriple", "x86_64")).startswith("x86_64")
            and (str(target.get("mcpu", "")) in _VNNI_MCPUS or "+avx512vnni" in mattr))


def _int4_q8_gemv(spec: LinearSpec, rows: int, parallel_min_bytes: int = 16 << 20):
    """int4 (g=32) GEMV on Q8_0-quantised activations with AVX-512 VNNI, llama.cpp's Q4_0 x Q8_0 numerics.

    Per call the caller quantises x in blocks of 32 (d = max|x|/127, q = round(x/d)) and passes ``xlo``/``xhi``
    (the first/second 16 codes of every block, matching the low/high nibbles of the stored bytes), ``off`` (8 x
    the sum of the 8 codes each int32 lane sees: the nibble bias) and ``dxl`` (the block scale of each lane). Per
    64 weight bytes (4 groups): two ``vpdpbusd`` (nibbles as u8 x codes as s8), minus ``off``, to f32, times
    block scale x weight scale, accumulated in 16 lanes. The stored weights are read as they are.
    """
    from tvm.script import tirx as T

    O, I = spec.out_features, spec.in_features
    R = _largest_divisor(O, rows)
    NB = I // 128
    par = weight_bytes(spec) >= parallel_min_bytes

    @T.prim_func
    def gemv(xlo: T.Buffer((I // 2,), "int8", align=4), xhi: T.Buffer((I // 2,), "int8", align=4),
             off: T.Buffer((I // 8,), "int32", align=4), dxl: T.Buffer((I // 8,), "float32", align=4),
             w: T.Buffer((O, I // 2), "uint8", align=4), scale: T.Buffer((O, I // 32), "float16", align=4),
             y: T.Buffer((1, O), "float32", align=4)):
        T.func_attr({"tirx.noalias": True})
        for ob in T.parallel(O // R) if par else T.serial(O // R):
            acc = T.alloc_buffer((R, 16), "float32", scope="local")
            for r in T.unroll(R):
                acc[r, T.Ramp(0, 1, 16)] = T.Broadcast(T.float32(0), 16)
            for kb in range(NB):
                for r in T.unroll(R):
                    wv = w[ob * R + r, T.Ramp(kb * 64, 1, 64)]
                    lo = wv & T.Broadcast(T.uint8(15), 64)
                    hi = wv >> T.Broadcast(T.uint8(4), 64)
                    d = T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512",
                                                T.Broadcast(T.int32(0), 16), T.reinterpret("int8x64", lo),
                                                xlo[T.Ramp(kb * 64, 1, 64)])
                    d2 = T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512",
                                                 d, T.reinterpret("int8x64", hi), xhi[T.Ramp(kb * 64, 1, 64)])
                    # the 4 groups' f16 scales: one 8-byte load, one vcvtph2ps, one permute to 4 lanes each
                    # (scalar loads + inserts per scale cost ~12 instructions per 64 weight bytes)
                    # (TVM's Shuffle wants >= 16 input lanes: the same vector 4 times, which LLVM folds)
                    s4 = T.Cast("float32x4", scale[ob * R + r, T.Ramp(kb * 4, 1, 4)])
                    s16 = T.Shuffle([s4, s4, s4, s4], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
                    acc[r, T.Ramp(0, 1, 16)] = acc[r, T.Ramp(0, 1, 16)] + T.Cast(
                        "float32x16", d2 - off[T.Ramp(kb * 16, 1, 16)]) * (dxl[T.Ramp(kb * 16, 1, 16)] * s16)
            for r in T.unroll(R):
                y[0, ob * R + r] = T.float32(0)
                for lane in range(16):
                    y[0, ob * R + r] = y[0, ob * R + r] + acc[r, lane]

    return gemv


def has_dotprod(target: dict[str, Any]) -> bool:
    """True for an aarch64 llvm target with the dot-product extension (sdot; Cortex-A76 / Pi 5, A78)."""
    mattr = " ".join(target.get("mattr", []) or [])
    return (target.get("kind") == "llvm" and str(target.get("mtriple", "")).startswith("aarch64")
            and "+dotprod" in mattr)


_SDOT = "llvm.aarch64.neon.sdot.v4i32.v16i8"


def _int8_q8_gemv_sdot(spec: LinearSpec, rows: int, parallel_min_bytes: int = 16 << 20):
    """aarch64 dotprod twin of :func:`_int8_q8_gemv` (same prep, same arguments): per 16 weight bytes one
    ``sdot`` (s8 x s8, no bias to undo, so ``c`` is unused), convert, fma with the lanes' block scales."""
    from tvm.script import tirx as T

    O, I = spec.out_features, spec.in_features
    R = _largest_divisor(O, rows)
    NC = I // 16
    par = weight_bytes(spec) >= parallel_min_bytes

    @T.prim_func
    def gemv(xq: T.Buffer((I,), "int8", align=4), dxl: T.Buffer((I // 4,), "float32", align=4),
             c: T.Buffer((1,), "float32", align=4), w: T.Buffer((O, I), "int8", align=4),
             scale: T.Buffer((O,), "float32", align=4), y: T.Buffer((1, O), "float32", align=4)):
        T.func_attr({"tirx.noalias": True})
        for ob in T.parallel(O // R) if par else T.serial(O // R):
            acc = T.alloc_buffer((R, 4), "float32", scope="local")
            for r in T.unroll(R):
                acc[r, T.Ramp(0, 1, 4)] = T.Broadcast(T.float32(0), 4)
            for kc in range(NC):
                for r in T.unroll(R):
                    d = T.call_llvm_pure_intrin("int32x4", _SDOT, T.Broadcast(T.int32(0), 4),
                                                w[ob * R + r, T.Ramp(kc * 16, 1, 16)], xq[T.Ramp(kc * 16, 1, 16)])
                    acc[r, T.Ramp(0, 1, 4)] = acc[r, T.Ramp(0, 1, 4)] + T.Cast("float32x4", d) * dxl[
                        T.Ramp(kc * 4, 1, 4)]
            for r in T.unroll(R):
                y[0, ob * R + r] = T.float32(0)
                for lane in range(4):
                    y[0, ob * R + r] = y[0, ob * R + r] + acc[r, lane]
                y[0, ob * R + r] = y[0, ob * R + r] * scale[ob * R + r]

    return gemv


def _int4_q8_gemv_sdot(spec: LinearSpec, rows: int, parallel_min_bytes: int = 16 << 20):
    """aarch64 dotprod twin of :func:`_int4_q8_gemv` (same prep and arguments): per group (16 weight bytes) two
    ``sdot`` of the nibbles (0..15, valid s8) with the block's codes, minus the per-lane bias, convert, times
    block scale x the group's weight scale."""
    from tvm.script import tirx as T

    O, I = spec.out_features, spec.in_features
    R = _largest_divisor(O, rows)
    G = I // 32
    par = weight_bytes(spec) >= parallel_min_bytes

    @T.prim_func
    def gemv(xlo: T.Buffer((I // 2,), "int8", align=4), xhi: T.Buffer((I // 2,), "int8", align=4),
             off: T.Buffer((I // 8,), "int32", align=4), dxl: T.Buffer((I // 8,), "float32", align=4),
             w: T.Buffer((O, I // 2), "uint8", align=4), scale: T.Buffer((O, I // 32), "float16", align=4),
             y: T.Buffer((1, O), "float32", align=4)):
        T.func_attr({"tirx.noalias": True})
        for ob in T.parallel(O // R) if par else T.serial(O // R):
            acc = T.alloc_buffer((R, 4), "float32", scope="local")
            for r in T.unroll(R):
                acc[r, T.Ramp(0, 1, 4)] = T.Broadcast(T.float32(0), 4)
            for kg in range(G):
                for r in T.unroll(R):
                    wv = w[ob * R + r, T.Ramp(kg * 16, 1, 16)]
                    lo = T.reinterpret("int8x16", wv & T.Broadcast(T.uint8(15), 16))
                    hi = T.reinterpret("int8x16", wv >> T.Broadcast(T.uint8(4), 16))
                    d = T.call_llvm_pure_intrin("int32x4", _SDOT, T.Broadcast(T.int32(0), 4), lo,
                                                xlo[T.Ramp(kg * 16, 1, 16)])
                    d2 = T.call_llvm_pure_intrin("int32x4", _SDOT, d, hi, xhi[T.Ramp(kg * 16, 1, 16)])
                    acc[r, T.Ramp(0, 1, 4)] = acc[r, T.Ramp(0, 1, 4)] + T.Cast(
                        "float32x4", d2 - off[T.Ramp(kg * 4, 1, 4)]) * (dxl[T.Ramp(kg * 4, 1, 4)] * T.Broadcast(
                            T.Cast("float32", scale[ob * R + r, kg]), 4))
            for r in T.unroll(R):
                y[0, ob * R + r] = T.float32(0)
                for lane in range(4):
                    y[0, ob * R + r] = y[0, ob * R + r] + acc[r, lane]

    return gemv


def _int8_q8_gemv(spec: LinearSpec, rows: int, parallel_min_bytes: int = 16 << 20):
    """int8 GEMV on Q8_0-rounded activations with AVX-512 VNNI (llama.cpp's Q8_0 x Q8_0 numerics).

    ``vpdpbusd`` needs one unsigned operand: the stored weights are read as ``w ^ 0x80 = w + 128`` (u8), so each
    product carries ``128 * x`` extra; per call the prep kernel gives ``xq`` (codes), ``dxl`` (each int32 lane's
    block scale) and ``c`` = sum over blocks of 128 * d * sum(codes), subtracted once per row. Per 64 weight
    bytes: load, xor, vpdpbusd, convert, fma.
    """
    from tvm.script import tirx as T

    O, I = spec.out_features, spec.in_features
    R = _largest_divisor(O, rows)
    NB = I // 64
    par = weight_bytes(spec) >= parallel_min_bytes

    @T.prim_func
    def gemv(xq: T.Buffer((I,), "int8", align=4), dxl: T.Buffer((I // 4,), "float32", align=4),
             c: T.Buffer((1,), "float32", align=4), w: T.Buffer((O, I), "int8", align=4),
             scale: T.Buffer((O,), "float32", align=4), y: T.Buffer((1, O), "float32", align=4)):
        T.func_attr({"tirx.noalias": True})
        for ob in T.parallel(O // R) if par else T.serial(O // R):
            acc = T.alloc_buffer((R, 16), "float32", scope="local")
            for r in T.unroll(R):
                acc[r, T.Ramp(0, 1, 16)] = T.Broadcast(T.float32(0), 16)
            for kb in range(NB):
                for r in T.unroll(R):
                    wu = T.reinterpret("int8x64", T.reinterpret("uint8x64", w[ob * R + r, T.Ramp(kb * 64, 1, 64)])
                                       ^ T.Broadcast(T.uint8(128), 64))
                    d = T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512",
                                                T.Broadcast(T.int32(0), 16), wu, xq[T.Ramp(kb * 64, 1, 64)])
                    acc[r, T.Ramp(0, 1, 16)] = acc[r, T.Ramp(0, 1, 16)] + T.Cast("float32x16", d) * dxl[
                        T.Ramp(kb * 16, 1, 16)]
            for r in T.unroll(R):
                y[0, ob * R + r] = T.float32(0) - c[0]
                for lane in range(16):
                    y[0, ob * R + r] = y[0, ob * R + r] + acc[r, lane]
                y[0, ob * R + r] = y[0, ob * R + r] * scale[ob * R + r]

    return gemv


def _q8_prep_int8(n: int):
    """``x f32 [n] -> xq int8 [n], dxl f32 [n/4], c f32 [1]`` for :func:`_int8_q8_gemv` (Q8_0 blocks of 32)."""
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


def _q8_prep(n: int):
    """``x f32 [n] -> xlo, xhi int8 [n/2], off int32 [n/8], dxl f32 [n/8]``: the activation side of the q8 int4
    kernel (see :func:`_int4_q8_gemv`): Q8_0 blocks of 32, d = max|x|/127, codes round-half-even(x / d)."""
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


def _largest_divisor(n: int, at_most: int) -> int:
    """The largest d <= at_most dividing n."""
    return next(d for d in range(min(n, at_most), 0, -1) if n % d == 0)


def cuda_threads(spec: LinearSpec, opt: CudaSchedule) -> tuple[int, int]:
    """(threads per row, rows per block) the CUDA schedule uses for ``spec``: each divides its extent exactly."""
    if spec.scheme == "int4":
        h2 = spec.group_size // 2
        vec = _largest_divisor(h2, opt.vec)
        threads = _largest_divisor((spec.in_features // spec.group_size) * (h2 // vec), opt.threads)
    else:
        vec = _largest_divisor(spec.in_features, opt.vec)
        threads = _largest_divisor(spec.in_features // vec, opt.threads)
    return threads, _largest_divisor(spec.out_features, opt.rows_per_block)


def _cuda_schedule(func, spec: LinearSpec, opt: CudaSchedule):
    """``rows_per_block`` output rows per block (threadIdx.y), ``threads`` lanes per row (threadIdx.x) each
    accumulating a strided slice of the reduction, then a cross-thread (warp shuffle) reduction."""
    tvm = _tvm()
    sch = tvm.s_tir.Schedule(func)
    main = sch.get_sblock("acc" if spec.scheme == "int8" else "y")
    loops = sch.get_loops(main)
    nred = 3 if spec.scheme == "int4" else 1
    nsp = len(loops) - nred
    red = loops[nsp:]
    # every split divides exactly: TVM's predicated tails are wrong under the cross-thread reduction (measured)
    if spec.scheme == "int4":
        # thread t handles whole bytes: `vec` consecutive bytes (2*vec values) of a group per step
        kg, hh, j = red
        h2 = spec.group_size // 2
        vec = _largest_divisor(h2, opt.vec)
        threads = _largest_divisor((spec.in_features // spec.group_size) * (h2 // vec), opt.threads)
        jo, jv = sch.split(j, [None, vec])
        sch.reorder(kg, jo, hh, jv)
        r = sch.fuse(kg, jo)
        ro, tx = sch.split(r, [None, threads])
        sch.reorder(tx, ro, hh, jv)
    else:
        (k,) = red
        vec = _largest_divisor(spec.in_features, opt.vec)
        threads = _largest_divisor(spec.in_features // vec, opt.threads)
        ro, tx, kv = sch.split(k, [None, threads, vec])
        sch.reorder(tx, ro, kv)
    rf = sch.rfactor(tx, 0)
    # main: spatial..., tx (cross-thread reduce); rf block vars: tx, spatial..., reductions
    lp = sch.get_loops(main)
    rows = _largest_divisor(spec.out_features, opt.rows_per_block)
    ob, oy = sch.split(lp[nsp - 1], [None, rows])
    sch.reorder(ob, oy, *lp[: nsp - 1])
    sch.bind(ob, "blockIdx.x")
    sch.bind(oy, "threadIdx.y")
    sch.bind(sch.get_loops(main)[-1], "threadIdx.x")
    # gemv: accumulate under the row loop; gemm: under the (symbolic) row-tile loop, so every local buffer has a
    # constant size and each thread streams its slice of the weights once per tile, reusing it for the tile's rows
    anchor = oy if spec.batch == "gemv" else sch.get_loops(main)[2]
    depth = 2 if spec.batch == "gemv" else 3
    sch.compute_at(rf, anchor, preserve_unit_loops=True)
    sch.set_scope(rf, 0, "local")
    own = sch.get_loops(rf)[depth:]  # tx, spatial (batch..., o), reductions
    tx_l, sp, rl = own[0], own[1:1 + nsp], own[1 + nsp:]
    sch.bind(tx_l, "threadIdx.x")
    if spec.batch == "gemm":
        rt = sp[1]
        sch.reorder(rl[0], rt, *rl[1:])
        sch.unroll(rt)
    for x in rl[1:]:
        sch.unroll(x)
    if spec.scheme == "int8":
        sch.reverse_compute_at(sch.get_sblock("y"), anchor)
        sch.set_scope(main, 0, "local")
    sch.decompose_reduction(rf, rl[0])
    return sch.mod


def schedule(spec: LinearSpec, target: dict[str, Any], options: BuildOptions | None = None):
    """IRModule of ``spec`` scheduled for ``target`` (a TVM target dict), function named ``spec.name``."""
    tvm = _tvm()
    options = options or BuildOptions()
    kind = target.get("kind")
    if spec.act == "q8":
        pmin = options.cpu.parallel_min_bytes if options.cpu.parallel else 1 << 62
        if has_vnni(target):
            gemv = _int4_q8_gemv if spec.scheme == "int4" else _int8_q8_gemv
        elif has_dotprod(target):
            gemv = _int4_q8_gemv_sdot if spec.scheme == "int4" else _int8_q8_gemv_sdot
        else:
            raise TargetError(f"{spec.name} needs AVX-512 VNNI (x86) or dotprod (aarch64); target {target} has "
                              "neither")
        f = gemv(spec, options.cpu.q8_rows_int4 if spec.scheme == "int4" else options.cpu.q8_rows, pmin)
        prep = _q8_prep(spec.in_features) if spec.scheme == "int4" else _q8_prep_int8(spec.in_features)
        f = f.with_attr("global_symbol", spec.name)
        prep = prep.with_attr("global_symbol", spec.name + "_prep")
        return tvm.IRModule({spec.name: f, spec.name + "_prep": prep})
    func = linear_primfunc(spec)
    if kind == "llvm":
        mod = _cpu_schedule(func, spec, options.cpu, options.cpu.vector or vector_lanes(target))
    elif kind == "cuda":
        mod = _cuda_schedule(func, spec, options.cuda)
    else:
        raise TargetError(f"no kernel schedule for TVM target kind {kind!r}; supported: llvm, cuda")
    f = mod["main"].with_attr("global_symbol", spec.name)
    return tvm.IRModule({spec.name: f})


def build(specs: list[LinearSpec], target: dict[str, Any], options: BuildOptions | None = None):
    """Compile ``specs`` for ``target`` into one TVM executable (one function per spec, named ``spec.name``)."""
    tvm = _tvm()
    if not specs:
        raise OptionError("build() needs at least one kernel spec")
    funcs = {}
    for spec in specs:
        funcs.update(schedule(spec, target, options).functions_items())
    mod = tvm.IRModule({gv.name_hint if hasattr(gv, "name_hint") else str(gv): f for gv, f in funcs.items()})
    return tvm.compile(mod, target=tvm.target.Target(target))


_SIG_RE = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\((\d+)\) )?(\w+)\(([^)]*)\)\s*\{')



def cuda_params(params: str) -> list[dict[str, Any]]:
    """The parameter list of a TVM-emitted CUDA kernel signature as launch records: name (TVM's ``_ptr`` suffix
    dropped), whether it is a pointer, and its C type."""
    plist = []
    for p in params.split(","):
        toks = p.replace("__restrict__", "").replace("*", " * ").split()
        name = toks[-1]
        plist.append({"name": name[:-4] if name.endswith("_ptr") else name, "pointer": "*" in toks,
                      "ctype": " ".join(t for t in toks[:-1] if t != "*")})
    return plist

def cuda_artifacts(spec: LinearSpec, target: dict[str, Any], options: BuildOptions | None = None,
                   fatbin: bool = True) -> tuple[str, bytes, dict[str, Any]]:
    """CUDA C source TVM generates for ``spec`` on ``target`` (``{"kind": "cuda", "arch": "sm_XX"}``), its fatbin
    compiled by nvcc (empty when ``fatbin`` is False or nvcc cannot target ``arch``: CUDA 13 dropped sm_53, so a
    Jetson Nano compiles the source itself), and the launch record :mod:`.cuda_launch`
    needs: kernel name, parameter names/types in order, grid and block dimensions."""
    tvm = _tvm()
    options = options or BuildOptions()
    if target.get("kind") != "cuda":
        raise TargetError(f"cuda_artifacts needs a cuda target, got {target}")
    arch = str(target.get("arch", ""))
    if not arch.startswith("sm_"):
        raise TargetError(f"cuda target needs an 'arch' like 'sm_87', got {target}")
    ex = tvm.compile(schedule(spec, target, options), target=tvm.target.Target(target))
    dev = [m for m in ex.mod.imports if m.kind == "cuda"]
    if not dev:  # pragma: no cover - depends on the TVM build
        raise TargetError("TVM produced no CUDA device module")
    src = dev[0].inspect_source()
    kernels = _SIG_RE.findall(src)
    if len(kernels) != 1:
        raise TargetError(f"expected one CUDA kernel for {spec.name}, found {len(kernels)}")
    _, kname, params = kernels[0]
    plist = cuda_params(params)
    threads, rows = cuda_threads(spec, options.cuda)
    launch = {"kernel": kname, "params": plist, "grid": [spec.out_features // rows, 1, 1],
              "block": [threads, rows, 1], "arch": arch}
    binary = b""
    if fatbin:
        from tvm.support import nvcc

        try:
            with tvm.target.Target(target):  # nvcc.compile_cuda reads the current target's arch
                binary = bytes(nvcc.compile_cuda(src, target_format="fatbin", arch=arch, compiler="nvcc"))
        except Exception as e:  # noqa: BLE001 - e.g. nvcc 13 dropped sm_53 (Maxwell): ship the source only
            launch["fatbin_error"] = " ".join(str(e).split())[-300:]
    return src, binary, launch
