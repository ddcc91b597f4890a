"""Figures for docs/GGUF.md: max abs logit difference of the edgespool engine on GGUF files vs llama.cpp (same file)
and vs transformers (same f16 weights), per architecture; and on Q8_0/Q4_0 Llama GGUFs.

    python tests/bench_gguf_parity.py        # ~2 min on 2 cores; needs torch, transformers, llama-cpp-python
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gguf_tools as g  # noqa: E402
import test_gguf as T  # noqa: E402
import tiny_models as tm  # noqa: E402


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="gguf_bench_"))
    models = T.Models(root)
    print("arch | f32 GGUF vs llama.cpp f32 KV | f16 KV | f16 GGUF vs transformers (same f16 weights) | vs llama.cpp")
    for a in T.ARCHS:
        p = models.gguf(a, "f32")
        ours = T._engine_logits(p, root / f"b_{a}_32")
        d32 = np.abs(ours - g.llama_logits(p, T.PROMPT)).max()
        d32h = np.abs(ours - g.llama_logits(p, T.PROMPT, f32_kv=False)).max()
        p = models.gguf(a, "f16", dtype="float16")
        ours = T._engine_logits(p, root / f"b_{a}_16", "f16")
        dhf = np.abs(ours - tm.hf_logits(models.hf(a, "float16"), T.PROMPT)).max()
        ref = g.llama_logits(p, T.PROMPT)
        print(f"{a} | {d32:.1e} | {d32h:.1e} | {dhf:.1e} | {np.abs(ours - ref).max():.1e} "
              f"(top-1 {np.mean(ours.argmax(1) == ref.argmax(1)):.2f})", flush=True)
    f32 = g.llama_logits(models.gguf("llama", "f32"), T.PROMPT)
    for q in ("q8_0", "q4_0"):
        p = models.gguf("llama", "q8_0") if q == "q8_0" else g.quantize(models.gguf("llama", "f32"),
                                                                        root / "llama.q4_0.gguf", "q4_0")
        ours = T._engine_logits(p, root / f"b_{q}")
        ref = g.llama_logits(p, T.PROMPT)
        print(f"llama {q}: vs llama.cpp on the same file {np.abs(ours - ref).max():.1e} "
              f"(top-1 {np.mean(ours.argmax(1) == ref.argmax(1)):.2f}); vs the f32 model {np.abs(ours - f32).max():.1e}; "
              f"logit scale max|f32| {np.abs(f32).max():.2f}")


if __name__ == "__main__":
    main()
