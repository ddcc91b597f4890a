"""Throughput of the numpy engine on random-weight models (not a test; run by hand).

    /work/venv/bin/python tests/bench_engine.py [--arch llama|mixtral] [--hidden 1024] [--layers 8] [--quant f32]
        [--prompt 128] [--tokens 32]

Builds a random bundle of the given shape in a temp dir, then times one batched prefill of ``--prompt`` tokens and
``--tokens`` greedy decode steps (Engine.stats), printing tokens/s. The weights are random: only speed is measured.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from edgespool.exporters.bundle_writer import BundleWriter
from edgespool.kernels.quant import quantize
from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.bundle.config import ModelConfig
from edgespool.runtime.decoder.engine import Engine
from edgespool.runtime.decoder.weights import ResidentWeights


def bench_config(arch: str, hidden: int, layers: int, vocab: int) -> ModelConfig:
    heads = hidden // 64
    moe = arch == "mixtral"
    return ModelConfig(arch=arch, vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64,
                       num_layers=layers, num_heads=heads, num_kv_heads=max(1, heads // 4), head_dim=64,
                       num_experts=8 if moe else 0, num_experts_per_tok=2 if moe else 0,
                       moe_intermediate_size=hidden * 2 if moe else 0, norm_topk_prob=moe,
                       moe_layers=tuple(range(layers)) if moe else (), max_position_embeddings=4096)


def build(cfg: ModelConfig, out: Path, scheme: str) -> Path:
    rng = np.random.default_rng(0)
    w = BundleWriter(out, cfg)
    for name, shape in cfg.tensor_shapes().items():
        a = (rng.standard_normal(shape, dtype=np.float32) * (1.0 if len(shape) == 1 else shape[-1] ** -0.5))
        w.add_tensor(name, quantize(a, scheme if len(shape) == 2 else "f32"))
    w.set_tokenizer("{}", bos_token_id=None, eos_token_ids=[], add_bos=False)
    return w.finish()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="llama", choices=["llama", "mixtral"])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--quant", default="f32", choices=["f32", "f16", "int8", "int4"])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=32)
    a = ap.parse_args()
    cfg = bench_config(a.arch, a.hidden, a.layers, a.vocab)
    with tempfile.TemporaryDirectory() as d:
        b = build(cfg, Path(d) / "b", a.quant)
        src = ResidentWeights(Bundle(b))
        eng = Engine(src)
        prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, a.prompt)
        list(eng.generate(prompt[:4], 2))  # warm-up
        eng.stats.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        n = len(list(eng.generate(prompt, a.tokens)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        s = eng.stats
        print(f"{a.arch} hidden={a.hidden} layers={a.layers} vocab={a.vocab} quant={a.quant} "
              f"weights={src.resident_bytes / 2**20:.0f} MiB")
        print(f"prefill: {s.prefill_tokens} tokens in {s.prefill_s:.3f} s = {s.prefill_tok_s:.1f} tok/s")
        print(f"decode:  {s.decode_tokens} tokens in {s.decode_s:.3f} s = {s.decode_tok_s:.1f} tok/s "
              f"({n} generated, wall {wall:.2f} s, process CPU {cpu:.2f} s; on a busy machine CPU/wall > 1 "
              "means BLAS threads ran in parallel, wall >> CPU means waiting for a core)")


if __name__ == "__main__":
    main()
