"""The one linear-layer entry point of the decoder loop: ``y = x @ W.T (+ bias)`` for a weight in any scheme.

Every matrix product of the engine goes through a :class:`~edgespool.kernels.table.KernelTable` (one per loaded
model: scheme -> kernel), whose ``linear`` method is :func:`apply_linear` over its mapping; a faster kernel
(TVM-compiled per target, CuPy, a fused int4 GEMV) plugs in by being that table's entry for a scheme, and nothing
else changes. This module holds the numpy reference kernels (:data:`REFERENCE_KERNELS`, read-only) and
:func:`linear`, the reference entry point. The reference kernels: f32 weights are used as they are; the other
schemes are dequantised to float32 **in row blocks** of at most :data:`BLOCK_BYTES` (a per-thread scratch buffer
reused from call to call) and each block is multiplied with BLAS straight into its columns of a preallocated
result. The float32 temporary of a matmul is therefore bounded by ``BLOCK_BYTES`` (+ the int4 nibble scratch, a
quarter of it) per calling thread, whatever the matrix size: :func:`reference_workspace_bytes` is the figure the
memory plan reserves. Each output element is still one dot product over the whole input width, computed from
exactly the values :func:`edgespool.kernels.quant.dequantize` gives, so results equal the whole-matrix
computation up to the BLAS kernel's summation order (float rounding).
"""
from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Callable

import numpy as np

from .quant import SCHEMES, QTensor, get_scheme

LinearKernel = Callable[[np.ndarray, QTensor], np.ndarray]

BLOCK_BYTES = 2 << 20  # float32 bytes of one dequantised row block (2 MiB: fits the L2/L3 of edge CPUs)

SINGLE_THREAD_ROWS = 32  # products with at most this many rows of x (decode, short prompts) use one BLAS thread

_tls = threading.local()
@functools.cache
def _blas_threads_fn() -> Callable[[int], int] | None:
    """OpenBLAS's ``openblas_set_num_threads_local`` (per calling thread, returns the previous value) from the
    BLAS numpy loaded, or None (another BLAS, or an OpenBLAS older than 0.3.27). Looked up once per process (the
    BLAS numpy loaded does not change)."""
    try:
        with open("/proc/self/maps") as f:
            # the path is field 6 on; a replaced file's line ends in " (deleted)"
            paths = dict.fromkeys(ln.split(None, 5)[5].strip().removesuffix(" (deleted)") for ln in f
                                  if "openblas" in ln.lower() and len(ln.split(None, 5)) == 6)
    except OSError:
        return None
    for p in paths:
        try:  # one path that cannot be opened (deleted, another arch) must not hide the others
            fn = getattr(ctypes.CDLL(p), "openblas_set_num_threads_local", None)
        except OSError:
            continue
        if fn is not None:
            fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
            return fn
    return None


def reference_workspace_bytes() -> int:
    """Largest temporary memory one thread's reference linear kernel holds besides its inputs and output: the
    float32 row block plus the uint8 nibble scratch of an int4 block (bytes)."""
    return BLOCK_BYTES + BLOCK_BYTES // 4


def kernels_workspace_bytes(kernels: Mapping[str, LinearKernel]) -> int:
    """Workspace the memory plan reserves for the linear kernels ``kernels`` (scheme -> kernel): the largest of
    their declared ``workspace_bytes`` attribute and the reference's (a kernel without one is assumed to need no
    more than the reference)."""
    return max([reference_workspace_bytes()]
               + [int(getattr(k, "workspace_bytes", 0) or 0) for k in kernels.values()])


def _scratch() -> tuple[np.ndarray, np.ndarray]:
    """This thread's (float32 row block, uint8 nibble scratch), allocated on first use and reused."""
    s = getattr(_tls, "s", None)
    if s is None:
        s = _tls.s = (np.empty(BLOCK_BYTES // 4, dtype=np.float32), np.empty(BLOCK_BYTES // 4, dtype=np.uint8))
    return s


def _rows_per_block(w: QTensor) -> int:
    inn = int(w.shape[1])
    return max(1, BLOCK_BYTES // (4 * inn))


def dequantize_rows_into(w: QTensor, r0: int, r1: int, out: np.ndarray, nib: np.ndarray | None = None) -> np.ndarray:
    """Rows ``[r0, r1)`` of the 2-D weight ``w`` as float32 into ``out`` (a C-contiguous float32 array of at least
    ``(r1 - r0) * in`` elements); returns the ``[r1 - r0, in]`` view. ``nib``: uint8 scratch of ``(r1 - r0) * in``
    bytes for int4 (allocated when not given). Values equal :func:`edgespool.kernels.quant.dequantize` exactly
    (the scheme object of :mod:`edgespool.runtime.bundle.schemes` does the work)."""
    stored_rows = getattr(w, "stored_rows", None)
    if stored_rows is not None:  # a weight repacked for the C block kernels (kernels/block_pack.py): stored bytes back
        w, r0, r1 = stored_rows(r0, r1), 0, r1 - r0
    return get_scheme(w.scheme).dequantize_rows_into(w, r0, r1, out, nib)


def _f32(x: np.ndarray, w: QTensor) -> np.ndarray:
    return x @ w.data.T


def _blocked(x: np.ndarray, w: QTensor) -> np.ndarray:
    """``x @ dequantize(w).T`` dequantising :data:`BLOCK_BYTES` of rows at a time into the thread's scratch."""
    out_f, inn = int(w.shape[0]), int(w.shape[1])
    x = np.asarray(x, dtype=np.float32)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, inn)
    y = np.empty((x2.shape[0], out_f), dtype=np.float32)
    buf, nib = _scratch()
    step = _rows_per_block(w)
    if step * inn > buf.size:  # one row wider than a block (> 512 Ki inputs): a temporary of one row
        buf, nib = np.empty(inn, dtype=np.float32), np.empty(inn, dtype=np.uint8)
    # Small products (decode GEMVs, short prompt chunks; dominated by the dequantisation) run on one BLAS thread:
    # waking BLAS worker threads costs more than the multiply, and on a loaded or oversubscribed board their
    # spin-waits slow the whole step down many times over (measured, dense 217 MiB int8 model, load ~2 on 2
    # cores: 16-token prefill 0.9-1.5 s with 2 threads vs 0.165 s with one; decode 85 vs 93+ ms even when idle).
    # Larger prompt chunks keep BLAS's threads (64 tokens: 0.23 s with 2 threads when the machine is quiet).
    single = x2.shape[0] <= SINGLE_THREAD_ROWS and _blas_threads_fn()
    old = single(1) if single else 0
    try:
        for r0 in range(0, out_f, step):
            r1 = min(out_f, r0 + step)
            wb = dequantize_rows_into(w, r0, r1, buf, nib)
            np.matmul(x2, wb.T, out=y[:, r0:r1])
    finally:
        if single:
            single(old)
    return y.reshape(*lead, out_f)


# scheme -> numpy reference kernel computing x @ W.T for a 2-D weight (read-only: a model's own kernels live in its
# KernelTable, edgespool.kernels.table)
# every scheme of the registry (runtime/bundle/schemes.py): f32 as stored, the rest dequantised in row blocks
REFERENCE_KERNELS: Mapping[str, LinearKernel] = MappingProxyType(
    {name: (_f32 if name == "f32" else _blocked) for name in SCHEMES})


def apply_linear(kernels: Mapping[str, LinearKernel], x: np.ndarray, w: QTensor,
                 bias: QTensor | np.ndarray | None = None) -> np.ndarray:
    """``x @ W.T + bias`` through ``kernels[w.scheme]`` (see :func:`linear`); ValueError for a scheme it lacks."""
    try:
        kernel = kernels[w.scheme]
    except KeyError:
        raise ValueError(f"no linear kernel for weight scheme {w.scheme!r}; known: {', '.join(kernels)}") from None
    y = kernel(x, w)
    if bias is not None:
        y = y + (bias.dequantize() if isinstance(bias, QTensor) else bias)
    return y


def linear(x: np.ndarray, w: QTensor, bias: QTensor | np.ndarray | None = None) -> np.ndarray:
    """``x @ W.T + bias`` in float32 with the numpy reference kernels (what
    :data:`edgespool.kernels.table.REFERENCE` ``.linear`` computes). ``x`` is ``[..., in]`` float32, ``w`` a 2-D
    :class:`QTensor` of logical shape ``[out, in]``, ``bias`` an optional ``[out]`` vector (array or QTensor).
    Returns ``[..., out]`` float32."""
    return apply_linear(REFERENCE_KERNELS, x, w, bias)
