"""Run TVM-compiled linear kernels on a QTensor's numpy buffers, zero-copy; ``None`` means "use numpy".

Loading needs only a TVM *runtime*: either the full ``apache-tvm`` package, or the small ``apache-tvm-ffi``
package plus ``libtvm_runtime.so`` (3.3 MB; the compiled kernels call its thread pool and workspace allocator).
:func:`load_kernel_library` tries them in that order; ``$EDGESPOOL_TVM_RUNTIME`` may name the runtime library.

Arrays are handed to the kernels through DLPack without copies: numpy arrays go straight into the TVM FFI call
(the kernels are compiled for 4-byte alignment, so any numpy address works). DLPack 0.x cannot export read-only
arrays (a weights file memory-mapped read-only), so those are passed through a writable alias of the same memory
(the kernels never write weights). Only activations are ever copied: ``x`` when it is not float32 C-contiguous, and
row padding when a batch is not a multiple of the gemm row tile.
"""
from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import platform
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, TargetError
from .attention import compiled_kv_span
from .quant import SCHEMES, QTensor, get_scheme
from .table import REFERENCE, KernelTable, RoutedLinear
from .tvm_attention import AttentionSpec
from .tvm_build import LinearSpec

log = logging.getLogger("edgespool.kernels")

KERNELS_MANIFEST = "kernels.json"


def _runtime_library_candidates() -> list[Path]:
    out = []
    env = os.environ.get("EDGESPOOL_TVM_RUNTIME")
    if env:
        out.append(Path(env))
    try:
        import importlib.util

        spec = importlib.util.find_spec("tvm")
        if spec and spec.submodule_search_locations:
            out.append(Path(list(spec.submodule_search_locations)[0]) / "lib" / "libtvm_runtime.so")
    except (ImportError, ValueError):  # pragma: no cover
        pass
    return out


@functools.cache
def runtime_kind() -> str:
    """Make a TVM runtime available and say which: ``"tvm"`` (full package) or ``"tvm_ffi+libtvm_runtime"``
    (loading a runtime library is process-wide, so the answer is computed once; a failure is not cached)."""
    # Prefer the light runtime (tvm_ffi + libtvm_runtime.so, ~15 MB) over the full compiler package (~450 MB RSS);
    # fall back to `import tvm` when only the full package can provide the runtime library.
    try:
        _import_without_torch("tvm_ffi")
        for lib in _runtime_library_candidates():
            if lib.exists():
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                return "tvm_ffi+libtvm_runtime"
    except ImportError:
        pass
    try:
        _import_without_torch("tvm")
        return "tvm"
    except ImportError as e:
        raise TargetError("running TVM kernels needs apache-tvm-ffi (pip install apache-tvm-ffi) plus "
                          f"libtvm_runtime.so (EDGESPOOL_TVM_RUNTIME), or apache-tvm (import tvm: {e})") from e


def _import_without_torch(name: str):
    """Import ``name`` while hiding torch: tvm_ffi imports torch eagerly when it is installed (hundreds of MB of
    RSS on a device), and the kernels never use it. A torch the application already imported is left alone."""
    import importlib
    import sys

    if "torch" in sys.modules:
        return importlib.import_module(name)
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        return importlib.import_module(name)
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


def load_kernel_library(path: str | Path):
    """Load a compiled kernel library (``.so``) with whichever TVM runtime is available."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"kernel library {path} does not exist")
    kind = runtime_kind()
    if kind == "tvm":
        import tvm

        return tvm.runtime.load_module(str(path))
    import tvm_ffi

    return tvm_ffi.load_module(str(path))


def _writable_alias(a: np.ndarray) -> np.ndarray:
    """``a`` itself when writable, else a writable array over the same memory (no copy)."""
    if a.flags.writeable:
        return a
    buf = (ctypes.c_char * a.nbytes).from_address(a.ctypes.data)
    alias = np.frombuffer(buf, dtype=a.dtype).reshape(a.shape)
    return alias


def _key(scheme: str, out_f: int, in_f: int, group: int, batch: str, act: str = "f32") -> tuple:
    return (scheme, out_f, in_f, get_scheme(scheme).group_size(group), batch, act)


def quantize_activations_q8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """numpy version of the q8 kernel's activation rounding (the library's ``<name>_prep`` function does the same
    in ~1 us): Q8_0 blocks of 32 (d = max|x|/127, q = round-half-even(x/d)); returns ``xlo``/``xhi`` (codes
    0..15 / 16..31 of each block), ``off`` (8 x the sum of the 8 codes each int32 lane of the kernel sees) and
    ``dxl`` (each lane's block scale)."""
    b = x.reshape(-1, 32)
    d = np.abs(b).max(axis=1) / np.float32(127)
    q = np.rint(np.divide(b, d[:, None], out=np.zeros_like(b), where=d[:, None] > 0)).astype(np.int8)
    xlo = np.ascontiguousarray(q[:, :16]).reshape(-1)
    xhi = np.ascontiguousarray(q[:, 16:]).reshape(-1)
    off = (xlo.reshape(-1, 4).astype(np.int32).sum(1) + xhi.reshape(-1, 4).astype(np.int32).sum(1)) * 8
    dxl = np.repeat(d.astype(np.float32), 4)
    return xlo, xhi, off.astype(np.int32), dxl


@functools.cache
def _q8_scratch_factory(scheme: str, in_f: int):
    """A (shared, hashable: one per ``(scheme, in_f)``) function making the activation buffers the q8 prep kernel
    of ``scheme`` fills for an input width ``in_f``: int4 ``xlo, xhi, off, dxl``; int8 ``xq, dxl, c``."""
    if scheme == "int4":
        def make() -> list[np.ndarray]:
            return [np.empty(in_f // 2, np.int8), np.empty(in_f // 2, np.int8), np.empty(in_f // 8, np.int32),
                    np.empty(in_f // 8, np.float32)]
    else:
        def make() -> list[np.ndarray]:
            return [np.empty(in_f, np.int8), np.empty(in_f // 4, np.float32), np.empty(1, np.float32)]
    return make


class TvmKernels:
    """A set of loaded linear kernels; :meth:`linear` picks the one that fits or returns None (and logs why)."""

    # Above this many rows (prefill) the numpy reference (dequantise row blocks once, then BLAS) is faster than
    # the TVM gemm, whose per-row cost is constant: measured crossover 16-37 rows (4096x4096 int4: 12 vs 22 ms at
    # 16 rows, 29 vs 17 ms at 37 rows).
    max_gemm_rows = 16
    # The q8 GEMV, row after row, beats both the f32 gemm and the numpy path at every prompt length measured
    # (hidden-1024 int8 model, one thread, all linears of a step: 32 rows 112 ms vs 217 gemm / 214 numpy; int4
    # 94 vs 256 / 255; the weight matrix stays in cache for rows 2..m): used up to this many rows
    max_q8_rows = 1 << 16

    def __init__(self, libraries: Iterable[tuple[LinearSpec, str | Path]]):
        self._fns: dict[tuple, tuple[LinearSpec, Any]] = {}
        self._mods: list[Any] = []
        for spec, path in libraries:
            mod = load_kernel_library(path)
            self._mods.append(mod)
            fn = mod[spec.name]
            if spec.act == "q8":  # the activation rounding kernel travels in the same library
                fn = (fn, mod[spec.name + "_prep"])
            self._fns[_key(spec.scheme, spec.out_features, spec.in_features, spec.group_size, spec.batch,
                           spec.act)] = (spec, fn)
        # (scheme, out, in, group) -> (gemv, prep, scratch factory) of the loaded q8-activation GEMVs
        self._q8: dict[tuple, tuple[Any, Any, Any]] = {}
        for (scheme, out_f, in_f, g, batch, act), (spec, fn) in self._fns.items():
            if act == "q8":
                self._q8[(scheme, out_f, in_f, g)] = (*fn, _q8_scratch_factory(scheme, in_f))
        self._tls = threading.local()
        self.fallbacks: dict[str, int] = {}  # reason -> count
        self.calls = 0
        # use a loaded q8-activation kernel for 1..4 rows (False: the float-activation kernels only)
        self.prefer_q8 = True
        # compiled attention (kernels.json "attention" list), the attention kernel of the table() it builds
        self.attention: TvmAttention | None = None

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def for_host(cls, specs: Iterable[LinearSpec], cache_dir: Path | None = None) -> TvmKernels:
        """Compile (or take from the cache) ``specs`` for this machine and load them."""
        from ..targets import get_target
        from .tvm_cache import compile_kernel

        target = get_target("host").tvm_target
        return cls((s, compile_kernel(s, target, cache_dir=cache_dir).path) for s in specs)

    @classmethod
    def from_dir(cls, kernels_dir: str | Path) -> TvmKernels:
        """Load the kernels a bundle carries (``kernels_dir/kernels.json`` written by the kernels exporter)."""
        d = Path(kernels_dir)
        mf = d / KERNELS_MANIFEST
        if not mf.exists():
            raise BundleError(f"{mf} is missing: the bundle has no compiled kernels")
        meta = json.loads(mf.read_text())
        triple = str(meta.get("triple", ""))
        machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
        if triple and not triple.startswith(machine):
            log.warning("bundle kernels are for %s, this machine is %s: every linear falls back to numpy",
                        triple, machine)
            kern = cls([])
            kern.fallbacks[f"kernels built for {triple}, running on {machine}"] = 0
            return kern
        libs = [(LinearSpec.from_dict(k["spec"]), d / k["file"]) for k in meta.get("kernels", [])
                if k.get("kind", "so") == "so"]
        kern = cls(libs)
        attn = [(AttentionSpec.from_dict(k["spec"]), d / k["file"]) for k in meta.get("attention", [])
                if k.get("kind") == "so"]
        if attn:
            kern.attention = TvmAttention(attn)
        return kern

    @property
    def specs(self) -> list[LinearSpec]:
        return [s for s, _ in self._fns.values()]

    # -- dispatch -----------------------------------------------------------------------------------------------
    def _fallback(self, reason: str) -> None:
        if reason not in self.fallbacks:
            log.info("TVM kernel fallback to numpy: %s", reason)
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1

    def linear(self, x: np.ndarray, w: QTensor, bias: np.ndarray | None = None) -> np.ndarray | None:
        """y = x @ W.T (+ bias) with a compiled kernel; ``x`` is ``[..., in]``. None when no kernel fits (the
        reason is logged once and counted in :attr:`fallbacks`); the caller then uses the numpy reference.
        A loaded q8-activation kernel (int8, int4 g32; AVX-512 VNNI / dotprod) is preferred for up to
        ``max_q8_rows`` rows (decode and prompts, row after row): its result is that of x rounded to Q8_0 blocks
        (llama.cpp's numerics), not of float x."""
        # decode fast path (one float32 row, a q8 GEMV for this weight): the fewest Python steps per call, the
        # activation scratch reused per thread (the full path below costs ~6 us more per call)
        if self.prefer_q8 and x.size == x.shape[-1] and x.dtype == np.float32 and len(w.shape) == 2:
            fast = self._q8.get((w.scheme, w.shape[0], w.shape[1], w.group_size))
            if fast is not None and x.flags.c_contiguous:
                gemv, prep, make = fast
                pool = getattr(self._tls, "bufs", None)
                if pool is None:
                    pool = self._tls.bufs = {}
                bufs = pool.get(make) or pool.setdefault(make, make())
                d = w.data if w.data.flags.writeable else _writable_alias(w.data)
                sc = w.scale if w.scale.flags.writeable else _writable_alias(w.scale)
                y = np.empty((1, w.shape[0]), np.float32)
                prep(x.reshape(-1), *bufs)
                gemv(*bufs, d, sc, y)
                self.calls += 1
                if bias is not None:
                    y += bias
                return y if x.ndim == 2 else y.reshape(*x.shape[:-1], w.shape[0])
        if w.scheme not in ("int8", "int4", "f16") or len(w.shape) != 2:
            self._fallback(f"no kernel for scheme {w.scheme} shape {w.shape}")
            return None
        out_f, in_f = w.shape
        if x.shape[-1] != in_f:
            self._fallback(f"x width {x.shape[-1]} != weight in_features {in_f}")
            return None
        lead = x.shape[:-1]
        m = int(np.prod(lead)) if lead else 1
        batch = "gemv" if m == 1 else "gemm"
        hit = (self._fns.get(_key(w.scheme, out_f, in_f, w.group_size, "gemv", "q8"))
               if m <= self.max_q8_rows and self.prefer_q8 else None)
        if hit is None and m > self.max_gemm_rows:
            self._fallback(f"more than max_gemm_rows={self.max_gemm_rows} rows: numpy dequantise + BLAS is faster")
            return None
        if hit is None:
            hit = self._fns.get(_key(w.scheme, out_f, in_f, w.group_size, batch))
        if hit is None and batch == "gemm" and m <= 4:  # a few rows: gemv per row beats the numpy fallback
            hit = self._fns.get(_key(w.scheme, out_f, in_f, w.group_size, "gemv"))
        if hit is None:
            g = get_scheme(w.scheme).group_size(w.group_size)
            self._fallback(f"no {batch} kernel for {w.scheme}{'g%d' % g if g else ''} "
                           f"[{out_f}, {in_f}]")
            return None
        spec, fn = hit
        x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(m, in_f)
        wd = _writable_alias(w.data)
        args = [wd] + ([_writable_alias(w.scale)] if w.scale is not None else [])
        y = np.empty((m, out_f), np.float32)
        if spec.act == "q8":
            gemv, prep = fn
            act = _q8_scratch_factory(spec.scheme, in_f)()
            for r in range(m):
                prep(x2[r], *act)
                gemv(*act, *args, y[r:r + 1])
        elif spec.batch == "gemv":
            for r in range(m):
                fn(x2[r:r + 1], *args, y[r:r + 1])
        else:
            rt = spec.row_tile
            mp = -(-m // rt) * rt
            if mp != m:
                xp = np.zeros((mp, in_f), np.float32)
                xp[:m] = x2
                yp = np.empty((mp, out_f), np.float32)
                fn(xp.reshape(mp // rt, rt, in_f), *args, yp.reshape(mp // rt, rt, out_f))
                y = yp[:m]
            else:
                fn(x2.reshape(m // rt, rt, in_f), *args, y.reshape(m // rt, rt, out_f))
        self.calls += 1
        if bias is not None:
            y += bias
        return y.reshape(*lead, out_f) if lead else y.reshape(out_f)

    # -- plugging into the engine ---------------------------------------------------------------------------------
    def table(self, base: KernelTable = REFERENCE, description: str | None = None) -> KernelTable:
        """A kernel table for one model: ``base`` (default the numpy :data:`~edgespool.kernels.table.REFERENCE`)
        with int8 / int4 / f16 routed through these kernels, each call falling back to ``base``'s kernel for that
        scheme when no compiled kernel fits, and with the compiled attention when this set carries one (else
        ``base``'s). ``backend`` of the table is this object (its :attr:`calls` / :attr:`fallbacks`)."""
        lin = dict(base.linear_kernels)
        for scheme, spec in SCHEMES.items():  # the schemes compiled kernel families serve (the registry says)
            if spec.kernel_families and scheme in lin:
                lin[scheme] = RoutedLinear(self, lin[scheme])
        attn = self.attention if self.attention is not None else base.attention_kernel
        if description is None:
            description = f"TVM kernels ({len(self.specs)} linear" + (
                f", attention {len(self.attention.specs)})" if self.attention is not None else ")")
        return KernelTable(lin, attn, description, backend=self)


class TvmAttention:
    """Compiled GQA attention (:mod:`.tvm_attention`) with :func:`edgespool.kernels.attention.attention`'s
    signature; returns None (the numpy reference runs) when no loaded kernel fits the call.

    Fits: float32 ``q [T, nh, D]``, ``k``/``v`` ``[nkv, S, D]`` whose rows are contiguous (KV-cache views of any
    row stride are passed without a copy), consecutive ``k_pos`` and ``q_pos`` (the cache's positions; only the
    end points are checked) and a loaded library for (D, nh, nkv). Decode (T = 1) gets the visible key range as a
    view (a sliding window is a start offset); prefill passes the past length and the window to the kernel."""

    # dispatch by size: below this many keys x query rows the numpy reference is used (0: always the kernel;
    # measured faster at every size on znver4, docs/KERNELS.md "Attention kernels")
    min_work = 0

    def __init__(self, libraries: Iterable[tuple[AttentionSpec, str | Path]]):
        self._fns: dict[tuple[int, int, int], tuple[Any, Any]] = {}
        self._mods: list[Any] = []
        for spec, path in libraries:
            mod = load_kernel_library(path)
            self._mods.append(mod)
            dec, pre = spec.functions
            self._fns[(spec.head_dim, spec.n_heads, spec.n_kv_heads)] = (mod[dec], mod[pre])
        self.fallbacks: dict[str, int] = {}
        self.calls = 0

    @classmethod
    def for_host(cls, specs: Iterable[AttentionSpec], cache_dir: Path | None = None) -> TvmAttention:
        """Compile (or take from the cache) ``specs`` for this machine and load them."""
        from ..targets import get_target
        from .tvm_cache import compile_kernel

        target = get_target("host").tvm_target
        return cls((s, compile_kernel(s, target, cache_dir=cache_dir).path) for s in specs)

    @property
    def specs(self) -> list[AttentionSpec]:
        return [AttentionSpec(*k) for k in self._fns]

    def _fallback(self, reason: str) -> None:
        if reason not in self.fallbacks:
            log.info("TVM attention fallback to numpy: %s", reason)
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
                 sliding_window: int | None = None, scale: float | None = None) -> np.ndarray | None:
        """Causal GQA like :func:`edgespool.kernels.attention.attention`, or None when no kernel fits."""
        T, nh, D = q.shape
        nkv, S = k.shape[0], k.shape[1]
        fns = self._fns.get((D, nh, nkv))
        if fns is None:
            self._fallback(f"no attention kernel for head_dim {D}, {nh} heads, {nkv} KV heads")
            return None
        if (S == 0 or T * S < self.min_work or k.dtype != np.float32 or v.dtype != np.float32
                or k.strides[2] != 4 or k.strides[1] != 4 * D or v.strides[2] != 4 or v.strides[1] != 4 * D
                or k.shape != v.shape):
            self._fallback("attention arguments not float32 KV-cache rows (or below min_work)")
            return None
        span = compiled_kv_span(q_pos, k_pos, T, S, sliding_window)
        if span is None:
            self._fallback("attention positions not consecutive, or a query that sees no key")
            return None
        past, w = span
        sc = np.float32(D ** -0.5 if scale is None else scale)
        if q.dtype != np.float32 or not q.flags.c_contiguous:
            q = np.ascontiguousarray(q, dtype=np.float32)
        out = np.empty((T, nh, D), np.float32)
        if T == 1:
            hi = min(S, past + 1)
            lo = max(0, past + 1 - w) if w else 0
            if lo or hi != S:
                k, v = k[:, lo:hi], v[:, lo:hi]
            fns[0](q, k, v, out, sc)
        else:
            fns[1](q, k, v, out, sc, past, w)
        self.calls += 1
        return out

    def table(self, base: KernelTable = REFERENCE, description: str | None = None) -> KernelTable:
        """``base`` (default the numpy :data:`~edgespool.kernels.table.REFERENCE`) with only the attention kernel
        replaced by this one (linear kernels unchanged), e.g. to benchmark or test the attention kernel alone."""
        return base.replace(attention_kernel=self,
                            description=description or f"{base.description} + TVM attention ({len(self._fns)})")
