"""Float-activation linear kernels (y = x @ W.T) for ``int8``, ``int4`` and ``f16`` weights: one TE definition per
weight layout, one CPU and one CUDA schedule for all of them (layouts and batch forms: :mod:`.tvm_build`).

What differs per scheme is in one object per scheme, :data:`FAMILIES` (keyed by scheme name; dtypes and shapes
come from the scheme registry, :func:`edgespool.runtime.bundle.schemes.get_scheme`): the compute definition, how
the reduction is split into accumulator lanes (CPU) and thread slices (CUDA), and whether a scale epilogue
follows the reduction.

* ``kind: llvm`` (x86-64 AVX2/AVX-512 via ``mcpu``, aarch64 NEON): rows split over threads (large weights only),
  the reduction split into ``lanes`` vector accumulators (``rfactor``), a few output rows interleaved to hide FMA
  latency.
* ``kind: cuda``: ``rows_per_block`` rows per block, a warp-multiple of threads per row striding the reduction,
  then a cross-thread (shuffle) reduction.
"""
from __future__ import annotations

import re
from typing import Any

from ..errors import TargetError
from ..runtime.bundle.schemes import get_scheme
from .tvm_build import (BuildOptions, CpuSchedule, CudaSchedule, LinearSpec, _tvm, largest_divisor, vector_lanes,
                        weight_bytes)


class _Family:
    """How one weight layout's float-activation kernel is defined and scheduled. The reduction block is ``acc``
    when an epilogue block ``y`` (``acc * scale``) follows it, else ``y`` itself."""

    n_reduce = 1  # reduction axes of the compute definition

    def epilogue(self, spec: LinearSpec) -> bool:
        return False

    def main_block(self, spec: LinearSpec) -> str:
        return "acc" if self.epilogue(spec) else "y"


class _Dense(_Family):
    """``w [out, in]`` of one value per element (int8, f16): one reduction axis ``k``; with a per-row scale (int8)
    the epilogue ``y = acc * scale[o]`` follows the reduction."""

    def epilogue(self, spec: LinearSpec) -> bool:
        return get_scheme(spec.scheme).scale_dtype is not None

    def compute(self, spec: LinearSpec, x, xat, yshape: tuple, nb: int) -> list:
        te = _tvm().te
        sc = get_scheme(spec.scheme)
        O, I = spec.out_features, spec.in_features
        w = te.placeholder(sc.data_shape((O, I)), sc.data_dtype, name="w")
        k = te.reduce_axis((0, I), name="k")
        acc = te.compute(yshape, lambda *i: te.sum(xat(i[:nb], k) * w[i[nb], k].astype("float32"), axis=k),
                         name=self.main_block(spec))
        if not self.epilogue(spec):
            return [x, w, acc]
        s = te.placeholder(sc.scale_shape((O, I)), sc.scale_dtype, name="scale")
        y = te.compute(yshape, lambda *i: acc[i] * s[i[nb]], name="y")
        return [x, w, s, y]

    def cpu_lanes(self, sch, red: list, spec: LinearSpec, opt: CpuSchedule, vec: int):
        """Split the reduction into ``lanes`` accumulators: (lane loop, vector width)."""
        (k,) = red
        lanes = opt.lanes
        if spec.batch == "gemm":  # keep lanes x row_tile accumulators within registers (<= 64 lanes)
            lanes = max(vec, min(lanes, 64 // spec.row_tile))
        while spec.in_features % lanes:
            lanes //= 2
        _, lane = sch.split(k, [None, lanes])
        return lane, min(vec, lanes)

    def cuda_step(self, spec: LinearSpec, opt: CudaSchedule) -> tuple[int, int]:
        """(elements per thread step, threads per row): each divides its extent exactly."""
        vec = largest_divisor(spec.in_features, opt.vec)
        return vec, largest_divisor(spec.in_features // vec, opt.threads)

    def cuda_split(self, sch, red: list, spec: LinearSpec, opt: CudaSchedule):
        """Split the reduction over ``threads`` lanes of ``vec`` elements: the thread loop, outermost."""
        (k,) = red
        vec, threads = self.cuda_step(spec, opt)
        ro, tx, kv = sch.split(k, [None, threads, vec])
        sch.reorder(tx, ro, kv)
        return tx


class _Nibbles(_Family):
    """int4, ``w uint8 [out, in/2]`` in Q4_0 nibble order with ``scale [out, in/g]``: reduction axes (group
    ``kg``, nibble ``h``, byte ``j``); the scale multiplies inside the reduction (no epilogue)."""

    n_reduce = 3

    def compute(self, spec: LinearSpec, x, xat, yshape: tuple, nb: int) -> list:
        tvm = _tvm()
        te = tvm.te
        sc = get_scheme(spec.scheme)
        O, I, g = spec.out_features, spec.in_features, spec.group_size
        h2 = g // 2
        w = te.placeholder(sc.data_shape((O, I), g), sc.data_dtype, name="w")
        s = te.placeholder(sc.scale_shape((O, I), g), sc.scale_dtype, name="scale")
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

    def cpu_lanes(self, sch, red: list, spec: LinearSpec, opt: CpuSchedule, vec: int):
        """2 x ``ji_n`` accumulators: low and high nibbles accumulate independently."""
        kg, hh, j = red
        h2 = spec.group_size // 2
        ji_n = min(16, h2)
        if spec.batch == "gemm":  # 2 x ji_n lanes per row x row_tile rows within registers (<= 64 lanes)
            ji_n = min(ji_n, max(4, 32 // spec.row_tile))
        while h2 % ji_n:
            ji_n //= 2
        jo, ji = sch.split(j, [None, ji_n])
        sch.reorder(kg, jo, hh, ji)
        lane = sch.fuse(hh, ji)
        vec = min(vec, ji_n)
        while ji_n % vec:
            vec //= 2
        return lane, vec

    def cuda_step(self, spec: LinearSpec, opt: CudaSchedule) -> tuple[int, int]:
        h2 = spec.group_size // 2
        vec = largest_divisor(h2, opt.vec)
        return vec, largest_divisor((spec.in_features // spec.group_size) * (h2 // vec), opt.threads)

    def cuda_split(self, sch, red: list, spec: LinearSpec, opt: CudaSchedule):
        """Thread t handles whole bytes: ``vec`` consecutive bytes (2*vec values) of a group per step."""
        kg, hh, j = red
        vec, threads = self.cuda_step(spec, opt)
        jo, jv = sch.split(j, [None, vec])
        sch.reorder(kg, jo, hh, jv)
        r = sch.fuse(kg, jo)
        ro, tx = sch.split(r, [None, threads])
        sch.reorder(tx, ro, hh, jv)
        return tx


# scheme name -> its float-activation kernel family (the registry lists it in the scheme's kernel_families)
FAMILIES: dict[str, _Family] = {"int8": _Dense(), "f16": _Dense(), "int4": _Nibbles()}


def family(spec: LinearSpec) -> _Family:
    return FAMILIES[spec.scheme]


# ----------------------------------------------------------------------------------------------------------------
# compute definitions


def linear_te(spec: LinearSpec) -> list:
    """TE placeholders and output of ``spec``: ``[x, w, (scale,) y]`` in argument order."""
    tvm = _tvm()
    O, I = spec.out_features, spec.in_features
    if spec.batch == "gemv":
        xshape: tuple = (1, I)
        yshape: tuple = (1, O)
    else:
        mb = tvm.tirx.Var("mb", "int32")
        xshape = (mb, spec.row_tile, I)
        yshape = (mb, spec.row_tile, O)
    nb = len(xshape) - 1  # batch dims before `in`
    x = tvm.te.placeholder(xshape, "float32", name="x")

    def xat(b, k):
        return x[(*b, k)]

    return family(spec).compute(spec, x, xat, yshape, nb)


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


def _reduction(sch, spec: LinearSpec):
    """(main block, its loops, number of spatial loops) of ``spec``'s reduction block."""
    fam = family(spec)
    main = sch.get_sblock(fam.main_block(spec))
    loops = sch.get_loops(main)
    return main, loops, len(loops) - fam.n_reduce


def _cpu_schedule(func, spec: LinearSpec, opt: CpuSchedule, vec: int):
    """Rows of ``out`` split over threads; per row, ``lanes`` f32 accumulators (``rfactor`` of the reduction),
    unrolled in registers of ``vec`` lanes; several rows (gemv) or all rows of a tile (gemm) interleaved."""
    tvm = _tvm()
    fam = family(spec)
    sch = tvm.s_tir.Schedule(func)
    main, loops, nsp = _reduction(sch, spec)
    lane, vec = fam.cpu_lanes(sch, loops[nsp:], spec, opt, vec)
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
    if fam.epilogue(spec):  # epilogue y = acc * scale next to its producer; acc stays in registers
        sch.reverse_compute_at(sch.get_sblock("y"), anchor)
        sch.set_scope(main, 0, "local")
    if opt.parallel and weight_bytes(spec) >= opt.parallel_min_bytes:
        sch.parallel(oo)
    sch.decompose_reduction(rf, red_loops[0])
    return sch.mod


def cuda_threads(spec: LinearSpec, opt: CudaSchedule) -> tuple[int, int]:
    """(threads per row, rows per block) the CUDA schedule uses for ``spec``: each divides its extent exactly."""
    return family(spec).cuda_step(spec, opt)[1], largest_divisor(spec.out_features, opt.rows_per_block)


def _cuda_schedule(func, spec: LinearSpec, opt: CudaSchedule):
    """``rows_per_block`` output rows per block (threadIdx.y), ``threads`` lanes per row (threadIdx.x) each
    accumulating a strided slice of the reduction, then a cross-thread (warp shuffle) reduction."""
    tvm = _tvm()
    fam = family(spec)
    sch = tvm.s_tir.Schedule(func)
    main, loops, nsp = _reduction(sch, spec)
    # every split divides exactly: TVM's predicated tails are wrong under the cross-thread reduction (measured)
    tx = fam.cuda_split(sch, loops[nsp:], spec, opt)
    rf = sch.rfactor(tx, 0)
    # main: spatial..., tx (cross-thread reduce); rf block vars: tx, spatial..., reductions
    lp = sch.get_loops(main)
    rows = largest_divisor(spec.out_features, opt.rows_per_block)
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
    if fam.epilogue(spec):
        sch.reverse_compute_at(sch.get_sblock("y"), anchor)
        sch.set_scope(main, 0, "local")
    sch.decompose_reduction(rf, rl[0])
    return sch.mod


def schedule(spec: LinearSpec, target: dict[str, Any], options: BuildOptions):
    """IRModule of the float-activation ``spec`` scheduled for ``target``, function named ``spec.name``."""
    tvm = _tvm()
    func = linear_primfunc(spec)
    kind = target.get("kind")
    if kind == "llvm":
        mod = _cpu_schedule(func, spec, options.cpu, options.cpu.vector or vector_lanes(target))
    elif kind == "cuda":
        mod = _cuda_schedule(func, spec, options.cuda)
    else:
        raise TargetError(f"no kernel schedule for TVM target kind {kind!r}; supported: llvm, cuda")
    f = mod["main"].with_attr("global_symbol", spec.name)
    return tvm.IRModule({spec.name: f})
