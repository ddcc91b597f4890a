"""Compile kernels once per (target, op, shape, quant) into a cache directory keyed by a hash.

Cache layout: ``<cache_dir>/<key>/`` holding ``kernel.so`` (CPU targets: a shared library loadable by the TVM
runtime) or ``kernel.cu`` + ``kernel.fatbin`` (CUDA targets: launched with CuPy by :mod:`.cuda_launch`), plus
``meta.json`` (spec, target, compile seconds, sizes). The key hashes the spec, the TVM target dict, the schedule
options, the C compiler, the TVM version and the source of the kernel definitions (``tvm_build.py``,
``tvm_linear.py``, ``tvm_q8.py``; ``tvm_attention.py`` for attention), so a change of any of them recompiles.

Default directory: ``$EDGESPOOL_KERNEL_CACHE`` or ``~/.cache/edgespool/kernels``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import TargetError
from .tvm_attention import AttentionSpec
from .tvm_build import BuildOptions, LinearSpec

CACHE_VERSION = 2  # 2: shared libraries stripped


def default_cache_dir() -> Path:
    """``$EDGESPOOL_KERNEL_CACHE`` or ``~/.cache/edgespool/kernels``."""
    env = os.environ.get("EDGESPOOL_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgespool" / "kernels"


@dataclass(frozen=True)
class CompiledKernel:
    """One compiled kernel in the cache: where its files are and what compiling it cost."""

    spec: LinearSpec | AttentionSpec
    target: dict[str, Any]
    directory: Path
    files: tuple[str, ...]  # file names inside ``directory``
    compile_seconds: float  # time of the original compile (0 is never stored)
    nbytes: int  # total size of ``files``
    cached: bool  # True when this call found it in the cache
    launch: dict[str, Any] | None = None  # CUDA only: kernel name, params, grid/block

    @property
    def path(self) -> Path:
        """The main artefact: ``kernel.so`` (CPU), ``kernel.fatbin`` (CUDA) or ``kernel.cu`` (CUDA, no fatbin)."""
        return self.directory / self.files[0]


def _tvm_version() -> str:
    try:
        import tvm

        return str(tvm.__version__)
    except ImportError:  # pragma: no cover
        return "none"


def _schedule_source_digest(spec: LinearSpec | AttentionSpec | None = None) -> str:
    """Digest of the kernel definitions/schedules (tvm_build.py, tvm_linear.py, tvm_q8.py; tvm_attention.py too
    for attention kernels): editing them invalidates the cache."""
    from . import tvm_attention, tvm_build, tvm_linear, tvm_q8

    mods = (tvm_build, tvm_linear, tvm_q8) + ((tvm_attention,) if isinstance(spec, AttentionSpec) else ())
    data = b"".join(Path(m.__file__).read_bytes() for m in mods)
    return hashlib.sha256(data).hexdigest()[:16]


def cache_key(spec: LinearSpec | AttentionSpec, target: dict[str, Any], cc: str | None, options: BuildOptions | None) -> str:
    """Hex digest naming the cache entry of ``spec`` compiled for ``target`` with ``cc`` and ``options`` by this
    version of the kernel definitions and of TVM."""
    payload = {"v": CACHE_VERSION, "spec": spec.to_dict(), "target": target, "cc": cc or "",
               "options": asdict(options or BuildOptions()), "tvm": _tvm_version(), "src": _schedule_source_digest(spec)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _load_entry(d: Path, spec: LinearSpec | AttentionSpec, target: dict[str, Any]) -> CompiledKernel | None:
    meta_p = d / "meta.json"
    if not meta_p.exists():
        return None
    meta = json.loads(meta_p.read_text())
    files = tuple(meta["files"])
    if not all((d / f).exists() for f in files):
        return None
    return CompiledKernel(spec, target, d, files, float(meta["compile_seconds"]), int(meta["nbytes"]), True,
                          meta.get("launch"))


def compile_kernel(spec: LinearSpec | AttentionSpec, target: dict[str, Any], *, cc: str | None = None,
                   options: BuildOptions | None = None, cache_dir: Path | None = None) -> CompiledKernel:
    """Compile ``spec`` for ``target`` (a TVM target dict) unless the cache has it; return the cache entry.

    CPU (``kind: llvm``): exports a shared library with ``cc`` (None = the host compiler; e.g.
    ``aarch64-linux-gnu-gcc`` to cross-compile). CUDA: the CUDA C source TVM generates plus a fatbin from nvcc
    for the target's ``arch``; the launch geometry is recorded for :mod:`.cuda_launch`. An :class:`AttentionSpec`
    compiles one library with its decode and prefill functions (:mod:`.tvm_attention`; CUDA: both kernels in one
    source/fatbin, ``launch["kernels"]`` per form).
    """
    from . import tvm_attention, tvm_build

    attn = isinstance(spec, AttentionSpec)

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(spec, target, cc, options)
    d = cache_dir / key
    hit = _load_entry(d, spec, target)
    if hit is not None:
        return hit
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
    try:
        t0 = time.perf_counter()
        launch = None
        if target.get("kind") == "cuda":
            src, fatbin, launch = (tvm_attention.cuda_artifacts(spec, target) if attn
                                   else tvm_build.cuda_artifacts(spec, target, options))
            (tmp / "kernel.cu").write_text(src)
            files: tuple[str, ...] = ("kernel.cu",)
            if fatbin:
                (tmp / "kernel.fatbin").write_bytes(fatbin)
                files = ("kernel.fatbin", "kernel.cu")
        elif target.get("kind") == "llvm":
            ex = tvm_attention.build(spec, target) if attn else tvm_build.build([spec], target, options)
            if cc and shutil.which(cc) is None:
                raise TargetError(f"C compiler {cc!r} for target {target.get('mtriple')} is not installed "
                                  f"(apt-get install gcc-aarch64-linux-gnu for aarch64)")
            # stripped (-s): 18 KB instead of 27 KB per x86 kernel, 67 KB instead of 79 KB per aarch64 kernel
            ex.export_library(str(tmp / "kernel.so"), options=["-s"], **({"cc": cc} if cc else {}))
            files = ("kernel.so",)
        else:
            raise TargetError(f"no kernels for TVM target kind {target.get('kind')!r}; supported: llvm, cuda")
        secs = time.perf_counter() - t0
        nbytes = sum((tmp / f).stat().st_size for f in files)
        meta = {"spec": spec.to_dict(), "target": target, "cc": cc, "files": list(files), "compile_seconds": secs,
                "nbytes": nbytes, "launch": launch, "tvm": _tvm_version(),
                "options": asdict(options or BuildOptions())}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, d)  # atomic publish; a concurrent writer may have won
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            hit = _load_entry(d, spec, target)
            if hit is not None:
                return hit
            raise
        return CompiledKernel(spec, target, d, files, secs, nbytes, False, launch)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
