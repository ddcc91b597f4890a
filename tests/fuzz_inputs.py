"""Seed inputs for the hardening tests and fuzzers: a tiny but complete llama GGUF (written with gguf-py, the
reference writer), its byte layout (offsets of every metadata value and tensor-info field, so mutations can aim),
and helpers to rewrite one field."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VOCAB = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581a", "\u2581b", "ab", "\u2581ab"]


def write_tiny_llama_gguf(path: str | Path, *, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2,
                          ffn: int = 64, seed: int = 0, alignment: int | None = None,
                          extra: dict | None = None) -> Path:
    """A valid llama GGUF (f32 tensors, SentencePiece-style vocabulary with byte fallback) small enough to export
    in well under a second."""
    import gguf

    rng = np.random.default_rng(seed)
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_tokenizer_model("llama")
    w.add_token_list(VOCAB)
    w.add_token_scores([0.0] * 3 + [-1000.0] * 256 + [-1.0, -2.0, -3.0, -4.0])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1, 1, 1, 1])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    for k, v in (extra or {}).items():
        getattr(w, k)(v)
    V = len(VOCAB)
    hd = hidden // heads

    def t(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    t("token_embd.weight", V, hidden)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        t(f"blk.{i}.attn_q.weight", hidden, hidden)
        t(f"blk.{i}.attn_k.weight", kv_heads * hd, hidden)
        t(f"blk.{i}.attn_v.weight", kv_heads * hd, hidden)
        t(f"blk.{i}.attn_output.weight", hidden, hidden)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        t(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        t(f"blk.{i}.ffn_up.weight", ffn, hidden)
        t(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@dataclass
class GGUFLayout:
    """Where each metadata value and tensor-info field of a GGUF file lies (byte offsets)."""

    kv: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # key -> (type offset, value offset, vtype)
    tensors: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (ttype offset, data offset field)
    slots: list[tuple[int, str, str]] = field(default_factory=list)  # (offset, struct format, what) of every number
    data_start: int = 0


_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_layout(raw: bytes) -> GGUFLayout:
    """Parse a well-formed GGUF's header into offsets (a seed's map for aimed mutations): every count, length,
    type id, scalar value, dimension and tensor offset is a slot."""
    _, _, nt, nkv = struct.unpack_from("<4sIQQ", raw, 0)
    out = GGUFLayout(slots=[(8, "<Q", "tensor_count"), (16, "<Q", "kv_count")])
    off = 24

    def s(o: int, what: str) -> tuple[str, int]:
        out.slots.append((o, "<Q", f"strlen {what}"))
        n = struct.unpack_from("<Q", raw, o)[0]
        return raw[o + 8:o + 8 + n].decode(), o + 8 + n

    for _ in range(nkv):
        key, off = s(off, "key")
        vt = struct.unpack_from("<I", raw, off)[0]
        out.kv[key] = (off, off + 4, vt)
        out.slots.append((off, "<I", f"type {key}"))
        off += 4
        if vt == 8:
            _, off = s(off, key)
        elif vt == 9:
            et, n = struct.unpack_from("<IQ", raw, off)
            out.slots += [(off, "<I", f"etype {key}"), (off + 4, "<Q", f"count {key}")]
            off += 12
            for j in range(n):
                if et == 8:
                    _, off = s(off, f"{key}[{j}]")
                else:
                    if j < 4:
                        out.slots.append((off, _FMT[et], f"{key}[{j}]"))
                    off += struct.calcsize(_FMT[et])
        else:
            out.slots.append((off, _FMT[vt], f"value {key}"))
            off += struct.calcsize(_FMT[vt])
    for _ in range(nt):
        name, off = s(off, "tensor name")
        nd = struct.unpack_from("<I", raw, off)[0]
        out.slots.append((off, "<I", f"n_dims {name}"))
        for j in range(nd):
            out.slots.append((off + 4 + 8 * j, "<Q", f"dim{j} {name}"))
        off += 4 + 8 * nd
        out.tensors[name] = (off, off + 4)
        out.slots += [(off, "<I", f"ttype {name}"), (off + 4, "<Q", f"offset {name}")]
        off += 12
    out.data_start = off
    return out


def patch(raw: bytes, offset: int, fmt: str, *values) -> bytes:
    """``raw`` with ``struct.pack(fmt, *values)`` written at ``offset``."""
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, *values)
    return bytes(b)


def write_tiny_hf_llama(out_dir: str | Path, *, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2,
                        ffn: int = 64, vocab: int = 64, seed: int = 0) -> Path:
    """A Hugging Face LlamaForCausalLM checkpoint directory (config.json + model.safetensors written with the
    safetensors library), without a tokenizer: enough for the importer's config and header checks."""
    import json

    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
           "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": 256,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2,
           "tie_word_embeddings": False, "hidden_act": "silu"}
    (out / "config.json").write_text(json.dumps(cfg))
    hd = hidden // heads

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    t = {"model.embed_tokens.weight": r(vocab, hidden), "model.norm.weight": np.ones(hidden, np.float32),
         "lm_head.weight": r(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = np.ones(hidden, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
        t[p + "self_attn.q_proj.weight"] = r(hidden, hidden)
        t[p + "self_attn.k_proj.weight"] = r(kv_heads * hd, hidden)
        t[p + "self_attn.v_proj.weight"] = r(kv_heads * hd, hidden)
        t[p + "self_attn.o_proj.weight"] = r(hidden, hidden)
        t[p + "mlp.gate_proj.weight"] = r(ffn, hidden)
        t[p + "mlp.up_proj.weight"] = r(ffn, hidden)
        t[p + "mlp.down_proj.weight"] = r(hidden, ffn)
    save_file(t, str(out / "model.safetensors"))
    return out
