"""Synthesize the embedded default model: a deterministic Mixtral-style MoE with random weights and a byte-level
BPE tokenizer trained offline on the bundled corpus (apps/data/corpus.txt). No torch, no network.

The weights are RANDOM: the model has the architecture of Mixtral (RMSNorm, RoPE, GQA, 8 experts top-2 SwiGLU) but
knows nothing; its text is gibberish. It exists to exercise the whole pipeline on any machine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.bundle.config import ModelConfig
from .source import TokenizerSpec

CORPUS = Path(__file__).resolve().parent.parent / "apps" / "data" / "corpus.txt"
SPECIALS = ["<unk>", "<s>", "</s>"]


def train_demo_tokenizer(vocab_size: int = 512, corpus: Path = CORPUS) -> str:
    """Train a byte-level BPE (HF `tokenizers`) on ``corpus``; deterministic. Returns tokenizer JSON text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(corpus)], trainer)
    return tok.to_str()


def demo_config(vocab_size: int, *, hidden: int = 256, layers: int = 4, experts: int = 8, top_k: int = 2,
                moe_intermediate: int = 512, heads: int = 8, kv_heads: int = 4) -> ModelConfig:
    """The demo's Mixtral-style config (small enough for any board)."""
    return ModelConfig(
        arch="mixtral", vocab_size=vocab_size, hidden_size=hidden, intermediate_size=moe_intermediate,
        num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads, rms_norm_eps=1e-5,
        rope_theta=1e6, max_position_embeddings=2048, num_experts=experts, num_experts_per_tok=top_k,
        moe_intermediate_size=moe_intermediate, norm_topk_prob=True, moe_layers=tuple(range(layers)),
        bos_token_id=1, eos_token_ids=(2,),
    )


@dataclass
class SyntheticModel:
    """A SourceModel whose tensors are drawn from a seeded normal distribution (std 1/sqrt(fan_in) for matrices,
    1 + small noise for norm weights)."""

    config: ModelConfig
    tokenizer_json: str
    seed: int = 0
    path: Path = field(default_factory=lambda: Path("<synthetic mixtral>"))
    format: str = "synthetic"

    def tensor(self, name: str) -> np.ndarray:
        shape = self.config.tensor_shapes()[name]
        # a per-tensor seed keeps every tensor independent of the order it is asked in
        rng = np.random.default_rng([self.seed, *name.encode()])
        if len(shape) == 1:
            return (1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
        scale = 1.0 if name == "embed" else 1.0 / np.sqrt(shape[1])
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)

    def tokenizer(self) -> TokenizerSpec:
        return TokenizerSpec(self.tokenizer_json, self.config.bos_token_id, self.config.eos_token_ids, True)

    def close(self) -> None:
        return None


def synth_demo_model(seed: int = 0, **config_overrides: int) -> SyntheticModel:
    """The embedded default: tokenizer trained on the bundled corpus + random Mixtral-style weights."""
    tok_json = train_demo_tokenizer()
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(tok_json).get_vocab_size()
    return SyntheticModel(demo_config(vocab, **config_overrides), tok_json, seed)
