"""Compile the kernels a bundle needs for its target into the bundle's ``kernels/`` directory.

One kernel per distinct (scheme, shape, group) of the bundle's linear weights, in two batch forms (gemv for
decode, gemm for prefill chunks), plus one attention library (decode + prefill, symbolic context length) for the
model's (head_dim, n_heads, n_kv_heads), listed under ``"attention"`` in ``kernels.json``. CPU kernels are shared libraries compiled by TVM for the target's LLVM
target and linked by its (cross) C compiler; a target with a GPU also gets the CUDA kernels (source + fatbin +
launch record) for its arch. Everything goes through the compile cache (:mod:`edgespool.kernels.tvm_cache`), so
a second export of the same shapes for the same target compiles nothing.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import OptionError, TargetError
from ..kernels.c_blocks import LIBRARY_NAME as BLOCK_LIBRARY
from ..kernels.c_blocks import SCHEME_CODES as BLOCK_SCHEMES
from ..kernels.c_blocks import compile_library as compile_block_library
from ..kernels.tvm_attention import AttentionSpec
from ..kernels.tvm_backend import KERNELS_MANIFEST
from ..kernels.tvm_build import (
    LINEAR_SCHEMES,
    BuildOptions,
    LinearSpec,
    has_dotprod,
    has_vnni,
    q8_supported,
)
from ..kernels.tvm_cache import compile_kernel
from ..runtime.bundle.config import ModelConfig
from ..targets.profiles import TargetProfile

GEMM_ROW_TILE = 4


def _publish(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary name and an atomic rename: a process that has the old ``dst``
    loaded keeps its inode (overwriting a dlopen'ed library in place crashes that process)."""
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def served_by_block_kernels(scheme: str, group_size: int) -> bool:
    """Whether the C block kernels (:mod:`edgespool.kernels.c_blocks`) serve weights of ``scheme`` (int4: g32)."""
    return scheme in BLOCK_SCHEMES and (scheme != "int4" or group_size == 32)


def linear_specs(config: ModelConfig, tensors_meta: dict[str, dict[str, Any]],
                 row_tile: int = GEMM_ROW_TILE, q8: bool = False, skip_block: bool = False) -> list[LinearSpec]:
    """The distinct linear kernels the bundle's tensors need (records as written by BundleWriter: ``scheme``,
    ``shape``, ``group_size``). The embedding counts only when it doubles as the LM head (tied). ``q8`` adds the
    Q8_0-activation VNNI GEMV for every int8 / int4 g32 shape it supports. ``skip_block`` leaves out the shapes
    the C block kernels serve (they replace the TVM linear kernels there)."""
    seen: dict[tuple, None] = {}
    for name, rec in tensors_meta.items():
        shape = rec.get("shape", [])
        if rec.get("scheme") not in LINEAR_SCHEMES or len(shape) != 2:
            continue
        if name == "embed" and not config.tie_word_embeddings:
            continue
        g = int(rec.get("group_size", 0)) if rec["scheme"] == "int4" else 0
        if skip_block and served_by_block_kernels(rec["scheme"], g):
            continue
        seen[(rec["scheme"], int(shape[0]), int(shape[1]), g)] = None
    specs = []
    for scheme, o, i, g in seen:
        specs.append(LinearSpec(scheme, o, i, g, "gemv"))
        specs.append(LinearSpec(scheme, o, i, g, "gemm", row_tile))
        if q8 and q8_supported(scheme, i, g):
            specs.append(LinearSpec(scheme, o, i, g, "gemv", act="q8"))
    return specs


def build_kernels_for_bundle(config: ModelConfig, tensors_meta: dict[str, dict[str, Any]],
                             target_profile: TargetProfile, out_dir: str | Path, *,
                             cache_dir: Path | None = None, options: BuildOptions | None = None,
                             gpu: bool = True, activations: str = "f32", attention: bool = True,
                             block: bool = True) -> dict[str, Any]:
    """Compile (or fetch from the cache) every kernel the bundle needs for ``target_profile`` into ``out_dir``
    (the bundle's ``kernels/`` directory), write ``kernels.json`` there and return the manifest section:
    target, triple, kernel list (spec, file, bytes), total bytes, compile seconds and cache hits.

    ``activations="q8"`` also builds, where the target CPU has AVX-512 VNNI (x86) or dotprod (aarch64: rpi5,
    Orin), int8 / int4 g32 GEMVs that round x to Q8_0 blocks per call (llama.cpp's numerics; on znver4 int4 ~2x
    and int8 ~1.3x the float-activation kernels); the runtime prefers them for decode.

    ``attention`` (default on) also compiles the GQA attention library of the model's head shape
    (:mod:`edgespool.kernels.tvm_attention`; + its CUDA kernels for a target with a GPU), listed under the
    section's ``"attention"`` key.

    ``block`` (default on) compiles the C block kernels (:mod:`edgespool.kernels.c_blocks`: int8, int4 g32 and
    the kept ggml formats, multi-threaded, llama.cpp's numerics) with the target's C compiler into
    ``blockdot.so`` (the section's ``"block"`` record); TVM linear kernels are then built only for the shapes
    they do not serve (f16, int4 with other group sizes). The TVM compiler is needed only for those and for
    attention (``tvm=False`` in the record when apache-tvm is absent)."""
    if activations not in ("f32", "q8"):
        raise OptionError(f"--kernel-activations {activations!r}: valid are f32, q8")
    if target_profile.kind != "linux":
        raise TargetError(f"target {target_profile.name!r} is an MCU: its kernels come from the C exporter, "
                          "not TVM shared libraries")
    cc = target_profile.cross_cc
    if cc and platform.machine().lower() in ("aarch64", "arm64") and target_profile.isa == "aarch64":
        cc = None  # native build on an ARM host
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tt = target_profile.tvm_target
    t0 = time.perf_counter()
    block = block and any(served_by_block_kernels(str(r.get("scheme")), int(r.get("group_size", 0) or 0))
                          for r in tensors_meta.values() if len(r.get("shape", [])) == 2)
    block_rec = compile_block_library(tt, out / BLOCK_LIBRARY, cc=cc, cache_dir=cache_dir) if block else None
    import importlib.util

    have_tvm = importlib.util.find_spec("tvm") is not None
    specs = linear_specs(config, tensors_meta, q8=activations == "q8" and (has_vnni(tt) or has_dotprod(tt)),
                         skip_block=block) if have_tvm else []
    attention = attention and have_tvm
    entries: list[dict[str, Any]] = []
    attn_entries: list[dict[str, Any]] = []
    compiled: list[Any] = []  # every compile result, for the totals

    def add_so(spec: Any, dest: list[dict[str, Any]], **kw: Any) -> None:
        k = compile_kernel(spec, tt, cc=cc, cache_dir=cache_dir, **kw)
        fname = f"{spec.name}.so"
        _publish(k.path, out / fname)
        dest.append({"kind": "so", "spec": spec.to_dict(), "file": fname, "nbytes": k.nbytes,
                     "compile_seconds": round(k.compile_seconds, 3), "cached": k.cached})
        compiled.append(k)

    def add_cuda(spec: Any, dest: list[dict[str, Any]], **kw: Any) -> None:
        g = compile_kernel(spec, target_profile.gpu.tvm_target, cache_dir=cache_dir, **kw)
        files = {}
        for f in g.files:
            dst = f"{spec.name}.{target_profile.gpu.arch}.{f.split('.')[-1]}"
            _publish(g.directory / f, out / dst)
            files[f.split(".")[-1]] = dst
        dest.append({"kind": "cuda", "spec": spec.to_dict(), "files": files, "launch": g.launch,
                     "nbytes": g.nbytes, "compile_seconds": round(g.compile_seconds, 3), "cached": g.cached})
        compiled.append(g)

    for spec in specs:
        add_so(spec, entries, options=options)
        if gpu and target_profile.gpu is not None and spec.batch == "gemv" and spec.act == "f32":
            add_cuda(spec, entries, options=options)
    if attention:
        aspec = AttentionSpec(config.head_dim, config.num_heads, config.num_kv_heads)
        add_so(aspec, attn_entries)
        if gpu and target_profile.gpu is not None:
            add_cuda(aspec, attn_entries)
    compile_s = sum(0.0 if k.cached else k.compile_seconds for k in compiled)
    hits = sum(bool(k.cached) for k in compiled)
    section = {
        "target": target_profile.name,
        "activations": activations,
        "triple": target_profile.triple,
        "tvm_target": target_profile.tvm_target,
        "runtime": "apache-tvm-ffi + libtvm_runtime.so (or apache-tvm)",
        "kernels": entries,
        "attention": attn_entries,
        "block": block_rec,
        "nbytes": sum(e["nbytes"] for e in entries + attn_entries) + (block_rec["nbytes"] if block_rec else 0),
        "compile_seconds": round(compile_s, 3),
        "cache_hits": hits,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (out / KERNELS_MANIFEST).write_text(json.dumps(section, indent=1))
    return section
