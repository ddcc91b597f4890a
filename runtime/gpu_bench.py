"""``edgespool bench BUNDLE --gpu-budget 3GiB [--json]``: a CPU/GPU split run measured (docs/GPU.md).

Loads the bundle with ``gpu_memory=`` (resident CPU side), runs a prefill of ``prompt_tokens`` random ids and
``max_tokens`` greedy decode steps, and reports what was measured: prefill / decode tok/s, bytes copied
host-to-device per forward pass (counted at every copy), the CuPy pool's peak against the planned arena, the
placement with its predicted time per token next to the measured one; or, without a usable GPU, the CPU-only
figures and why.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np


def bench_split(path: str | os.PathLike, gpu_budget: str | int, *, prompt_tokens: int = 32, max_tokens: int = 32,
                seed: int = 0, threads: int | None = None) -> dict[str, Any]:
    """Measure one split run of ``path`` under ``gpu_budget`` (see the module docstring); JSON-ready.
    ``threads``: the CPU side's kernel threads (default as :func:`edgespool.load`)."""
    from .api import load

    m = load(path, gpu_memory=gpu_budget, n_threads=threads)
    try:
        rng = np.random.default_rng(seed)
        prompt = [int(t) for t in rng.integers(0, m.config.vocab_size, prompt_tokens)]
        list(m.generate_ids(prompt[:4], 2, stop=[]))  # warm-up: reads, kernel compilation, cuBLAS handles
        m.reset()
        dev = getattr(m.source, "device_layers", None)
        if dev is not None:
            dev.h2d_bytes = dev.d2h_bytes = 0
        tokens = list(m.generate_ids(prompt, max_tokens, stop=[]))
        st = m.stats
        res: dict[str, Any] = {"bundle": str(path), "prompt_tokens": prompt_tokens, "generated_tokens": len(tokens),
                               "prefill_tok_s": st.prefill_tok_s, "decode_tok_s": st.decode_tok_s,
                               "gpu_fallback": m.gpu_fallback, "kernels": m.kernels.description}
        if dev is not None:
            pl = m.source.placement
            steps = max(1, len(tokens))  # forward passes: the prefill (chunked) + len-1 decode steps
            res.update(placement=pl.to_dict(), placement_text=pl.summary(),
                       predicted_token_ms=pl.predicted_token_s * 1e3,
                       measured_token_ms=1e3 / st.decode_tok_s if st.decode_tok_s else None,
                       h2d_bytes_per_pass=dev.h2d_bytes / steps, **dev.stats())
        return res
    finally:
        m.close()
