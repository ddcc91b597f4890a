"""llama.cpp (through llama-cpp-python) as the peer of the benchmarks and parity tests, in the best configuration
that runs on this machine.

llama-cpp-python 0.3.36 built here enables llama.cpp's "extra buffer types" by default: weights repacked at load
for AVX-512 (REPACK) and, on Sapphire Rapids, the AMX int8 backend (AMX_INT8). On this project's VM (Intel Xeon with
amx_int8 in /proc/cpuinfo) loading any quantised model with them crashes in an OpenMP worker (SIGSEGV, measured on
SmolLM2, Qwen2.5-Coder-0.5B and the tiny test GGUFs, even at one thread). :func:`extra_bufts_work` probes that in a
child process; :func:`open_llama` then loads with them where they work and without them (the model's own layout,
the same block dot products) where they crash, and says which in ``note``.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Any, Iterator

_PROBE = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=32, n_batch=32, n_threads=1, verbose=False)
llm.eval([llm.token_bos() if llm.token_bos() >= 0 else 1, 2, 3])
print("ok")
"""


def extra_bufts_work(gguf: str, timeout_s: float = 120.0) -> bool:
    """Whether llama.cpp runs ``gguf`` with its default extra buffer types (a child process: a crash is a False)."""
    try:
        p = subprocess.run([sys.executable, "-c", _PROBE, str(gguf)], capture_output=True, text=True,
                           timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return p.returncode == 0 and p.stdout.strip().endswith("ok")


@contextlib.contextmanager
def model_params(use_extra_bufts: bool) -> Iterator[None]:
    """While active, ``llama_cpp.Llama`` loads models with ``use_extra_bufts`` set as given."""
    import llama_cpp.llama as llama_mod

    orig = llama_mod.llama_cpp.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = bool(use_extra_bufts)
        return p

    llama_mod.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        llama_mod.llama_cpp.llama_model_default_params = orig


ENV = "EDGESPOOL_LLAMACPP_EXTRA_BUFTS"  # "1" / "0": the probe's answer, set by a parent for its children


def decide_extra_bufts(gguf: str) -> bool:
    """Probe once and export the answer in :data:`ENV`, so benchmark children (timed, memory-limited) need not."""
    if os.environ.get(ENV) not in ("0", "1"):
        os.environ[ENV] = "1" if extra_bufts_work(gguf) else "0"
    return os.environ[ENV] == "1"


def open_llama(gguf: str, *, extra_bufts: bool | None = None, **kw: Any) -> tuple[Any, str]:
    """``(llama_cpp.Llama, note)`` for ``gguf``; ``extra_bufts`` None = :data:`ENV` if a parent set it, else
    probe (:func:`extra_bufts_work`)."""
    import llama_cpp

    use = decide_extra_bufts(gguf) if extra_bufts is None else extra_bufts
    with model_params(use):
        llm = llama_cpp.Llama(model_path=str(gguf), **kw)
    note = ("llama.cpp defaults (extra buffer types: repack/AMX)" if use else
            "llama.cpp without extra buffer types (its repack/AMX path crashes on this machine)")
    return llm, note
