"""Logit error and top-1 agreement of f16 / int8 / int4 bundles against the f32 bundle of the same dense model.

The model is a random-weight Llama-architecture decoder (weights ~ N(0, 1/fan_in), which gives peaked, non-tied
logits unlike HF's 0.02 init); the same synthetic weights are exported four times. Prompts are random token ids.

    python benchmarks/quant_quality.py [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgespool.exporters.compress import QuantPolicy
from edgespool.exporters.export import export_model
from edgespool.exporters.synth import SyntheticModel, train_demo_tokenizer
from edgespool.runtime.api import load
from edgespool.runtime.bundle.config import ModelConfig


def dense_config(vocab: int) -> ModelConfig:
    return ModelConfig(arch="llama", vocab_size=vocab, hidden_size=512, intermediate_size=1408, num_layers=8,
                       num_heads=8, num_kv_heads=4, head_dim=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                       max_position_embeddings=1024, bos_token_id=1, eos_token_ids=(2,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--length", type=int, default=64)
    a = ap.parse_args()
    tok = train_demo_tokenizer()
    from tokenizers import Tokenizer

    cfg = dense_config(Tokenizer.from_str(tok).get_vocab_size())
    src = SyntheticModel(cfg, tok, seed=7)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, cfg.vocab_size, a.length) for _ in range(a.prompts)]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        ref = None
        for q in ("f32", "f16", "int8", "int4"):
            res = export_model(src, Path(d) / q, policy=QuantPolicy(quant=q), onnx=False, kernels=False,
                               progress=False)
            m = load(res.path)
            t0 = time.perf_counter()
            logits = [m.logits(p) for p in prompts]
            dt = time.perf_counter() - t0
            if ref is None:
                ref = logits
            diff = np.concatenate([(x - r).ravel() for x, r in zip(logits, ref)])
            scale = float(np.concatenate([r.ravel() for r in ref]).std())
            top1 = float(np.mean(np.concatenate([x.argmax(-1) == r.argmax(-1) for x, r in zip(logits, ref)])))

            def kl(x, r):
                p = np.exp(r - r.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
                lq = x - x.max(-1, keepdims=True); lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
                lp = np.log(p)
                return float((p * (lp - lq)).sum(-1).mean())

            rows.append({"quant": q, "weights_bytes": res.report["bytes_after"],
                         "max_abs_logit_err": float(np.abs(diff).max()),
                         "rms_logit_err_rel": float(np.sqrt((diff ** 2).mean())) / scale,
                         "top1_agreement": top1,
                         "kl_vs_f32": float(np.mean([kl(x, r) for x, r in zip(logits, ref)])),
                         "prefill_tok_s": a.prompts * a.length / dt})
            m.close()
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"dense llama (random N(0,1/fan_in) weights), hidden {cfg.hidden_size}, {cfg.num_layers} layers, "
          f"vocab {cfg.vocab_size}; {a.prompts} prompts x {a.length} tokens, every position compared")
    print("| quant | weights | max abs logit err | RMS err / logit std | top-1 agreement | KL(f32 || q) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['quant']} | {r['weights_bytes'] / 2**20:.1f} MiB | {r['max_abs_logit_err']:.4f} | "
              f"{r['rms_logit_err_rel']:.4f} | {100 * r['top1_agreement']:.1f}% | {r['kl_vs_f32']:.5f} |")


if __name__ == "__main__":
    sys.exit(main())
