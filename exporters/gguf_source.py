"""GGUF files (as llama.cpp's ``convert_hf_to_gguf.py`` writes them) as a
:class:`~edgespool.exporters.source.SourceModel`.

The file is opened with :class:`~edgespool.exporters.gguf_reader.GGUFReaderLite` (memory-mapped, header bounded by
the file size: only the tensors asked for are read). GGUF metadata of the
supported GGUF architectures is mapped onto :class:`~edgespool.runtime.bundle.config.ModelConfig`:

    GGUF arch   canonical arch                           notes
    llama       llama (Llama, Mistral), mixtral          mixtral when ``llama.expert_count`` > 0
    qwen2       qwen2                                    q/k/v biases
    qwen2moe    qwen2_moe                                shared expert + its sigmoid gate
    olmoe       olmoe                                    RMSNorm on the whole q and k projections
    qwen3       qwen3                                    per-head RMSNorm on q and k (``attn_q_norm`` [D])
    qwen3moe    qwen3_moe                                per-head q/k RMSNorm; top-k always renormalised
    granite     granite                                  Granite's embedding/attention/residual/logit scales
    phi3        phi3                                     fused ``attn_qkv`` and ``ffn_up`` (gate rows first) split
    gemma2      gemma2                                   GeGLU, post-norms, soft-capping, alternating sliding layers
    gemma3      gemma3                                   GeGLU, post-norms, per-head q/k norm, 5 local : 1 global
    smollm3     smollm3                                  no RoPE on every 4th layer (llama.cpp's fixed step)

GGUF tensor names are mapped onto the canonical names by the data tables :data:`GLOBAL_TENSORS`,
:data:`LAYER_TENSORS` and :data:`EXPERT_TENSORS`. GGUF stores a ``[out, in]`` matrix with ggml dims ``(in, out)``;
the reader's numpy view is already ``[out, in]``, and merged experts (``ffn_*_exps``) are ``[E, out, in]``.

Two conversions undo what the converter did:

* llama.cpp runs the ``llama``, ``granite`` and ``smollm3`` architectures with interleaved ("normal") RoPE, so the converter
  permutes the rows of ``attn_q``/``attn_k`` (and their biases) within each head (``LlamaModel.permute``).
  :func:`unpermute_qk` inverts that, so canonical tensors follow the Hugging Face ``rotate_half`` convention the
  engine uses. The other architectures use NEOX RoPE in llama.cpp and are written unpermuted.
* Quantised tensors are dequantised to float32 (:func:`dequantize`), one expert at a time for merged experts.

Tensor types read: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (each checked against
llama.cpp's own ``dequantize_row_*`` in the tests). Anything else raises :class:`UnsupportedModelError` naming the
tensor and its type.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..runtime.bundle.config import ModelConfig
from ..runtime.bundle.ggml_schemes import GGML_BLOCKS
from ..runtime.bundle.names import parse_tensor
from ..runtime.bundle.schemes import QTensor, get_scheme
from .fused import FUSED_PARTS, fused_rows
from .gguf_arch import (FUSED_ARCHS, GGUF_ARCHS, GRANITE_SCALES, NORM_TOPK, PERMUTED_QK_ARCHS,  # noqa: F401
                        SUPPORTED_ARCHS, gemma_config, llama3_freq_factors, llama3_from_freq_factors)
from .source import TokenizerSpec

# Canonical name -> GGUF tensor name. {i} = layer (``blk.{i}``).
GLOBAL_TENSORS: dict[str, str] = {"embed": "token_embd.weight", "norm": "output_norm.weight",
                                  "lm_head": "output.weight"}
LAYER_TENSORS: dict[str, str] = {
    "attn_norm": "attn_norm.weight",
    "wq": "attn_q.weight", "wk": "attn_k.weight", "wv": "attn_v.weight",
    "bq": "attn_q.bias", "bk": "attn_k.bias", "bv": "attn_v.bias",
    "q_norm": "attn_q_norm.weight", "k_norm": "attn_k_norm.weight",
    "wo": "attn_output.weight",
    "post_attn_norm": "post_attention_norm.weight",
    "ffn_norm": "ffn_norm.weight", "post_ffn_norm": "post_ffw_norm.weight",
    "ffn.gate": "ffn_gate.weight", "ffn.up": "ffn_up.weight", "ffn.down": "ffn_down.weight",
    "router": "ffn_gate_inp.weight",
    "shared.gate": "ffn_gate_shexp.weight", "shared.up": "ffn_up_shexp.weight", "shared.down": "ffn_down_shexp.weight",
    "shared_gate": "ffn_gate_inp_shexp.weight",
}
# Canonical expert part -> (merged 3-D tensor [E, out, in], legacy per-expert 2-D tensor name with {e})
EXPERT_TENSORS: dict[str, tuple[str, str]] = {
    "gate": ("ffn_gate_exps.weight", "ffn_gate.{e}.weight"),
    "up": ("ffn_up_exps.weight", "ffn_up.{e}.weight"),
    "down": ("ffn_down_exps.weight", "ffn_down.{e}.weight"),
}

FLOAT_TYPES = ("F32", "F16", "BF16")
QUANT_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
SUPPORTED_TYPES = FLOAT_TYPES + QUANT_TYPES


# -- tensor data ------------------------------------------------------------------------------------------------
def dequantize(data: np.ndarray, type_name: str, where: str = "tensor") -> np.ndarray:
    """Float32 values of raw GGUF tensor ``data`` (the reader's numpy view: float arrays for F32/F16, bytes
    ``[..., row_bytes]`` for BF16 and block-quantised types) of ggml type ``type_name``."""
    if type_name == "F32":
        return np.array(data, dtype=np.float32)
    if type_name == "F16":
        return np.asarray(data).astype(np.float32)
    if type_name == "BF16":
        raw = np.ascontiguousarray(data).view(np.uint16)
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if type_name in QUANT_TYPES:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize as gguf_dequantize

        return np.asarray(gguf_dequantize(np.asarray(data), GGMLQuantizationType[type_name]), dtype=np.float32)
    raise UnsupportedModelError(f"{where}: tensor type {type_name} is not supported; supported: "
                                f"{', '.join(SUPPORTED_TYPES)}")


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's ``LlamaModel.permute`` on ``w`` (``[n_head*D, ...]`` q/k weight or bias rows): GGUF row
    ``h*D + 2j + t`` holds HF row ``h*D + t*D/2 + j``."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ModelFormatError(f"cannot undo the RoPE row permutation: {rows} rows for {n_head} heads")
    d2 = rows // n_head // 2
    return np.ascontiguousarray(w.reshape(n_head, d2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


# -- metadata ---------------------------------------------------------------------------------------------------
def _scalar(v: Any) -> Any:
    """Shortest round-trip value of a float32 metadata value (9.999999747e-06 -> 1e-05); other values as is."""
    if isinstance(v, (np.floating, float)):
        return float(str(np.float32(v)))
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


class GGUFModel:
    """A GGUF decoder model opened memory-mapped, exposed with canonical names and float32 tensors."""

    format = "gguf"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.reader = _open_reader(self.path)
        self._tensors = {t.name: t for t in self.reader.tensors}
        self.gguf_arch = self._meta_str("general.architecture")
        if self.gguf_arch not in GGUF_ARCHS:
            raise UnsupportedModelError(f"{self.path}: GGUF architecture {self.gguf_arch!r} is not supported; "
                                        f"supported: {SUPPORTED_ARCHS}")
        self._check_types()
        self.config = self._config()
        bad = self.config.problem()
        if bad is not None:
            key = self._config_keys().get(bad[0])
            raise ModelFormatError(f"{self.path}: " + (f"metadata key {key!r}: " if key else "") + bad[1])
        self._check_shapes()

    # metadata access
    def meta(self, key: str, default: Any = None) -> Any:
        """Metadata value ``key`` (scalar, string or list), or ``default`` when absent."""
        f = self.reader.fields.get(key)
        if f is None:
            return default
        try:
            return _scalar(f.contents())
        except Exception as e:  # malformed field parts
            raise ModelFormatError(f"{self.path}: metadata key {key!r} is unreadable ({e})") from None

    def _meta_str(self, key: str) -> str:
        v = self.meta(key)
        if not isinstance(v, str):
            raise ModelFormatError(f"{self.path}: metadata key {key!r} (a string) is missing")
        return v

    def _meta_int(self, key: str, default: Any = ...) -> int:
        v = self._meta_number(key, default, (int, np.integer), "an integer")
        return v if v is default else int(v)

    def _meta_float(self, key: str, default: Any = ...) -> float:
        v = self._meta_number(key, default, (int, float, np.integer, np.floating), "a number")
        return v if v is default else float(v)

    def _meta_number(self, key: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        """Metadata value ``key`` of one of ``types`` (``default`` when absent; ModelFormatError naming the key
        when it is missing without a default or of another type)."""
        v = self.meta(key)
        if v is None:
            if default is ...:
                raise ModelFormatError(f"{self.path}: metadata key {key!r} ({what}) is missing")
            return default
        if isinstance(v, bool) or not isinstance(v, types):
            raise ModelFormatError(f"{self.path}: metadata key {key!r} should be {what}, found {v!r}")
        return v

    def _has(self, name: str) -> bool:
        return name in self._tensors

    def _check_types(self) -> None:
        for t in self.reader.tensors:
            if t.tensor_type.name not in SUPPORTED_TYPES and t.name != "rope_freqs.weight":
                raise UnsupportedModelError(f"{self.path}: tensor {t.name!r} has type {t.tensor_type.name}, which is "
                                            f"not supported; supported: {', '.join(SUPPORTED_TYPES)}")

    def _config(self) -> ModelConfig:
        a = self.gguf_arch
        p = f"{a}."
        L = self._meta_int(p + "block_count")
        present = self._layers_present()
        if L > present:  # before anything is sized by L
            raise ModelFormatError(f"{self.path}: metadata key {p + 'block_count'!r} is {L}, but the file holds "
                                   f"tensors of {present} layers (blk.0..blk.{present - 1}); the file is corrupt")
        H = self._meta_int(p + "embedding_length")
        nh = self._meta_int(p + "attention.head_count")
        nkv = self._meta_int(p + "attention.head_count_kv", nh)
        if min(L, H, nh, nkv) <= 0 or nh % nkv:
            raise ModelFormatError(f"{self.path}: bad attention metadata (block_count {L}, embedding_length {H}, "
                                   f"head_count {nh}, head_count_kv {nkv})")
        D = self._meta_int(p + "attention.key_length", H // nh)
        if self._meta_int(p + "attention.value_length", D) != D:
            raise UnsupportedModelError(f"{self.path}: attention.value_length != key_length is not supported")
        rot = self._meta_int(p + "rope.dimension_count", D)
        if rot != D:
            raise UnsupportedModelError(f"{self.path}: partial rotary embeddings (rope.dimension_count {rot} < head "
                                        f"dim {D}) are not supported")
        emb = self._tensors.get("token_embd.weight")
        if emb is None:
            raise ModelFormatError(f"{self.path}: tensor 'token_embd.weight' is missing")
        V = int(emb.shape[1])
        inter = self._meta_int(p + "feed_forward_length", 0)
        E = self._meta_int(p + "expert_count", 0)
        k = self._meta_int(p + "expert_used_count", 0)
        arch = GGUF_ARCHS[a]
        kw: dict[str, Any] = {}
        if E > 0:
            if a == "llama":
                arch = "mixtral"
            elif a == "qwen2":
                raise UnsupportedModelError(f"{self.path}: qwen2 with experts is not a known GGUF layout")
            if not 0 < k <= E:
                raise ModelFormatError(f"{self.path}: expert_used_count {k} is not in 1..expert_count {E}")
            moe_layers = tuple(i for i in range(L) if self._has(f"blk.{i}.ffn_gate_inp.weight"))
            if not moe_layers:
                raise ModelFormatError(f"{self.path}: expert_count {E} but no 'blk.N.ffn_gate_inp.weight' router")
            i0 = moe_layers[0]
            M = self._meta_int(p + "expert_feed_forward_length", 0) or self._expert_rows(i0)
            S = 0
            if self._has(f"blk.{i0}.ffn_gate_shexp.weight"):
                S = self._meta_int(p + "expert_shared_feed_forward_length", 0) or int(
                    self._tensors[f"blk.{i0}.ffn_gate_shexp.weight"].shape[1])
            norm = self.meta(p + "expert_weights_norm")
            kw = dict(num_experts=E, num_experts_per_tok=k, moe_intermediate_size=M,
                      shared_expert_intermediate_size=S, moe_layers=moe_layers,
                      norm_topk_prob=bool(norm) if norm is not None else NORM_TOPK[a])
            if a == "llama" and not inter:
                inter = M
        if not inter:
            dense = [i for i in range(L) if i not in kw.get("moe_layers", ())]
            if dense:
                raise ModelFormatError(f"{self.path}: metadata key {p + 'feed_forward_length'!r} is missing")
            inter = kw.get("moe_intermediate_size", 0)
        clip = self.meta(p + "attention.clamp_kqv")
        if clip is not None and a != "olmoe":
            raise UnsupportedModelError(f"{self.path}: attention.clamp_kqv is only supported for olmoe")
        if a == "granite":
            kw.update({f: v for f, key in GRANITE_SCALES.items() if (v := self._meta_float(p + key, 0.0))})
        window = self._meta_int(p + "attention.sliding_window", 0) or None
        if a in ("gemma2", "gemma3"):
            kw.update(gemma_config(self, L, H, nh, D))
            window = kw.pop("sliding_window")
        if a == "smollm3":  # llama.cpp: n_no_rope_layer_step = 4, not in the file
            kw["nope_layers"] = tuple(i for i in range(L) if (i + 1) % 4 == 0)
        bos = self._meta_int("tokenizer.ggml.bos_token_id", None)
        eos = [self._meta_int(key, None) for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")]
        eos_ids = tuple(dict.fromkeys(e for e in eos if e is not None))
        return ModelConfig(
            arch=arch, vocab_size=V, hidden_size=H, intermediate_size=inter, num_layers=L, num_heads=nh,
            num_kv_heads=nkv, head_dim=D,
            rms_norm_eps=self._meta_float(p + "attention.layer_norm_rms_epsilon"),
            rope_theta=self._meta_float(p + "rope.freq_base", 10000.0),
            rope_scaling=self._rope_scaling(D),
            max_position_embeddings=self._meta_int(p + "context_length", 4096),
            tie_word_embeddings=not self._has("output.weight"),
            attention_bias=self._has("blk.0.attn_q.bias"),
            qk_norm=self._has("blk.0.attn_q_norm.weight"),
            qk_norm_per_head=self._has("blk.0.attn_q_norm.weight") and self._rows("blk.0.attn_q_norm.weight") == D,
            clip_qkv=float(clip) if clip is not None else None,
            sliding_window=window, bos_token_id=bos, eos_token_ids=eos_ids, **kw)

    def _config_keys(self) -> dict[str, str]:
        """ModelConfig field -> the GGUF metadata key it comes from (for error messages)."""
        p = f"{self.gguf_arch}."
        return {"rms_norm_eps": p + "attention.layer_norm_rms_epsilon", "rope_theta": p + "rope.freq_base",
                "num_layers": p + "block_count", "hidden_size": p + "embedding_length",
                "num_heads": p + "attention.head_count", "num_kv_heads": p + "attention.head_count_kv",
                "head_dim": p + "attention.key_length", "intermediate_size": p + "feed_forward_length",
                "max_position_embeddings": p + "context_length", "num_experts": p + "expert_count",
                "num_experts_per_tok": p + "expert_used_count", "bos_token_id": "tokenizer.ggml.bos_token_id",
                "eos_token_ids": "tokenizer.ggml.eos_token_id / eot_token_id",
                "sliding_window": p + "attention.sliding_window"}

    def _layers_present(self) -> int:
        """How many layers ``blk.0`` .. ``blk.{n-1}`` the file holds tensors of (the first missing index)."""
        idx = set()
        for name in self._tensors:
            parts = name.split(".", 2)
            if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit():
                idx.add(int(parts[1]))
        n = 0
        while n in idx:
            n += 1
        return n

    def _rows(self, name: str) -> int:
        """Element count of a 1-D tensor (its ggml ne0)."""
        return int(self._tensors[name].shape[0])

    def _expert_rows(self, i: int) -> int:
        t = self._tensors.get(f"blk.{i}.ffn_gate_exps.weight") or self._tensors.get(f"blk.{i}.ffn_gate.0.weight")
        if t is None:
            raise ModelFormatError(f"{self.path}: layer {i} has a router but no 'blk.{i}.ffn_gate_exps.weight'")
        return int(t.shape[1])

    def _rope_scaling(self, head_dim: int) -> dict[str, Any] | None:
        p = f"{self.gguf_arch}."
        kind = self.meta(p + "rope.scaling.type")
        factor = self.meta(p + "rope.scaling.factor")
        freqs = self._tensors.get("rope_freqs.weight")
        if "rope_factors_long.weight" in self._tensors or "rope_factors_short.weight" in self._tensors:
            raise UnsupportedModelError(f"{self.path}: LongRoPE (tensors rope_factors_long/short: per-frequency "
                                        "factors chosen by context length, e.g. Phi-3's 128k-context models) is not "
                                        "supported; models without rope scaling (Phi-3 4k) are")
        if freqs is not None:
            if kind not in (None, "none"):
                raise UnsupportedModelError(f"{self.path}: rope_freqs together with rope.scaling.type {kind!r} is "
                                            "not supported")
            return llama3_from_freq_factors(self.path, dequantize(freqs.data, freqs.tensor_type.name).ravel(),
                                             head_dim, self._meta_float(p + "rope.freq_base", 10000.0))
        if kind in (None, "none") or (kind == "linear" and factor in (None, 1.0)):
            return None
        if kind == "linear":
            return {"rope_type": "linear", "factor": float(factor)}
        if kind == "yarn" and factor is not None:
            out: dict[str, Any] = {"rope_type": "yarn", "factor": float(factor)}
            orig = self.meta(p + "rope.scaling.original_context_length")
            if orig is not None:
                out["original_max_position_embeddings"] = int(orig)
            for gkey, hkey in (("rope.scaling.yarn_beta_fast", "beta_fast"), ("rope.scaling.yarn_beta_slow",
                                                                               "beta_slow")):
                v = self.meta(p + gkey)
                if v is not None:
                    out[hkey] = float(v)
            ext = self.meta(p + "rope.scaling.yarn_ext_factor")
            if ext is not None and float(ext) not in (1.0, -1.0):
                raise UnsupportedModelError(f"{self.path}: YaRN ext_factor {ext} is not supported (only 1)")
            if self.meta(p + "rope.scaling.yarn_attn_factor") is not None:
                # llama.cpp multiplies its mscale by this value, transformers replaces the mscale by its
                # attention_factor: the file does not say which one the model was trained with.
                raise UnsupportedModelError(f"{self.path}: YaRN with rope.scaling.yarn_attn_factor is not supported")
            return out
        raise UnsupportedModelError(f"{self.path}: rope.scaling.type {kind!r} is not supported; supported: none, "
                                    "linear, yarn, llama3 (rope_freqs)")

    # tensor access
    def _gguf_name(self, name: str) -> tuple[str, int | None]:
        """(GGUF tensor name, expert index into a merged tensor or None) of canonical ``name``."""
        if name in GLOBAL_TENSORS:
            return GLOBAL_TENSORS[name], None
        n = parse_tensor(name)
        if n.layer is not None:
            i = n.layer
            if n.expert is not None and n.leaf in EXPERT_TENSORS:
                merged, single = EXPERT_TENSORS[n.leaf]
                if self._has(f"blk.{i}.{merged}"):
                    return f"blk.{i}.{merged}", n.expert
                return f"blk.{i}.{single.format(e=n.expert)}", None
            if n.expert is None and n.leaf in FUSED_ARCHS.get(self.gguf_arch, {}):
                return f"blk.{i}.{FUSED_ARCHS[self.gguf_arch][n.leaf]}", None
            if n.expert is None and n.leaf in LAYER_TENSORS:
                return f"blk.{i}.{LAYER_TENSORS[n.leaf]}", None
        raise ModelFormatError(f"{self.path}: {name!r} is not a canonical tensor name")

    def _fused(self, name: str) -> tuple[int, int, int] | None:
        """(first row, end row, all rows) of canonical ``name`` inside a fused tensor (phi3), else None."""
        n = parse_tensor(name)
        if n.expert is not None or n.leaf not in FUSED_ARCHS.get(self.gguf_arch, {}):
            return None
        return fused_rows(self.config, FUSED_PARTS[n.leaf])

    def tensor(self, name: str) -> np.ndarray:
        """Canonical tensor ``name`` as float32 ``[out, in]`` (dequantised; llama q/k rows un-permuted)."""
        gname, expert = self._gguf_name(name)
        t = self._tensors.get(gname)
        if t is None:
            raise ModelFormatError(f"{self.path}: tensor {gname!r} (for {name!r}) is missing")
        data = t.data
        if expert is not None:
            if data.ndim != 3 or not 0 <= expert < data.shape[0]:
                raise ModelFormatError(f"{self.path}: tensor {gname!r} has shape {list(t.shape)}, no expert {expert}")
            data = data[expert]
        if (rows := self._fused(name)) is not None:  # whole rows of the fused tensor (blocks never span rows)
            data = data[rows[0]:rows[1]]
        try:
            w = dequantize(data, t.tensor_type.name, f"{self.path}: tensor {gname!r}")
        except (ValueError, IndexError) as e:
            raise ModelFormatError(f"{self.path}: tensor {gname!r} is corrupt ({e})") from None
        last = name.rsplit(".", 1)[-1]
        if self.gguf_arch in PERMUTED_QK_ARCHS and last in ("wq", "bq", "wk", "bk"):
            heads = self.config.num_heads if last in ("wq", "bq") else self.config.num_kv_heads
            w = unpermute_qk(w, heads)
        if last == "shared_gate":
            w = w.reshape(1, -1)
        return w

    def stored(self, name: str) -> QTensor:
        """Canonical tensor ``name`` exactly as the file stores it (``--quant keep``): F32 -> f32, F16 -> f16,
        BF16 -> bf16, block types -> their ggml scheme (uint8 rows of blocks, bytes identical to the file's; llama
        q/k rows un-permuted as whole rows). 1-D tensors and F32 come back as f32."""
        gname, expert = self._gguf_name(name)
        t = self._tensors.get(gname)
        if t is None:
            raise ModelFormatError(f"{self.path}: tensor {gname!r} (for {name!r}) is missing")
        ty = t.tensor_type.name
        shape = self.config.tensor_shapes()[name]
        if ty == "F32" or len(shape) != 2:
            return QTensor("f32", tuple(shape), np.ascontiguousarray(self.tensor(name), np.float32).reshape(shape))
        if ty not in GGML_BLOCKS and ty not in ("F16", "BF16"):
            raise UnsupportedModelError(f"{self.path}: tensor {gname!r} has type {ty}, which edgespool cannot keep; "
                                        f"keepable: F32, F16, BF16, {', '.join(GGML_BLOCKS)} (or re-quantise with "
                                        "--quant int8 / int4)")
        data = t.data if expert is None else t.data[expert]
        if (fused := self._fused(name)) is not None:
            data = data[fused[0]:fused[1]]
        scheme = get_scheme(ty.lower())
        rows = np.asarray(data).reshape(shape[0], -1)
        if ty == "F16":
            rows = rows.view(np.float16).reshape(shape)
        elif ty == "BF16":
            rows = rows.view(np.uint16).reshape(shape)
        elif rows.shape[1] != scheme.row_data_bytes(shape[1]):
            raise ModelFormatError(f"{self.path}: tensor {gname!r} ({ty}) rows hold {rows.shape[1]} bytes, "
                                   f"expected {scheme.row_data_bytes(shape[1])} for {shape[1]} values")
        last = name.rsplit(".", 1)[-1]
        if self.gguf_arch in PERMUTED_QK_ARCHS and last in ("wq", "wk"):
            rows = unpermute_qk(rows, self.config.num_heads if last == "wq" else self.config.num_kv_heads)
        return QTensor(scheme.name, tuple(shape), np.ascontiguousarray(rows))

    def release(self, name: str) -> None:
        """The export is done with canonical tensor ``name``: drop its file pages from this process."""
        gname, _ = self._gguf_name(name)
        t = self._tensors.get(gname)
        if t is not None:
            self.reader.drop_pages(int(t.data_offset), int(t.n_bytes))

    def source_nbytes(self, name: str) -> int:
        """Bytes canonical tensor ``name`` occupies in the GGUF file (its share of a merged expert tensor)."""
        gname, expert = self._gguf_name(name)
        t = self._tensors[gname]
        n = int(t.n_bytes)
        if (rows := self._fused(name)) is not None:
            return n // rows[2] * (rows[1] - rows[0])
        return n // int(t.data.shape[0]) if expert is not None else n

    def _check_shapes(self) -> None:
        """Every canonical tensor the config needs exists with the right shape (from headers; no data read)."""
        for name, shape in self.config.tensor_shapes().items():
            gname, expert = self._gguf_name(name)
            t = self._tensors.get(gname)
            if t is None:
                raise ModelFormatError(f"{self.path}: tensor {gname!r} (for {name!r}) is missing")
            got = tuple(int(x) for x in reversed(t.shape.tolist()))  # ggml dims are (in, out[, E])
            if expert is not None:
                if len(got) != 3 or expert >= got[0]:
                    raise ModelFormatError(f"{self.path}: tensor {gname!r} has shape {list(got)}, expected "
                                           f"[{self.config.num_experts}, {shape[0]}, {shape[1]}]")
                got = got[1:]
            if name.endswith("shared_gate") and got == (shape[1],):
                got = (1, shape[1])
            if (rows := self._fused(name)) is not None:
                shape = (rows[2], shape[1])
            if got != tuple(shape):
                raise ModelFormatError(f"{self.path}: tensor {gname!r} has shape {list(got)}, expected "
                                       f"{list(shape)} for {name!r}")

    # tokenizer
    def tokenizer(self) -> TokenizerSpec:
        """The embedded vocabulary (``tokenizer.ggml.*``) converted to `tokenizers` JSON; BOS is added by the
        runtime when ``tokenizer.ggml.add_bos_token`` (default true for SentencePiece vocabularies)."""
        from .tokenizers_convert import gguf_vocab_to_tokenizer_json

        model = self.meta("tokenizer.ggml.model")
        text = gguf_vocab_to_tokenizer_json(self.reader, where=str(self.path))
        add_bos = self.meta("tokenizer.ggml.add_bos_token")
        if add_bos is None:
            add_bos = model == "llama"
        bos = self.config.bos_token_id
        template = self.meta("tokenizer.chat_template")
        if template is not None and not isinstance(template, str):
            raise ModelFormatError(f"{self.path}: metadata key 'tokenizer.chat_template' is a "
                                   f"{type(template).__name__}, expected a string")
        return TokenizerSpec(json=text, bos_token_id=bos, eos_token_ids=self.config.eos_token_ids,
                             add_bos=bool(add_bos) and bos is not None, chat_template=template,
                             special_tokens=self._special_tokens())

    def _special_tokens(self) -> dict[str, str]:
        """Texts of the special tokens the ``tokenizer.ggml.*_token_id`` keys name, looked up in the token list
        (what llama.cpp gives chat templates as ``bos_token`` / ``eos_token``)."""
        f = self.reader.fields.get("tokenizer.ggml.tokens")
        out: dict[str, str] = {}
        if f is None:
            return out
        for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                          ("unk_token", "unknown_token_id"), ("sep_token", "seperator_token_id"),
                          ("pad_token", "padding_token_id"), ("mask_token", "mask_token_id")):
            tid = self.meta(f"tokenizer.ggml.{key}")
            if isinstance(tid, (int, np.integer)) and 0 <= int(tid) < len(f.data):
                out[name] = bytes(f.parts[f.data[int(tid)]]).decode("utf-8", errors="replace")
        return out

    def close(self) -> None:
        """Drop the memory map."""
        self._tensors = {}
        self.reader = None  # type: ignore[assignment]

    def __enter__(self) -> "GGUFModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_reader(path: Path):
    """:class:`~edgespool.exporters.gguf_reader.GGUFReaderLite` on ``path`` (the header parsed with every count,
    length and offset bounded by the file size): every failure is a one-line ModelFormatError, an unknown tensor
    type an UnsupportedModelError."""
    if not path.exists():
        raise ModelFormatError(f"{path}: no such file")
    if not path.is_file():
        raise ModelFormatError(f"{path}: not a file (expected a .gguf file)")
    from .gguf_reader import GGUFReaderLite

    try:
        return GGUFReaderLite(path)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{e}; supported: {', '.join(SUPPORTED_TYPES)}") from None
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read the GGUF file ({e.strerror or e})") from None


def open_gguf_model(path: str | os.PathLike) -> GGUFModel:
    """Open a GGUF file as a SourceModel (config and tensor shapes are validated on open)."""
    return GGUFModel(path)
