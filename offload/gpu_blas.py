"""cuBLAS through ctypes, on handles of edgespool's own: the GEMMs of a GPU prompt chunk in a form a CUDA graph can
record. CuPy's cuBLAS wrappers (``cupy.matmul`` and ``cupy_backends.cuda.libs.cublas``) refuse a capturing stream
("calling cuBLAS API during stream capture is currently unsupported"); cuBLAS itself records fine once each handle
has a workspace of its own (NVIDIA's cuBLAS guide, "CUDA Graphs Support": otherwise it may allocate while
recording). One handle per CUDA stream (``cublasSetStream`` resets the workspace, so a handle keeps its stream),
alpha / beta from host memory (their values are read when the call is recorded: constants here).

All matrices are float32 or float16 row-major as CuPy holds them; each call is written as the column-major product
cuBLAS computes (a row-major ``M [r, c]`` is a column-major ``[c, r]`` with leading dimension ``c``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from ..errors import EdgespoolError

OP_N, OP_T = 0, 1
R_32F, R_16F = 0, 2  # cudaDataType
COMPUTE_32F = 68  # cublasComputeType_t CUBLAS_COMPUTE_32F
GEMM_DEFAULT = -1
WORKSPACE_BYTES = 4 << 20  # per handle: cuBLAS's own default before Hopper (it takes 32 MiB there); the prefill
# products here are small enough that split-K within 4 MiB serves them (benchmarks/gpu_prefill_bench.py times them)

_P, _I, _LL = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong


def _library() -> ctypes.CDLL:
    """The libcublas CuPy already loaded (matched by soname), else the first one the loader finds."""
    names = ["libcublas.so.12", "libcublas.so.13", "libcublas.so.11"]
    try:
        with open("/proc/self/maps") as f:  # the exact file CuPy mapped, wherever its wheel put it
            names = sorted({ln.split()[-1] for ln in f if "/libcublas.so" in ln}) + names
    except OSError:
        pass
    found = ctypes.util.find_library("cublas")
    for n in names + ([found] if found else []):
        try:
            lib = ctypes.CDLL(n)
        except OSError:
            continue
        lib.cublasCreate_v2.argtypes = [ctypes.POINTER(_P)]
        lib.cublasSetStream_v2.argtypes = [_P, _P]
        lib.cublasSetWorkspace_v2.argtypes = [_P, _P, ctypes.c_size_t]
        lib.cublasGemmEx.argtypes = [_P, _I, _I, _I, _I, _I, _P, _P, _I, _I, _P, _I, _I, _P, _P, _I, _I, _I, _I]
        lib.cublasSgemmStridedBatched.argtypes = [_P, _I, _I, _I, _I, _I, _P, _P, _I, _LL, _P, _I, _LL, _P, _P,
                                                  _I, _LL, _I]
        return lib
    raise EdgespoolError("GPU: libcublas not found (CuPy's CUDA libraries are incomplete)")


class Blas:
    """cuBLAS handles of this process, one per stream, each with its own workspace (module docstring)."""

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self.lib: ctypes.CDLL | None = None
        self._handles: dict[int, tuple[_P, Any]] = {}
        self._one = ctypes.c_float(1.0)
        self._zero = ctypes.c_float(0.0)

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise EdgespoolError(f"GPU: {what} failed with cuBLAS status {status}")

    def handle(self) -> _P:
        """The handle bound to CuPy's current stream (made, with its workspace, on first use)."""
        cp = self.cp
        s = cp.cuda.get_current_stream()
        got = self._handles.get(s.ptr)
        if got is not None:
            return got[0]
        if self.lib is None:
            self.lib = _library()
        h = _P()
        self._check(self.lib.cublasCreate_v2(ctypes.byref(h)), "cublasCreate")
        self._check(self.lib.cublasSetStream_v2(h, _P(s.ptr)), "cublasSetStream")
        with cp.cuda.using_allocator(cp.get_default_memory_pool().malloc):  # CuPy's main pool, held
            ws = cp.empty(WORKSPACE_BYTES, cp.uint8)
        self._check(self.lib.cublasSetWorkspace_v2(h, _P(ws.data.ptr), WORKSPACE_BYTES), "cublasSetWorkspace")
        self._handles[s.ptr] = (h, ws)
        return h

    def _ab(self, beta: float) -> tuple[Any, Any]:
        return ctypes.byref(self._one), ctypes.byref(self._zero if beta == 0 else self._one)

    def gemm_f16(self, m: int, n: int, k: int, a: int, lda: int, b: int, ldb: int, c: int, ldc: int,
                 beta: float = 0.0) -> None:
        """Column-major ``C [m, n] (float32) = A^T . B (+ C when beta = 1)``, ``A`` f16 ``[k, m]`` (lda), ``B``
        f16 ``[k, n]`` (ldb), float32 accumulation on the tensor cores. Pointers are device addresses."""
        h = self.handle()
        al, be = self._ab(beta)
        assert self.lib is not None
        self._check(self.lib.cublasGemmEx(h, OP_T, OP_N, m, n, k, al, _P(a), R_16F, lda, _P(b), R_16F, ldb, be,
                                          _P(c), R_32F, ldc, COMPUTE_32F, GEMM_DEFAULT), "cublasGemmEx")

    def sgemm(self, ta: int, tb: int, m: int, n: int, k: int, a: int, lda: int, sa: int, b: int, ldb: int, sb: int,
              c: int, ldc: int, sc: int, batch: int = 1, beta: float = 0.0) -> None:
        """Column-major float32 ``C = op(A) . op(B) (+ C)`` for ``batch`` matrices at element strides sa / sb /
        sc (cublasSgemmStridedBatched)."""
        h = self.handle()
        al, be = self._ab(beta)
        assert self.lib is not None
        self._check(self.lib.cublasSgemmStridedBatched(h, ta, tb, m, n, k, al, _P(a), lda, sa, _P(b), ldb, sb, be,
                                                       _P(c), ldc, sc, batch), "cublasSgemmStridedBatched")
