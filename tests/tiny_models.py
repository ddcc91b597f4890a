"""Test-only factory of tiny random-weight models of real architectures (transformers + torch), with offline-trained
tokenizers, and the transformers reference logits. Used by every parity test (HF, GGUF, ONNX)."""
from __future__ import annotations

import json
from pathlib import Path

import edgespool

import numpy as np

CORPUS = Path(edgespool.__file__).resolve().parent / "apps" / "data" / "corpus.txt"  # package data
ARCHS = ("llama", "mistral", "qwen2", "mixtral", "qwen2_moe", "olmoe", "qwen3", "qwen3_moe", "granite", "phi3", "gemma2",
         "gemma3", "smollm3")
SPM_ARCHS = ("llama", "mistral", "mixtral", "phi3", "gemma2")  # SentencePiece tokenizer.model (convert_hf_to_gguf accepts these as-is)
VOCAB = 512

_COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
               initializer_range=0.1, bos_token_id=1, eos_token_id=2)


def tiny_config(arch: str, **overrides):
    """A small transformers config of ``arch`` (hidden 64, 2 layers, 4 heads / 2 KV heads, 4 experts top-2)."""
    import transformers as tf

    kw = dict(_COMMON)
    if arch == "llama":
        cfg = tf.LlamaConfig(**kw, intermediate_size=128)
    elif arch == "mistral":
        cfg = tf.MistralConfig(**kw, intermediate_size=128, sliding_window=None)
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(**kw, intermediate_size=128)
    elif arch == "mixtral":
        cfg = tf.MixtralConfig(**kw, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2)
    elif arch == "qwen2_moe":
        cfg = tf.Qwen2MoeConfig(**kw, intermediate_size=128, moe_intermediate_size=32, num_experts=4,
                                num_experts_per_tok=2, shared_expert_intermediate_size=64, decoder_sparse_step=1,
                                norm_topk_prob=False)
    elif arch == "olmoe":
        cfg = tf.OlmoeConfig(**kw, intermediate_size=64, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False)
    elif arch == "qwen3":  # head_dim 32 != hidden / heads (as Qwen3's 128 is independent of its hidden size)
        cfg = tf.Qwen3Config(**kw, intermediate_size=128, head_dim=32)
    elif arch == "qwen3_moe":
        cfg = tf.Qwen3MoeConfig(**kw, intermediate_size=128, moe_intermediate_size=32, num_experts=4,
                                num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1)
        cfg.head_dim = 32
    elif arch == "granite":  # Granite 3.3's multipliers (attention 1/head_dim instead of head_dim ** -0.5)
        cfg = tf.GraniteConfig(**kw, intermediate_size=128, embedding_multiplier=12.0, attention_multiplier=1 / 16,
                               residual_multiplier=0.22, logits_scaling=8.0)
    elif arch == "phi3":  # fused qkv_proj / gate_up_proj
        cfg = tf.Phi3Config(**kw, intermediate_size=128, pad_token_id=0)
    elif arch == "gemma2":  # head_dim 32 (Gemma's 256 is independent of hidden too); sliding layer 0, global layer 1
        cfg = tf.Gemma2Config(**{**kw, "tie_word_embeddings": True}, intermediate_size=128, head_dim=32,
                              query_pre_attn_scalar=32, sliding_window=6, attn_logit_softcapping=50.0,
                              final_logit_softcapping=30.0)
    elif arch == "gemma3":  # 6 layers: the real 5 local : 1 global pattern; Gemma 3 4B's RoPE (global linear x8)
        cfg = tf.Gemma3TextConfig(**{**kw, "tie_word_embeddings": True, "num_hidden_layers": 6}, intermediate_size=128,
                                  head_dim=32, query_pre_attn_scalar=32, sliding_window=6, rope_parameters={
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                      "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                         "rope_theta": 1000000.0}})
    elif arch == "smollm3":  # 4 layers: layer 3 is NoPE (no_rope_layer_interval 4)
        cfg = tf.SmolLM3Config(**{**kw, "tie_word_embeddings": True, "num_hidden_layers": 4}, intermediate_size=128,
                               pad_token_id=0)
    else:
        raise ValueError(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


# Extra SentencePiece pieces per architecture: llama.cpp sets attributes of Phi-3's <|endoftext|> by name (a model
# whose general.name says phi3 fails to load without it)
SPM_EXTRA = {"phi3": ["<|endoftext|>"]}


def _train_spm(out_dir: Path, extra: list[str] | None = None) -> None:
    import sentencepiece as spm

    kw = {"user_defined_symbols": extra} if extra else {}
    spm.SentencePieceTrainer.train(
        input=str(CORPUS), model_prefix=str(out_dir / "tokenizer"), vocab_size=VOCAB, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        num_threads=1, minloglevel=2, **kw,
    )
    (out_dir / "tokenizer.vocab").unlink(missing_ok=True)
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": False}))


def _train_bpe(out_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|unk|>", "<|bos|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(CORPUS)], trainer)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|unk|>"}))


def make_hf_model(arch: str, out_dir: str | Path, *, seed: int = 0, dtype: str = "float32",
                  tokenizer: str | None = None, **overrides) -> Path:
    """Write a random-weight HF checkpoint of ``arch`` (config.json, model.safetensors, tokenizer) to ``out_dir``.
    ``tokenizer`` is "spm" (tokenizer.model) or "bpe" (tokenizer.json); default spm for Llama-family, else bpe."""
    import torch
    import transformers as tf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = tiny_config(arch, **overrides)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    model = model.to(getattr(torch, dtype)).eval()
    model.save_pretrained(out, safe_serialization=True)
    kind = tokenizer or ("spm" if arch in SPM_ARCHS else "bpe")
    if kind == "spm":
        _train_spm(out, SPM_EXTRA.get(arch))
    else:
        _train_bpe(out)
    return out


def hf_logits(model_dir: str | Path, input_ids: list[int] | np.ndarray) -> np.ndarray:
    """transformers' float32 logits ``[T, V]`` for one sequence (the reference)."""
    import torch
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.tensor([list(map(int, input_ids))]))
    return out.logits[0].float().numpy()


def hf_greedy(model_dir: str | Path, input_ids: list[int], n: int) -> list[int]:
    """transformers' greedy continuation of ``n`` tokens (no stop tokens)."""
    import torch
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([list(map(int, input_ids))]), max_new_tokens=n, do_sample=False,
                             min_new_tokens=n, eos_token_id=None, pad_token_id=0)
    return out[0, len(input_ids):].tolist()
