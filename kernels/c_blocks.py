"""Block-quantised linear kernels in C (``kernels/c_src/blockdot.c``): ggml's block formats as stored (q8_0, q4_0,
q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k) and edgespool's int8 / int4 (g32), with llama.cpp's numerics (activations rounded to
32-value int8 blocks, integer block dots), multi-threaded over output rows by a persistent pthread pool.

One small shared library per target (~25-70 KB), compiled at export time by the target's C compiler (gcc, or the
aarch64 cross gcc) with the target's ISA flags, shipped in the bundle's ``kernels/`` folder and loaded with ctypes
(no TVM runtime needed; ctypes drops the GIL during a call). :func:`compile_library` builds one (cached by source
hash + flags); :class:`BlockKernels` loads one and serves a :class:`~edgespool.kernels.table.KernelTable`.

Thread count: ``threads`` argument, else ``$EDGESPOOL_THREADS``, else ``$TVM_NUM_THREADS``, else the cores this
process may run on (``sched_getaffinity``).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, TargetError
from . import block_pack
from .attention import compiled_kv_span
from .block_pack import PackedQTensor
from .quant import QTensor
from .table import REFERENCE, KernelTable, RoutedLinear

SOURCE = Path(__file__).with_name("c_src") / "blockdot.c"
# for a library whose SiLU x up is scalar tanhf (before 2026-12-07; no es_silu_poly): below this many threads it
# stays in numpy (its vectorised tanh beats one core of scalar tanhf); the polynomial one runs from 1 thread
SILU_MIN_THREADS = 4
LIBRARY_NAME = "blockdot.so"

# scheme -> weight-type code of blockdot.c, values per block
SCHEME_CODES: dict[str, tuple[int, int]] = {
    "q8_0": (0, 32), "q4_0": (1, 32), "q4_1": (2, 32), "q5_0": (3, 32), "q4_k": (4, 256), "q5_k": (5, 256),
    "q6_k": (6, 256), "int8": (7, 32), "int4": (8, 32), "q5_1": (9, 32), "q3_k": (10, 256), "q2_k": (11, 256),
}

# LLVM mcpu names gcc 12 does not know -> equivalent gcc flags
_GCC_MCPU = {"znver4": ["-march=znver3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni",
                        "-mavx512cd", "-mavx512bf16", "-mavx512vbmi", "-mavx512vbmi2", "-mavx512bitalg",
                        "-mavx512vpopcntdq", "-mavx512ifma", "-mgfni", "-mvpclmulqdq", "-mvaes"]}


def gcc_flags(tvm_target: dict[str, Any]) -> list[str]:
    """gcc ISA flags equivalent to a target's TVM/LLVM target dict (``mtriple``, ``mcpu``, ``mattr``)."""
    triple = str(tvm_target.get("mtriple", ""))
    mcpu = str(tvm_target.get("mcpu", "") or "")
    if triple.startswith("aarch64"):
        flags = [f"-mcpu={mcpu}"] if mcpu else ["-march=armv8-a"]
        if "+dotprod" in tvm_target.get("mattr", []) and mcpu in ("", "cortex-a72", "cortex-a57", "cortex-a53"):
            flags = ["-march=armv8.2-a+dotprod"]
        return flags
    if mcpu in _GCC_MCPU:
        return list(_GCC_MCPU[mcpu])
    return [f"-march={mcpu or 'x86-64-v3'}"]


def compile_library(tvm_target: dict[str, Any], out_path: str | Path, cc: str | None = None,
                    cache_dir: Path | None = None) -> dict[str, Any]:
    """Compile ``blockdot.c`` for ``tvm_target`` with ``cc`` (default ``gcc``) into ``out_path``; returns the
    manifest record (file, flags, cc, bytes, cached). A cache keyed by source + flags + compiler skips rebuilds."""
    cc = cc or "gcc"
    if shutil.which(cc) is None:
        raise TargetError(f"C compiler {cc!r} not found: it builds the block kernels for this target")
    flags = ["-O3", "-fPIC", "-shared", "-pthread", *gcc_flags(tvm_target)]
    src = b"".join(p.read_bytes() for p in sorted(SOURCE.parent.glob("*.[ch]")))  # blockdot.c + its headers
    key = hashlib.sha256(src + repr((cc, flags)).encode()).hexdigest()[:16]
    cache = Path(cache_dir or os.environ.get("EDGESPOOL_KERNEL_CACHE") or Path.home() / ".cache/edgespool/kernels")
    cached_lib = cache / f"blockdot-{key}.so"
    hit = cached_lib.exists()
    if not hit:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as td:
            tmp = Path(td) / "b.so"
            p = subprocess.run([cc, *flags, "-o", str(tmp), str(SOURCE), "-lm"], capture_output=True, text=True,
                               check=False)
            if p.returncode:
                lines = p.stderr.strip().splitlines()
                first = next((ln for ln in lines if "error" in ln), lines[-1] if lines else f"exit {p.returncode}")
                raise TargetError(f"compiling {SOURCE.name} with {cc} {' '.join(flags)} failed: {first.strip()}")
            os.replace(tmp, cached_lib)
    out = Path(out_path)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.copyfile(cached_lib, tmp)
    os.replace(tmp, out)
    return {"kind": "c", "file": out.name, "cc": cc, "flags": flags, "nbytes": out.stat().st_size, "cached": hit,
            "schemes": sorted(SCHEME_CODES)}


def default_threads() -> int:
    """Threads the kernels use when not told: $EDGESPOOL_THREADS, else $TVM_NUM_THREADS, else usable cores."""
    for var in ("EDGESPOOL_THREADS", "TVM_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class BlockKernels:
    """A loaded ``blockdot.so``: :meth:`linear` for every scheme of :data:`SCHEME_CODES` (int4 only with group
    size 32), ``threads`` worker threads (the calling thread is one of them)."""

    def __init__(self, library: str | Path, threads: int | None = None):
        path = Path(library)
        if not path.exists():
            raise BundleError(f"block kernel library {path} does not exist")
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise BundleError(f"cannot load block kernel library {path}: {e}") from None
        lib.es_pool_new.restype, lib.es_pool_new.argtypes = ctypes.c_void_p, [ctypes.c_int]
        lib.es_pool_free.restype, lib.es_pool_free.argtypes = None, [ctypes.c_void_p]
        lib.es_isa.restype = ctypes.c_char_p
        lib.es_act_bytes.restype, lib.es_act_bytes.argtypes = ctypes.c_long, [ctypes.c_int, ctypes.c_int]
        vp, lg, it = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
        lib.es_linear.restype = ctypes.c_int
        lib.es_linear.argtypes = [vp, it, vp, lg, vp, lg, it, it, vp, it, vp, vp, it]
        # libraries built before the packed layout existed (older bundles) have no packing entry points
        self.can_pack = block_pack.declare(lib)
        self._lib = lib
        self.path = path
        self.packed = 0  # weights repacked by prepare_weight
        self.packed_s = 0.0  # seconds spent repacking
        self.threads = int(threads or default_threads())
        self._pool = lib.es_pool_new(self.threads)
        self.isa = lib.es_isa().decode()
        self.calls = 0
        self.fallbacks: dict[str, int] = {}
        self._tls = threading.local()
        self._fn = lib.es_linear
        # fused dispatch of several packed weights of one input (libraries before 2026-12-03 have none)
        self._multi = getattr(lib, "es_linear_packed_multi", None)
        if self._multi is not None:
            self._multi.restype = ctypes.c_int
            self._multi.argtypes = [vp, it, vp, vp, vp, it, vp, it, vp, vp, it]
        # threaded prefill attention and SiLU x up (libraries before 2026-12-04 have neither)
        self._attn = getattr(lib, "es_attention_prefill", None)
        if self._attn is not None:
            self._attn.restype = ctypes.c_int
            self._attn.argtypes = [vp, vp, vp, lg, vp, lg, vp, it, it, it, it, it, ctypes.c_float, it, it, it]
        self._silu = getattr(lib, "es_silu_mul", None)
        self.silu_min_threads = 1 if hasattr(lib, "es_silu_poly") else SILU_MIN_THREADS
        if self._silu is not None:
            self._silu.restype = None
            self._silu.argtypes = [vp, vp, vp, vp, lg, it]
        self._rms = getattr(lib, "es_rmsnorm_rows", None)  # threaded RMSNorm rows (libraries before 2026-12-07: none)
        if self._rms is not None:
            self._rms.restype = ctypes.c_int
            self._rms.argtypes = [vp, vp, vp, vp, lg, it, ctypes.c_float, it]
        self._rope = getattr(lib, "es_rope", None)  # threaded in-place RoPE (libraries before 2026-12-07: none)
        if self._rope is not None:
            self._rope.restype = ctypes.c_int
            self._rope.argtypes = [vp, vp, vp, vp, it, it, it, it]
        # per-format decode tile form, one stream or four interleaved (libraries before 2026-12-08: one stream)
        self._dform = getattr(lib, "es_pool_decode_form", None)
        if self._dform is not None:
            self._dform.restype, self._dform.argtypes = it, [vp, it, it]
        self.decode_forms: dict[str, dict[str, Any]] | None = None  # choose_decode_forms' record, once chosen
        from .decode_form import requested

        requested()  # a bad $EDGESPOOL_DECODE_FORM is named at load, not after the first decode token

    @property
    def has_decode_forms(self) -> bool:
        """Whether this library's packed decode tiles have the two forms (:mod:`~edgespool.kernels.decode_form`)."""
        return self._dform is not None and bool(self._pool) and self.can_pack

    def decode_form(self, scheme: str, form: int = 0) -> int:
        """The packed decode tiles' form for ``scheme``: 1 (one row-group stream a tile) or 4 (a call's four row
        groups interleaved); ``form`` 1 or 4 sets it first (bit-identical results either way)."""
        code = SCHEME_CODES.get(scheme)
        if code is None or not self.has_decode_forms:
            return 1
        if form not in (0, 1, 4):
            raise ValueError(f"decode form {form}: 1 or 4")
        return int(self._dform(self._pool, code[0], form))

    def choose_decode_forms(self, weights: Any) -> dict[str, dict[str, Any]]:
        """Once: pick each packed format's faster decode form on this host from ``weights`` (a model's resident
        tensors; :func:`edgespool.kernels.decode_form.choose`); later calls return the first record."""
        if self.decode_forms is None:
            from . import decode_form

            self.decode_forms = decode_form.choose(self, weights)
        return self.decode_forms

    def close(self) -> None:
        """Stop the worker threads (the library stays loaded)."""
        if self._pool:
            self._lib.es_pool_free(self._pool)
            self._pool = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order
        with contextlib.suppress(AttributeError, TypeError):  # half-built object, or modules already torn down
            self.close()

    def _scratch(self, nbytes: int) -> int:
        """The address of this thread's activation scratch of at least ``nbytes`` (8-byte aligned)."""
        tls = self._tls
        buf = getattr(tls, "buf", None)
        if buf is None or buf.nbytes < nbytes:
            buf = tls.buf = np.empty(max(nbytes, 1 << 16) // 8 + 1, np.float64)
            tls.ptr = int(buf.ctypes.data)
        return tls.ptr

    def prepare_weight(self, w: QTensor) -> QTensor:
        """``w`` repacked into the kernels' x16 layout (a :class:`~edgespool.kernels.block_pack.PackedQTensor`)
        when this library computes from it (q8_0 / q4_0 / int8 / int4 g32 on AVX-512 VNNI builds), else ``w``.
        For resident weights: the caller drops the stored-layout copy."""
        code = SCHEME_CODES.get(w.scheme)
        if code is None or not self.can_pack or not self.fits(w):
            return w
        import time

        t0 = time.perf_counter()
        p = block_pack.pack(self._lib, code[0], w)
        if p is None:
            return w
        self.packed += 1
        self.packed_s += time.perf_counter() - t0
        return p

    def fits(self, w: QTensor) -> bool:
        """Whether a kernel here serves weight ``w``."""
        code = SCHEME_CODES.get(w.scheme)
        if code is None or len(w.shape) != 2 or int(w.shape[1]) % code[1]:
            return False
        return w.scheme != "int4" or w.group_size == 32

    def linear(self, x: np.ndarray, w: QTensor) -> np.ndarray | None:
        """``x @ W.T`` (``x [..., in]`` float32) or None when no kernel fits ``w`` (counted in ``fallbacks``)."""
        if type(w) is PackedQTensor:  # packed by prepare_weight, so a kernel fits: the decode fast path
            rows, n = w.shape
            rows, n = int(rows), int(n)
            if x.shape[-1] == n:
                if x.dtype != np.float32 or not x.flags.c_contiguous:
                    x = np.ascontiguousarray(x, dtype=np.float32)
                m = x.size // n
                y = np.empty((*x.shape[:-1], rows), np.float32)
                rc = self._lib.es_linear_packed(self._pool, w.code, w.ptr, rows, n, x.ctypes.data, m, y.ctypes.data,
                                                self._scratch(m * (n + (n // 32) * 16)), self.threads)
                if rc:  # this library has no packed kernel (another build packed it): the stored layout's kernel
                    return self.linear(x, w.stored_rows(0, rows))
                self.calls += 1
                return y
        if not self.fits(w) or x.shape[-1] != w.shape[1]:
            why = f"no block kernel for {w.scheme} {tuple(w.shape)} (group {w.group_size})"
            self.fallbacks[why] = self.fallbacks.get(why, 0) + 1
            return None
        rows, n = int(w.shape[0]), int(w.shape[1])
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=np.float32)
        m = x.size // n
        y = np.empty((*x.shape[:-1], rows), np.float32)
        data = w.data
        sc, scb = None, 0
        if w.scheme == "int8":
            sc, scb = w.scale, 4
        elif w.scheme == "int4":
            sc, scb = w.scale, 2 * (n // 32)
        scratch = self._scratch(int(self._lib.es_act_bytes(n, m)))
        rc = self._fn(self._pool, SCHEME_CODES[w.scheme][0], data.ctypes.data, data.strides[0],
                      None if sc is None else sc.ctypes.data, scb, rows, n, x.ctypes.data, m, y.ctypes.data,
                      scratch, self.threads)
        if rc:
            raise BundleError(f"block kernel refused {w.scheme} {tuple(w.shape)}")
        self.calls += 1
        return y

    def linear_multi(self, x: np.ndarray, ws: list[QTensor]) -> list[np.ndarray] | None:
        """``[x @ W.T for W in ws]`` in one pool dispatch (x rounded once; q / k / v or gate / up of a layer), each
        result bit-identical to :meth:`linear` of that weight alone; None unless every weight is packed for this
        library (2 to 4 of them, one input width) and the library has the fused entry point."""
        k = len(ws)
        if self._multi is None or not 2 <= k <= 4 or any(type(w) is not PackedQTensor or w.lib is not self._lib
                                                          for w in ws):
            return None
        n = int(ws[0].shape[1])
        if x.shape[-1] != n or any(int(w.shape[1]) != n for w in ws):
            return None
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=np.float32)
        m = x.size // n
        ys = [np.empty((*x.shape[:-1], int(w.shape[0])), np.float32) for w in ws]
        arr = self._tls.multi = getattr(self._tls, "multi", None) or (
            (ctypes.c_int * 4)(), (ctypes.c_void_p * 4)(), (ctypes.c_int * 4)(), (ctypes.c_void_p * 4)())
        wt, ptr, rows, yp = arr
        for i, (w, y) in enumerate(zip(ws, ys)):
            wt[i], ptr[i], rows[i], yp[i] = w.code, w.ptr, int(w.shape[0]), y.ctypes.data
        scratch = self._scratch(m * (n + (n // 32) * 16) + k * m * (n // 32) * 4)  # es_multi_act_bytes
        if self._multi(self._pool, k, wt, ptr, rows, n, x.ctypes.data, m, yp, scratch, self.threads):
            return None
        self.calls += k
        return ys

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
                  sliding_window: int | None = None, scale: float | None = None) -> np.ndarray | None:
        """Causal GQA like :func:`edgespool.kernels.attention.attention` for prefill AND decode, split over this
        pool's threads in (query row, KV head) items. Decode runs it too (not TVM's decode kernel): a query row's
        result must not depend on whether it came in a prompt chunk or alone (a prompt re-fed after a cached
        prefix, speculative verification, chunked prefill), because int8 activation rounding in later layers turns
        the two kernels' ~1e-7 summation-order differences into other tokens. None when it does not fit (float32
        KV-cache rows required, consecutive positions, a library without the entry)."""
        T, nh, D = q.shape
        nkv, S = int(k.shape[0]), int(k.shape[1])
        if (self._attn is None or T < 1 or S == 0 or nh % nkv or k.shape != v.shape or k.dtype != np.float32
                or v.dtype != np.float32 or k.strides[2] != 4 or k.strides[1] != 4 * D or v.strides[2] != 4
                or v.strides[1] != 4 * D or k.strides[0] % 4 or v.strides[0] % 4):
            return None
        span = compiled_kv_span(q_pos, k_pos, T, S, sliding_window)
        if span is None:
            return None
        past, w = span
        if q.dtype != np.float32 or not q.flags.c_contiguous:
            q = np.ascontiguousarray(q, dtype=np.float32)
        out = np.empty((T, nh, D), np.float32)
        sc = float(np.float32(D ** -0.5 if scale is None else scale))
        rc = self._attn(self._pool, q.ctypes.data, k.ctypes.data, k.strides[0] // 4, v.ctypes.data,
                        v.strides[0] // 4, out.ctypes.data, T, nh, nkv, D, S, sc, past, w, self.threads)
        return out if rc == 0 else None

    def silu_mul(self, g: np.ndarray, u: np.ndarray, *, in_place: bool = False) -> np.ndarray | None:
        """``silu(g) * u`` (float32, same shape) split over this pool's threads: the library's vectorised
        polynomial (within ~3e-7 of float64; an older library's C ``tanhf`` form of
        :func:`edgespool.kernels.swiglu.silu`); ``in_place``: written over ``g`` (the caller's own gate output: no
        fresh pages). None when the library has no entry, the arrays differ in shape, are not C-contiguous float32,
        or (an old library's scalar ``tanhf``) fewer than :data:`SILU_MIN_THREADS` threads would do it."""
        if (self._silu is None or self.threads < self.silu_min_threads or g.shape != u.shape or g.dtype != np.float32
                or u.dtype != np.float32 or not g.flags.c_contiguous or not u.flags.c_contiguous
                or not 0 < g.size < 2 ** 31):
            return None
        out = g if in_place and g.flags.writeable else np.empty_like(g)
        self._silu(self._pool, g.ctypes.data, u.ctypes.data, out.ctypes.data, g.size, self.threads)
        return out

    def rmsnorm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray | None:
        """:func:`edgespool.kernels.rmsnorm.rmsnorm` of ``x`` (``[..., H]`` float32, C-contiguous) with ``weight``
        ``[H]``, bit-identical (numpy's pairwise sum), rows split over this pool's threads; None when the library
        has no entry or the arrays do not fit (the caller then uses numpy)."""
        if (self._rms is None or x.dtype != np.float32 or not x.flags.c_contiguous or x.ndim < 1 or x.size == 0
                or weight.dtype != np.float32 or weight.shape != (x.shape[-1],) or not weight.flags.c_contiguous):
            return None
        n = x.shape[-1]
        out = np.empty_like(x)
        if self._rms(self._pool, x.ctypes.data, weight.ctypes.data, out.ctypes.data, x.size // n, n, eps,
                     self.threads):
            return None
        return out

    def rope(self, xs: list[np.ndarray], cos: np.ndarray, sin: np.ndarray) -> bool:
        """Rotate each ``x`` of ``xs`` (``[T, heads, D]``) in place with tables ``cos`` / ``sin`` ``[T, D]`` as
        :func:`edgespool.kernels.rope.apply_rope` computes it (bit-identical), split over this pool's threads.
        False (nothing touched) when the library has no entry or an array is not C-contiguous float32 of
        matching shapes: the caller then uses numpy."""
        if self._rope is None or cos.shape != sin.shape or cos.ndim != 2:
            return False
        for a in (cos, sin, *xs):
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                return False
        T, D = cos.shape
        if any(x.ndim != 3 or x.shape[0] != T or x.shape[2] != D or not x.flags.writeable for x in xs):
            return False
        for x in xs:
            if self._rope(self._pool, x.ctypes.data, cos.ctypes.data, sin.ctypes.data, T, x.shape[1], D,
                          self.threads) != 0:
                return False  # only for a head size the C rows cannot hold, checked before any x is touched
        return True

    def table(self, base: KernelTable = REFERENCE, description: str | None = None) -> KernelTable:
        """``base`` with every scheme of :data:`SCHEME_CODES` (and every other ggml quantisation ``base`` has)
        routed through these kernels (``base``'s kernel for a weight none fits, e.g. int4 with another group size,
        or an IQ format: counted in :attr:`fallbacks`)."""
        lin = dict(base.linear_kernels)
        for scheme in lin:
            # the block schemes, and every other quantised one too, so a format without a C kernel here (e.g. IQ4_XS)
            # is counted in ``fallbacks`` ("no block kernel for ...") where the bench shows it, not silently numpy
            if scheme in SCHEME_CODES or scheme.startswith(("q", "iq")):
                lin[scheme] = RoutedLinear(self, lin[scheme])
        desc = description or f"C block kernels ({self.isa}, {self.threads} threads)"
        attn = base.attention_kernel
        if self._attn is not None:
            attn = PrefillFirst(self.attention, attn)
        return base.replace(linear_kernels=lin, attention_kernel=attn, description=desc, backend=self)


class PrefillFirst:
    """An attention kernel: ``first`` (the block kernels' threaded prefill attention), then ``then`` (the base
    table's compiled attention, e.g. TVM's decode kernel) when ``first`` returns None; None when neither fits
    (the numpy reference then runs)."""

    def __init__(self, first: Any, then: Any):
        self.first, self.then = first, then

    def __call__(self, *args: Any) -> np.ndarray | None:
        out = self.first(*args)
        if out is None and self.then is not None:
            out = self.then(*args)
        return out


def host_library(cache_dir: Path | None = None) -> Path:
    """``blockdot.so`` compiled for this machine (in the kernel cache), e.g. for tests and benchmarks."""
    from ..targets import get_target

    tgt = get_target("host").tvm_target
    d = Path(cache_dir or os.environ.get("EDGESPOOL_KERNEL_CACHE") or Path.home() / ".cache/edgespool/kernels")
    d.mkdir(parents=True, exist_ok=True)
    out = d / f"host-{hashlib.sha256(repr(sorted(tgt.items())).encode()).hexdigest()[:8]}-{LIBRARY_NAME}"
    compile_library(tgt, out, cache_dir=cache_dir)
    return out


def bundle_table(kernels_dir: str | Path, section: dict[str, Any], base: KernelTable | None,
                 target: str = "?", threads: int | None = None) -> KernelTable | None:
    """``base`` (the bundle's TVM table, or the numpy reference when None) with the bundle's C block kernels
    (``section["block"]``, the kernels manifest section) over it, or None when the bundle has none. The caller
    has checked that the section's target fits this CPU. ``threads``: the kernels' worker threads (default
    :func:`default_threads`)."""
    rec = section.get("block")
    if not rec:
        return None
    kern = BlockKernels(Path(kernels_dir) / rec["file"], threads)
    base = base if base is not None else REFERENCE
    desc = f"C block kernels from the bundle ({kern.isa}, {kern.threads} threads, for {target})"
    if base is not REFERENCE:
        desc += f" + {base.description}"
    return kern.table(base, desc)
