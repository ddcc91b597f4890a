"""Shared build plumbing of the TVM-compiled kernels: the linear kernel spec, build options, target detection,
compile/export and the CUDA artifacts (source + fatbin + launch record).

The kernel definitions live per family, each parametrised by target rather than copied per target:

* :mod:`.tvm_linear`: float-activation linear kernels (y = x @ W.T) for ``int8``, ``int4`` and ``f16`` weights
  (one TE definition per scheme, one CPU and one CUDA schedule for all of them).
* :mod:`.tvm_q8`: GEMVs on Q8_0-rounded activations, one generator per weight scheme parametrised by the
  integer dot-product ISA (x86 AVX-512 VNNI ``vpdpbusd``, aarch64 ``sdot``).
* :mod:`.tvm_attention`: GQA attention, one generator for CPU and CUDA.

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
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import OptionError, TargetError
from ..runtime.bundle.schemes import SCHEMES, get_scheme

# schemes with a float-activation kernel family (named like the scheme in the registry's kernel_families; the
# definitions are tvm_linear.FAMILIES)
LINEAR_SCHEMES = tuple(name for name, s in SCHEMES.items() if name in s.kernel_families)
BATCH_FORMS = ("gemv", "gemm")
ACTIVATIONS = ("f32", "q8")
# x86 CPUs (LLVM mcpu) with AVX-512 VNNI (vpdpbusd), used by the q8-activation kernels
_VNNI_MCPUS = ("znver4", "znver5", "sapphirerapids", "icelake-server", "icelake-client", "tigerlake", "cascadelake",
               "cooperlake", "graniterapids", "emeraldrapids")
_AVX512_MCPUS = ("znver4", "znver5", "skylake-avx512", "icelake-server", "sapphirerapids", "cascadelake", "cooperlake",
                 "tigerlake", "icelake-client")
# q8 GEMVs per weight scheme: (required group size, 0 = none; in_features multiple). The multiples are the widest
# ISA's step (VNNI: 64 weight bytes per vpdpbusd), so one bundle serves x86 and aarch64 alike
Q8_WEIGHTS = {"int8": (0, 64), "int4": (32, 128)}


def q8_supported(scheme: str, in_features: int, group_size: int = 0, batch: str = "gemv") -> bool:
    """Whether a q8-activation kernel (:mod:`.tvm_q8`) exists for this weight."""
    rule = Q8_WEIGHTS.get(scheme)
    if batch != "gemv" or rule is None:
        return False
    group, multiple = rule
    return (not group or group_size == group) and in_features % multiple == 0


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
        if self.grouped:
            g = self.group_size
            if g <= 0 or g % 2 or self.in_features % g:
                raise OptionError(f"{self.scheme} group size {g} must be even and divide in_features "
                                  f"{self.in_features}")
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
    def grouped(self) -> bool:
        """Whether the scheme stores group-wise scales (int4), i.e. takes a group size."""
        return get_scheme(self.scheme).group_size(1) != 0

    @property
    def name(self) -> str:
        """Function name inside the compiled module, e.g. ``linear_int4g32_o4096_i4096_gemv``."""
        q = f"{self.scheme}g{self.group_size}" if self.grouped else self.scheme
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


def weight_bytes(spec: LinearSpec) -> int:
    """Bytes of the stored weight (data + scales) ``spec`` reads per call."""
    return spec.out_features * get_scheme(spec.scheme).row_bytes(spec.in_features, spec.group_size)


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


def largest_divisor(n: int, at_most: int) -> int:
    """The largest d <= at_most dividing n."""
    return next(d for d in range(min(n, at_most), 0, -1) if n % d == 0)


# ----------------------------------------------------------------------------------------------------------------
# targets


def _mattr(target: dict[str, Any]) -> str:
    return " ".join(target.get("mattr", []) or [])


def vector_lanes(target: dict[str, Any]) -> int:
    """float32 lanes of one SIMD register of an llvm ``target`` dict (AVX-512: 16, AVX2: 8, NEON: 4)."""
    triple = str(target.get("mtriple", ""))
    if triple.startswith("x86_64") or not triple:
        return 16 if "avx512" in _mattr(target) or str(target.get("mcpu", "")) in _AVX512_MCPUS else 8
    return 4


def has_vnni(target: dict[str, Any]) -> bool:
    """True for an x86-64 llvm target whose CPU has AVX-512 VNNI (vpdpbusd)."""
    return (target.get("kind") == "llvm" and str(target.get("mtriple", "x86_64")).startswith("x86_64")
            and (str(target.get("mcpu", "")) in _VNNI_MCPUS or "+avx512vnni" in _mattr(target)))


def has_dotprod(target: dict[str, Any]) -> bool:
    """True for an aarch64 llvm target with the dot-product extension (sdot; Cortex-A76 / Pi 5, A78)."""
    return (target.get("kind") == "llvm" and str(target.get("mtriple", "")).startswith("aarch64")
            and "+dotprod" in _mattr(target))


# ----------------------------------------------------------------------------------------------------------------
# build


def schedule(spec: LinearSpec, target: dict[str, Any], options: BuildOptions | None = None):
    """IRModule of ``spec`` scheduled for ``target`` (a TVM target dict), function named ``spec.name`` (q8: plus
    its activation prep kernel ``spec.name + "_prep"``)."""
    from . import tvm_linear, tvm_q8

    options = options or BuildOptions()
    if spec.act == "q8":
        return tvm_q8.schedule(spec, target, options.cpu)
    return tvm_linear.schedule(spec, target, options)


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


# ----------------------------------------------------------------------------------------------------------------
# CUDA: source + fatbin + launch record (the GPU machine launches them with CuPy, see cuda_launch.py)

_SIG_RE = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\((\d+)\) )?(\w+)\(([^)]*)\)\s*\{')


def cuda_params(params: str) -> list[dict[str, Any]]:
    """The parameter list of a TVM-emitted CUDA kernel signature as launch records: name (TVM's ``_ptr`` suffix
    dropped), whether it is a pointer, and its C type."""
    plist = []
    for p in params.split(","):
        toks = p.replace("__restrict__", "").replace("*", " * ").split()
        name = toks[-1]
        plist.append({"name": name.removesuffix("_ptr"), "pointer": "*" in toks,
                      "ctype": " ".join(t for t in toks[:-1] if t != "*")})
    return plist


def cuda_arch(target: dict[str, Any]) -> str:
    """The ``sm_XX`` arch of a cuda ``target`` dict (TargetError for anything else)."""
    arch = str(target.get("arch", ""))
    if target.get("kind") != "cuda" or not arch.startswith("sm_"):
        raise TargetError(f"cuda_artifacts needs a cuda target with an arch like 'sm_87', got {target}")
    return arch


def cuda_compile(mod, target: dict[str, Any], fatbin: bool = True
                 ) -> tuple[str, list[tuple[str, list[dict[str, Any]]]], bytes, str | None]:
    """Compile the IRModule ``mod`` for the cuda ``target`` (``{"kind": "cuda", "arch": "sm_XX"}``): the CUDA C
    source TVM emits, its kernels as (name, parameter records) in source order, the fatbin nvcc builds from it
    (empty when ``fatbin`` is False or nvcc cannot target ``arch``: CUDA 13 dropped sm_53, so a Jetson Nano
    compiles the source itself) and, in that last case, why (else None)."""
    tvm = _tvm()
    arch = cuda_arch(target)
    ex = tvm.compile(mod, target=tvm.target.Target(target))
    dev = [m for m in ex.mod.imports if m.kind == "cuda"]
    if not dev:  # pragma: no cover - depends on the TVM build
        raise TargetError("TVM produced no CUDA device module")
    src = dev[0].inspect_source()
    kernels = [(kname, cuda_params(params)) for _, kname, params in _SIG_RE.findall(src)]
    binary, error = b"", None
    if fatbin:
        from tvm.support import nvcc

        try:
            with tvm.target.Target(target):  # nvcc.compile_cuda reads the current target's arch
                binary = bytes(nvcc.compile_cuda(src, target_format="fatbin", arch=arch, compiler="nvcc"))
        except Exception as e:  # noqa: BLE001 - e.g. nvcc 13 dropped sm_53 (Maxwell): ship the source only
            error = " ".join(str(e).split())[-300:]
    return src, kernels, binary, error


def cuda_artifacts(spec: LinearSpec, target: dict[str, Any], options: BuildOptions | None = None,
                   fatbin: bool = True) -> tuple[str, bytes, dict[str, Any]]:
    """CUDA C source TVM generates for ``spec`` on ``target``, its fatbin (see :func:`cuda_compile`) and the launch
    record :mod:`.cuda_launch` needs: kernel name, parameter names/types in order, grid and block dimensions."""
    from .tvm_linear import cuda_threads

    options = options or BuildOptions()
    arch = cuda_arch(target)
    src, kernels, binary, error = cuda_compile(schedule(spec, target, options), target, fatbin)
    if len(kernels) != 1:
        raise TargetError(f"expected one CUDA kernel for {spec.name}, found {len(kernels)}")
    kname, plist = kernels[0]
    threads, rows = cuda_threads(spec, options.cuda)
    launch = {"kernel": kname, "params": plist, "grid": [spec.out_features // rows, 1, 1],
              "block": [threads, rows, 1], "arch": arch}
    if error is not None:
        launch["fatbin_error"] = error
    return src, binary, launch
