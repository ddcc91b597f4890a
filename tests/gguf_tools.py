"""Test-only helpers around llama.cpp: run its ``convert_hf_to_gguf.py`` on tiny HF models, quantize GGUF files,
and get llama.cpp's logits and token ids through llama-cpp-python.

The converter is not on PyPI as a wheel: it ships inside the llama-cpp-python sdist (``vendor/llama.cpp``). We fetch
that sdist once with ``pip download`` (the version of the installed ``llama_cpp``, else 0.3.36), extract only the
converter (``convert_hf_to_gguf.py``, ``conversion/``, ``gguf-py/``) into ``~/.cache/edgespool/llama.cpp-convert``
(override with ``EDGESPOOL_CACHE``; ``EDGESPOOL_LLAMA_CPP_SDIST`` may point at an already downloaded tarball) and
patch that extracted copy so an unrecognised BPE pre-tokenizer (our home-trained byte-level BPE) is written as
``gpt-2`` instead of aborting. Nothing of llama.cpp is committed to the repository.
"""
from __future__ import annotations


import ctypes
import fcntl
import os
import subprocess
import sys
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

DEFAULT_VERSION = "0.3.36"
_PATCH_MARK = "# edgespool-test-patch: unknown BPE pre-tokenizer -> gpt-2"
_PRE_TOK_ANCHOR = "        if res is None:\n            logger.warning(\"\\n\")\n"


def cache_root() -> Path:
    """``$EDGESPOOL_CACHE/llama.cpp-convert`` (default ``~/.cache/edgespool/llama.cpp-convert``)."""
    base = Path(os.environ.get("EDGESPOOL_CACHE", Path.home() / ".cache" / "edgespool"))
    return base / "llama.cpp-convert"


def llama_cpp_version() -> str:
    """Version of the installed llama-cpp-python (its converter must match its llama.cpp), else the default."""
    try:
        import llama_cpp

        return str(llama_cpp.__version__)
    except Exception:
        return DEFAULT_VERSION


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sdist(version: str, root: Path) -> Path:
    env_tar = os.environ.get("EDGESPOOL_LLAMA_CPP_SDIST")
    if env_tar:
        return Path(env_tar)
    tar = root / f"llama_cpp_python-{version}.tar.gz"
    if tar.exists():
        return tar
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={version}", "-d", str(root), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not tar.exists():
        raise RuntimeError(f"pip download of llama-cpp-python=={version} failed: {proc.stderr[-2000:]}")
    return tar


def converter_dir(version: str | None = None) -> Path:
    """Directory holding a patched, ready-to-run ``convert_hf_to_gguf.py`` (extracted once, then cached)."""
    version = version or llama_cpp_version()
    root = cache_root()
    dest = root / f"llama-cpp-python-{version}"
    done = dest / ".complete"
    if done.exists():
        return dest
    with _locked(root / ".lock"):
        if done.exists():
            return dest
        tar = _sdist(version, root)
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        with tarfile.open(tar) as tf:
            members = []
            for m in tf.getmembers():
                if not m.name.startswith(prefix) or not (m.isfile() or m.isdir()):
                    continue
                rel = m.name[len(prefix):]
                if rel.startswith(wanted):
                    m.name = rel
                    members.append(m)
            if not any(m.name == "convert_hf_to_gguf.py" for m in members):
                raise RuntimeError(f"{tar}: no vendor/llama.cpp/convert_hf_to_gguf.py inside")
            dest.mkdir(parents=True, exist_ok=True)
            try:
                tf.extractall(dest, members=members, filter="data")
            except TypeError:  # Python without extraction filters (< 3.10.12 / 3.11.4)
                tf.extractall(dest, members=members)
        base = dest / "conversion" / "base.py"
        text = base.read_text()
        if _PATCH_MARK not in text:
            if text.count(_PRE_TOK_ANCHOR) != 1:
                raise RuntimeError(f"{base}: pre-tokenizer check not found; cannot patch this llama.cpp version")
            text = text.replace(_PRE_TOK_ANCHOR, f"        if res is None:  {_PATCH_MARK}\n"
                                                 f"            res = \"gpt-2\"\n" + _PRE_TOK_ANCHOR)
            base.write_text(text)
        done.write_text(version)
    return dest


def require_converter() -> None:
    """Skip the calling test when torch, transformers or llama.cpp's converter (from the llama-cpp-python sdist) are
    unavailable; under CI a missing converter is an error, not a skip."""
    import pytest

    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    try:
        converter_dir()
    except RuntimeError as e:  # no network and no cached sdist
        if os.environ.get("CI"):
            raise
        pytest.skip(f"llama.cpp converter unavailable: {e}")


def convert(hf_dir: str | Path, outfile: str | Path, outtype: str = "f32", vocab_only: bool = False) -> Path:
    """Run llama.cpp's ``convert_hf_to_gguf.py`` on an HF checkpoint directory (``outtype`` f32/f16/bf16/q8_0;
    ``vocab_only`` writes only the metadata and vocabulary)."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    outfile = Path(outfile)
    cmd = [sys.executable, str(script), str(hf_dir), "--outfile", str(outfile), "--outtype", outtype]
    if vocab_only:
        cmd.append("--vocab-only")
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # use the converter's own vendored gguf-py
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0 or not outfile.exists():
        raise RuntimeError(f"convert_hf_to_gguf failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return outfile


def quantize(src: str | Path, dst: str | Path, ftype: str = "q4_0") -> Path:
    """Quantize a GGUF with llama.cpp's own quantizer (``llama_model_quantize``); ftype e.g. q4_0, q8_0, q4_k_m."""
    import llama_cpp

    const = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
             "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
             "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
             "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
             "iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL"}[ftype]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, const)
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {ftype}) returned {rc}")
    return Path(dst)


def _without_repack():
    """Load models with ``use_extra_bufts = False``: llama.cpp 0.3.36's extra buffer types (AVX-512 repack, AMX)
    segfault on this VM (see edgespool/benchmarks/llamacpp_peer.py); without them llama.cpp runs the same block
    dot products from the file's layout (float summation order may differ), so the parity references stand."""
    from edgespool.benchmarks.llamacpp_peer import model_params

    return model_params(False)


def llama_logits(gguf_path: str | Path, ids: list[int], *, f32_kv: bool = True, **llama_kw) -> np.ndarray:
    """llama.cpp's float32 logits ``[T, V]`` for one sequence (``f32_kv``: f32 KV cache, else llama.cpp's f16).
    ``llama_kw`` go to ``llama_cpp.Llama`` (note: llama-cpp-python passes its own YaRN beta defaults 32/1, which
    override the GGUF's ``rope.scaling.yarn_beta_*``; pass ``yarn_beta_fast``/``yarn_beta_slow`` explicitly)."""
    import llama_cpp

    kw = dict(type_k=0, type_v=0) if f32_kv else {}
    kw.update(llama_kw)
    with _without_repack():
        llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=max(64, len(ids) + 8), n_batch=max(64, len(ids)),
                              logits_all=True, verbose=False, n_threads=1, seed=0, **kw)
    try:
        llm.eval(list(map(int, ids)))
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def llama_cpp_logits_fn(gguf_path: str | Path, n_ctx: int):
    """``chunk -> [len(chunk), V]`` float32 logits from one llama.cpp context (f32 KV cache, reset per call): the
    reference for perplexity windows."""
    import llama_cpp

    with _without_repack():
        llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                              n_threads=1, seed=0, type_k=0, type_v=0)

    def logits(chunk: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(list(map(int, chunk)))
        return np.array(llm.scores[: len(chunk)], dtype=np.float32)

    return logits


def llama_vocab(gguf_path: str | Path):
    """A vocabulary-only ``llama_cpp.Llama`` for tokenisation (call ``.tokenize(bytes, add_bos, special)``)."""
    import llama_cpp

    return llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)


# -- llama.cpp's own dequantisation (libggml-base, the library llama-cpp-python ships) ---------------------------
_GGML_ROW_FUNCS = {"F16": "ggml_fp16_to_fp32_row", "BF16": "ggml_bf16_to_fp32_row",
                   **{t: f"dequantize_row_{t.lower() if not t.endswith('_K') else t[:-2].lower() + '_K'}"
                      for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")}}


def ggml_lib() -> ctypes.CDLL:
    """``libggml-base.so`` from the installed llama-cpp-python."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    cands = sorted(lib_dir.glob("libggml-base.so*")) or sorted(lib_dir.glob("libggml-base*.dylib"))
    if not cands:
        raise RuntimeError(f"no libggml-base in {lib_dir}")
    return ctypes.CDLL(str(cands[0]))


def ggml_dequantize(raw: np.ndarray, type_name: str, n_values: int) -> np.ndarray:
    """llama.cpp's C dequantisation (``dequantize_row_*`` / ``ggml_*_to_fp32_row``) of ``raw`` tensor bytes
    holding ``n_values`` values of ggml type ``type_name``, as a flat float32 array."""
    lib = ggml_lib()
    fn = getattr(lib, _GGML_ROW_FUNCS[type_name])
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    src = np.ascontiguousarray(raw).view(np.uint8)
    out = np.empty(n_values, dtype=np.float32)
    fn(src.ctypes.data, out.ctypes.data, n_values)
    return out


def rewrite_gguf(src: str | Path, dst: str | Path, changes: dict | None = None, drop: tuple[str, ...] = (),
                 tensors: bool = False) -> Path:
    """Copy a GGUF's metadata with ``changes`` (key -> new value of the same type) and the keys in ``drop`` removed;
    without tensors (the copy still loads in llama.cpp with ``vocab_only=True``) unless ``tensors``."""
    import gguf

    changes = changes or {}
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), str(r.fields["general.architecture"].contents()))
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop:
            continue
        val = changes.get(key, f.contents())
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, val, f.types[0], sub_type=sub)
    if tensors:
        for rt in r.tensors:
            w.add_tensor(rt.name, np.asarray(rt.data), raw_shape=np.asarray(rt.data).shape, raw_dtype=rt.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(dst)
