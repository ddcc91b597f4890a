"""Random-weight decoder bundles for the streaming tests and benchmarks (no torch): a dense Llama-style model and a
Mixtral-style MoE, exported through the real export pipeline (exporters.export_model) from
:class:`edgespool.exporters.synth.SyntheticModel`."""
from __future__ import annotations

import json
from pathlib import Path

from edgespool.exporters.compress import QuantPolicy
from edgespool.exporters.export import export_model
from edgespool.exporters.synth import SyntheticModel
from edgespool.runtime.bundle.config import ModelConfig


def word_tokenizer_json(vocab: int) -> str:
    """A trivial WordLevel tokenizer with ``vocab`` entries (tokens ``t0 .. t{vocab-1}``), whitespace split."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok.to_str()


def dense_config(*, vocab: int = 256, hidden: int = 64, layers: int = 6, inter: int = 128, heads: int = 4,
                 kv_heads: int = 2, max_pos: int = 512, tie: bool = False) -> ModelConfig:
    return ModelConfig(arch="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                       num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
                       rms_norm_eps=1e-5, max_position_embeddings=max_pos, tie_word_embeddings=tie,
                       bos_token_id=1, eos_token_ids=(2,))


def moe_config(*, vocab: int = 256, hidden: int = 64, layers: int = 4, moe_inter: int = 64, experts: int = 8,
               top_k: int = 2, heads: int = 4, kv_heads: int = 2, max_pos: int = 512) -> ModelConfig:
    return ModelConfig(arch="mixtral", vocab_size=vocab, hidden_size=hidden, intermediate_size=moe_inter,
                       num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
                       rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=max_pos, num_experts=experts,
                       num_experts_per_tok=top_k, moe_intermediate_size=moe_inter, norm_topk_prob=True,
                       moe_layers=tuple(range(layers)), bos_token_id=1, eos_token_ids=(2,))


def make_bundle(out_dir: str | Path, cfg: ModelConfig, *, quant: str = "int8", seed: int = 0,
                expert_bits: int | None = None) -> Path:
    """Export a random-weight model of ``cfg`` as a bundle at ``out_dir`` (no ONNX, no kernels)."""
    out = Path(out_dir)
    if (out / "manifest.json").exists():
        m = json.loads((out / "manifest.json").read_text())
        if m.get("model") == cfg.to_dict() and m.get("quant", {}).get("quant") == quant:
            return out
    src = SyntheticModel(cfg, word_tokenizer_json(cfg.vocab_size), seed)
    export_model(src, out, policy=QuantPolicy(quant=quant, expert_bits=expert_bits), overwrite=True, onnx=False,
                 kernels=False, progress=False)
    return out
