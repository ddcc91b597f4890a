"""Hugging Face checkpoints (config.json + *.safetensors) as a :class:`~edgespool.exporters.source.SourceModel`.

Supported: every class of :data:`~edgespool.runtime.bundle.config.ARCHITECTURES` (LlamaForCausalLM ..
SmolLM3ForCausalLM), as written by transformers 4.x or 5.x (``rope_parameters`` or ``rope_theta``/``rope_scaling``;
per-expert tensors or fused 3-D ``experts.gate_up_proj``/``experts.down_proj``). One ``model.safetensors``, several
``*.safetensors`` files, or a sharded checkpoint with ``model.safetensors.index.json``.

``config.json`` is mapped onto :class:`~edgespool.runtime.bundle.config.ModelConfig` by :func:`config_from_hf` (hf_config.py); tensor names
are mapped onto the canonical names by the data tables :data:`TENSOR_NAMES` (per-architecture overrides:
:data:`ARCH_TENSOR_NAMES`), :data:`FUSED_NAMES` (Phi-3's qkv_proj / gate_up_proj, split by rows) and
:data:`FUSED_EXPERT_NAMES`. Gemma's ``1 + w`` norm weights become ``1 + w`` (:data:`NORM_PLUS_ONE`).
Opening checks every tensor's presence and shape from the safetensors headers (no data is read); :meth:`HFModel.tensor`
then reads one tensor lazily (``safetensors.safe_open`` with numpy; bfloat16, which numpy lacks, is read as raw
bytes and widened to float32 exactly).
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..runtime.bundle.config import ModelConfig
from ..runtime.bundle.names import parse_tensor, tensor_class
from .hf_config import ARCH_DEFAULTS, HF_ARCHS, SUPPORTED, config_from_hf  # noqa: F401  (re-exported)
from .fused import FUSED_PARTS, fused_rows
from .source import SPECIAL_TOKEN_NAMES, TokenizerSpec

# Canonical tensor name pattern -> HF tensor names (first one present wins). {i} = layer, {e} = expert.
TENSOR_NAMES: dict[str, tuple[str, ...]] = {
    "embed": ("model.embed_tokens.weight",),
    "layers.{i}.attn_norm": ("model.layers.{i}.input_layernorm.weight",),
    "layers.{i}.wq": ("model.layers.{i}.self_attn.q_proj.weight",),
    "layers.{i}.wk": ("model.layers.{i}.self_attn.k_proj.weight",),
    "layers.{i}.wv": ("model.layers.{i}.self_attn.v_proj.weight",),
    "layers.{i}.bq": ("model.layers.{i}.self_attn.q_proj.bias",),
    "layers.{i}.bk": ("model.layers.{i}.self_attn.k_proj.bias",),
    "layers.{i}.bv": ("model.layers.{i}.self_attn.v_proj.bias",),
    "layers.{i}.q_norm": ("model.layers.{i}.self_attn.q_norm.weight",),
    "layers.{i}.k_norm": ("model.layers.{i}.self_attn.k_norm.weight",),
    "layers.{i}.wo": ("model.layers.{i}.self_attn.o_proj.weight",),
    "layers.{i}.ffn_norm": ("model.layers.{i}.post_attention_layernorm.weight",),
    "layers.{i}.ffn.gate": ("model.layers.{i}.mlp.gate_proj.weight",),
    "layers.{i}.ffn.up": ("model.layers.{i}.mlp.up_proj.weight",),
    "layers.{i}.ffn.down": ("model.layers.{i}.mlp.down_proj.weight",),
    "layers.{i}.router": ("model.layers.{i}.block_sparse_moe.gate.weight", "model.layers.{i}.mlp.gate.weight",
                          "model.layers.{i}.mlp.router.weight"),
    "layers.{i}.experts.{e}.gate": ("model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight",
                                    "model.layers.{i}.mlp.experts.{e}.gate_proj.weight"),
    "layers.{i}.experts.{e}.down": ("model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight",
                                    "model.layers.{i}.mlp.experts.{e}.down_proj.weight"),
    "layers.{i}.experts.{e}.up": ("model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight",
                                  "model.layers.{i}.mlp.experts.{e}.up_proj.weight"),
    "layers.{i}.shared.gate": ("model.layers.{i}.mlp.shared_expert.gate_proj.weight",),
    "layers.{i}.shared.up": ("model.layers.{i}.mlp.shared_expert.up_proj.weight",),
    "layers.{i}.shared.down": ("model.layers.{i}.mlp.shared_expert.down_proj.weight",),
    "layers.{i}.shared_gate": ("model.layers.{i}.mlp.shared_expert_gate.weight",),
    "norm": ("model.norm.weight",),
    "lm_head": ("lm_head.weight",),
}

# Per-architecture differences to TENSOR_NAMES. Gemma's post_attention_layernorm normalises the attention output
# (canonical post_attn_norm); its pre_feedforward_layernorm is the canonical ffn_norm.
ARCH_TENSOR_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    gemma: {"layers.{i}.post_attn_norm": ("model.layers.{i}.post_attention_layernorm.weight",),
            "layers.{i}.ffn_norm": ("model.layers.{i}.pre_feedforward_layernorm.weight",),
            "layers.{i}.post_ffn_norm": ("model.layers.{i}.post_feedforward_layernorm.weight",)}
    for gemma in ("gemma2", "gemma3")
}
# Architectures whose RMSNorms multiply by ``1 + w``: canonical norm weights are ``1 + w`` (float32, as transformers
# computes it; llama.cpp's converter writes the same).
NORM_PLUS_ONE = ("gemma2", "gemma3")

# Fused 3-D expert tensors (transformers 5 in-memory layout): canonical pattern -> (HF name, part). gate_up_proj is
# [E, 2*I, H] with the gate rows first (``.chunk(2)``), down_proj is [E, H, I].
FUSED_EXPERT_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "layers.{i}.experts.{e}.gate": (("model.layers.{i}.mlp.experts.gate_up_proj", "gate"),
                                    ("model.layers.{i}.block_sparse_moe.experts.gate_up_proj", "gate")),
    "layers.{i}.experts.{e}.up": (("model.layers.{i}.mlp.experts.gate_up_proj", "up"),
                                  ("model.layers.{i}.block_sparse_moe.experts.gate_up_proj", "up")),
    "layers.{i}.experts.{e}.down": (("model.layers.{i}.mlp.experts.down_proj", "down"),
                                    ("model.layers.{i}.block_sparse_moe.experts.down_proj", "down")),
}

# Fused dense tensors (Phi-3): canonical pattern -> (HF name, part); the part's rows come from fused.fused_rows.
FUSED_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    f"layers.{{i}}.{leaf}": ((f"model.layers.{{i}}.{hf}.weight", part),)
    for leaf, part in FUSED_PARTS.items()
    for hf in (("self_attn.qkv_proj",) if part in ("q", "k", "v") else ("mlp.gate_up_proj",))
}

# safetensors dtype -> numpy dtype (BF16 handled separately)
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def _pattern(name: str) -> tuple[str, dict[str, int]]:
    """``layers.3.experts.5.gate`` -> (``layers.{i}.experts.{e}.gate``, {"i": 3, "e": 5})."""
    n = parse_tensor(name)
    idx = {k: v for k, v in (("i", n.layer), ("e", n.expert)) if v is not None}
    return n.pattern, idx


MAX_JSON_BYTES = 64 << 20  # config.json, generation_config.json, an index


def _read_json(path: Path, required: bool) -> dict[str, Any] | None:
    if not path.exists():
        if required:
            raise ModelFormatError(f"{path}: missing (a Hugging Face checkpoint directory needs it)")
        return None
    if not path.is_file():
        raise ModelFormatError(f"{path}: not a regular file")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ModelFormatError(f"{path}: {path.stat().st_size} bytes, larger than any config ({MAX_JSON_BYTES})")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ModelFormatError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(d, dict):
        raise ModelFormatError(f"{path}: expected a JSON object, found {type(d).__name__}")
    return d


# -- safetensors -----------------------------------------------------------------------------------------------
_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def _st_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse a safetensors header: ({name: {dtype, shape, data_offsets}}, byte offset of the data section).
    Every entry is checked before use: an object with a known dtype, a shape of non-negative ints, and data
    offsets inside the file whose span is exactly the shape's bytes."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path}: not a valid safetensors file ({e})") from None
    except RecursionError:
        raise ModelFormatError(f"{path}: not a valid safetensors file (the header JSON is nested too deeply)") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: not a valid safetensors file (the header is a JSON "
                               f"{type(header).__name__}, expected an object)")
    header.pop("__metadata__", None)
    data = size - 8 - n
    for name, info in header.items():
        what = f"{path}: not a valid safetensors file (tensor {name!r}"
        if not isinstance(info, dict):
            raise ModelFormatError(f"{what} is described by a {type(info).__name__}, expected an object)")
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _ST_ITEMSIZE:
            raise ModelFormatError(f"{what} has dtype {dtype!r})")
        if not isinstance(shape, list) or len(shape) > 8 or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**53 for d in shape):
            raise ModelFormatError(f"{what} has shape {shape!r}, expected a list of non-negative ints)")
        if not (isinstance(offs, list) and len(offs) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offs) and 0 <= offs[0] <= offs[1] <= data):
            raise ModelFormatError(f"{what} has data_offsets {offs!r}, expected [begin, end] within the "
                                   f"{data} data bytes)")
        count = 1
        for d in shape:
            count *= d
        if offs[1] - offs[0] != count * _ST_ITEMSIZE[dtype]:
            raise ModelFormatError(f"{what} spans {offs[1] - offs[0]} bytes, its {dtype} shape {shape} needs "
                                   f"{count * _ST_ITEMSIZE[dtype]})")
    return header, 8 + n


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly (bf16 is the top half of an f32)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


class HFModel:
    """An opened HF checkpoint directory exposing canonical tensors (see module docstring)."""

    format = "hf"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ModelFormatError(f"{self.path}: no such model directory")
        if not self.path.is_dir():
            raise ModelFormatError(f"{self.path}: not a directory (expected a Hugging Face checkpoint directory "
                                   "with config.json and *.safetensors)")
        cfg = _read_json(self.path / "config.json", required=True)
        gen = _read_json(self.path / "generation_config.json", required=False)
        assert cfg is not None
        self.hf_config = cfg
        self.config: ModelConfig = config_from_hf(cfg, str(self.path / "config.json"), gen)
        self._names = {**TENSOR_NAMES, **ARCH_TENSOR_NAMES.get(self.config.arch, {})}
        self._headers: dict[Path, tuple[dict[str, Any], int]] = {}
        self._where: dict[str, Path] = self._index()
        self._handles: dict[Path, Any] = {}
        self._resolved: dict[str, tuple[str, str | None]] = {}
        self._check_layer_count()
        for name, shape in self.config.tensor_shapes().items():
            self._resolve(name, shape)

    def _check_layer_count(self) -> None:
        """``num_hidden_layers`` may not exceed the layers the checkpoint holds tensors of (checked before the
        tensor inventory, which it sizes)."""
        idx = set()
        for name in self._where:
            parts = name.split(".")
            for j in range(len(parts) - 1):
                if parts[j] == "layers" and parts[j + 1].isdigit():
                    idx.add(int(parts[j + 1]))
                    break
        n = 0
        while n in idx:
            n += 1
        L = self.config.num_layers
        if L > n:
            raise ModelFormatError(f"{self.path / 'config.json'}: num_hidden_layers is {L}, but the checkpoint holds "
                                   f"tensors of {n} layers (layers.0..layers.{n - 1}); fix config.json")

    # -- file index ---------------------------------------------------------------------------------------------
    def _index(self) -> dict[str, Path]:
        """HF tensor name -> the safetensors file holding it."""
        idx_path = self.path / "model.safetensors.index.json"
        where: dict[str, Path] = {}
        if idx_path.exists():
            idx = _read_json(idx_path, required=True)
            assert idx is not None
            wm = idx.get("weight_map")
            if not isinstance(wm, dict):
                raise ModelFormatError(f"{idx_path}: key 'weight_map' is missing or not an object")
            for name, fname in wm.items():
                f = self.path / str(fname)
                if not f.exists():
                    raise ModelFormatError(f"{f}: shard listed in {idx_path.name} (tensor {name!r}) is missing")
                where[name] = f
            for f in sorted(set(where.values())):
                self._header(f)
            return where
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise ModelFormatError(f"{self.path}: no *.safetensors files (only safetensors checkpoints are read; "
                                   "re-save with save_pretrained(..., safe_serialization=True))")
        for f in files:
            for name in self._header(f)[0]:
                where[name] = f
        return where

    def _header(self, f: Path) -> tuple[dict[str, Any], int]:
        if f not in self._headers:
            self._headers[f] = _st_header(f)
        return self._headers[f]

    def _info(self, hf_name: str) -> dict[str, Any] | None:
        f = self._where.get(hf_name)
        if f is None:
            return None
        info = self._header(f)[0].get(hf_name)
        if info is None:
            raise ModelFormatError(f"{f}: tensor {hf_name!r} is missing (the index says it is in this file)")
        return info

    def _files_desc(self) -> str:
        files = sorted({p.name for p in self._where.values()} or {"*.safetensors"})
        return files[0] if len(files) == 1 else f"{len(files)} files ({files[0]} .. {files[-1]})"

    # -- name mapping -------------------------------------------------------------------------------------------
    def _resolve(self, name: str, shape: tuple[int, ...]) -> tuple[str, str | None]:
        """Find the HF tensor for canonical ``name`` and check its shape: (hf_name, fused part or None)."""
        pat, idx = _pattern(name)
        E = self.config.num_experts

        def expert_shape(part: str) -> tuple[int, ...]:
            a, b = shape
            return (E, 2 * a, b) if part in ("gate", "up") else (E, a, b)

        # (candidates with their fused part, the stored shape a candidate must have), in order of preference
        tables = [([(c, None) for c in self._names.get(pat, ())], lambda part: shape),
                  (FUSED_NAMES.get(pat, ()), lambda part: (fused_rows(self.config, part)[2], shape[1])),
                  (FUSED_EXPERT_NAMES.get(pat, ()), expert_shape)]
        for cands, want in tables:
            for cand, part in cands:
                hf = cand.format(**idx)
                info = self._info(hf)
                if info is not None:
                    self._check_shape(name, hf, tuple(info["shape"]), want(part))
                    self._resolved[name] = (hf, part)
                    return hf, part
        names = [c.format(**idx) for c in self._names.get(pat, ())]
        raise ModelFormatError(f"{self.path / self._files_desc()}: tensor {names[0] if names else name!r} "
                               f"(canonical {name!r}) is missing")

    def _check_shape(self, name: str, hf: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
        if got != tuple(want):
            raise ModelFormatError(f"{self._where[hf]}: tensor {hf!r} has shape {list(got)}, config.json implies "
                                   f"{list(want)} (canonical {name!r})")

    # -- reading ------------------------------------------------------------------------------------------------
    def _read(self, hf: str, index: int | None = None, rows: tuple[int, int] | None = None) -> np.ndarray:
        """HF tensor ``hf`` (or only its slice ``[index]``, or its rows ``[r0:r1]``, along the first axis) as a
        numpy array."""
        f = self._where[hf]
        info = self._header(f)[0][hf]
        dtype, shape = info["dtype"], list(info["shape"])
        if dtype == "BF16":
            base = self._header(f)[1]
            start, end = (int(x) for x in info["data_offsets"])
            row = (end - start) // shape[0]
            if index is not None:
                start, end, shape = start + index * row, start + (index + 1) * row, shape[1:]
            elif rows is not None:
                start, end, shape = start + rows[0] * row, start + rows[1] * row, [rows[1] - rows[0], *shape[1:]]
            raw = np.fromfile(f, dtype="<u2", count=(end - start) // 2, offset=base + start)
            if raw.size * 2 != end - start:
                raise ModelFormatError(f"{f}: truncated while reading tensor {hf!r}")
            return bf16_to_f32(raw).reshape(shape)
        if dtype not in _ST_DTYPES:
            raise UnsupportedModelError(f"{f}: tensor {hf!r} has dtype {dtype}; supported: F32, F16, BF16, F64")
        h = self._handles.get(f)
        if h is None:
            from safetensors import safe_open

            try:
                h = self._handles[f] = safe_open(str(f), framework="np")
            except Exception as e:  # safetensors raises its own error types
                raise ModelFormatError(f"{f}: not a valid safetensors file ({e})") from None
        try:
            if rows is not None:
                return h.get_slice(hf)[rows[0]:rows[1]]
            return h.get_tensor(hf) if index is None else h.get_slice(hf)[index]
        except Exception as e:
            raise ModelFormatError(f"{f}: cannot read tensor {hf!r} ({e})") from None

    def tensor(self, name: str) -> np.ndarray:
        """Canonical tensor ``name`` as float32 (see :class:`SourceModel`)."""
        if name not in self._resolved:
            shapes = self.config.tensor_shapes()
            if name not in shapes:
                raise ModelFormatError(f"{self.path}: the model has no tensor {name!r}")
            self._resolve(name, shapes[name])
        hf, part = self._resolved[name]
        if part is None:
            w = np.asarray(self._read(hf), dtype=np.float32)
            if self.config.arch in NORM_PLUS_ONE and tensor_class(name) == "norm":
                w = w + np.float32(1.0)
            return w
        if part in FUSED_PARTS.values() and "e" not in _pattern(name)[1]:  # Phi-3 qkv_proj / gate_up_proj rows
            r0, r1, _ = fused_rows(self.config, part)
            return np.ascontiguousarray(self._read(hf, rows=(r0, r1)), dtype=np.float32)
        e = _pattern(name)[1]["e"]
        full = self._read(hf, e)  # only expert e's slice of the fused [E, ...] tensor
        if part == "gate":
            full = full[: full.shape[0] // 2]
        elif part == "up":
            full = full[full.shape[0] // 2:]
        return np.ascontiguousarray(full, dtype=np.float32)

    def source_nbytes(self, name: str) -> int:
        """Bytes the canonical tensor occupies in the checkpoint (its share of a fused expert tensor)."""
        if name not in self._resolved:
            self.tensor(name)  # resolves (or raises naming the tensor)
        hf, part = self._resolved[name]
        start, end = self._header(self._where[hf])[0][hf]["data_offsets"]
        n = int(end) - int(start)
        if part is not None and "e" not in _pattern(name)[1]:
            r0, r1, total = fused_rows(self.config, part)
            n = n // total * (r1 - r0)
        elif part is not None:
            n //= self.config.num_experts * (2 if part in ("gate", "up") else 1)
        return n

    def source_name(self, name: str) -> str:
        """The HF tensor a canonical name comes from (for reports)."""
        hf, part = self._resolved[name]
        return hf if part is None else f"{hf}[{part}]"

    # -- tokenizer ----------------------------------------------------------------------------------------------
    def tokenizer(self) -> TokenizerSpec:
        """tokenizer.json as is, or tokenizer.model (SentencePiece) converted; bos/eos/add_bos from
        tokenizer_config.json, generation_config.json and config.json.

        ``add_bos`` says the model expects prompts to start with ``bos_token_id``; the runtime should encode with
        ``add_special_tokens=False`` and prepend it itself."""
        tj, tm = self.path / "tokenizer.json", self.path / "tokenizer.model"
        if tj.exists():
            text = tj.read_text(encoding="utf-8")
        elif tm.exists():
            try:
                from .tokenizers_convert import spm_to_tokenizer_json
            except ImportError:
                raise UnsupportedModelError(f"{tm}: converting a SentencePiece tokenizer needs "
                                            "edgespool.exporters.tokenizers_convert, which is not installed") from None
            text = spm_to_tokenizer_json(tm)
        else:
            raise ModelFormatError(f"{self.path}: no tokenizer (expected tokenizer.json or tokenizer.model)")
        try:
            tok = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelFormatError(f"{tj}: not valid JSON ({e})") from None
        tc = _read_json(self.path / "tokenizer_config.json", required=False) or {}
        bos = self.config.bos_token_id
        if bos is None:
            bos = _token_id(tok, _token_content(tc.get("bos_token")))
        eos = self.config.eos_token_ids
        if not eos:
            e = _token_id(tok, _token_content(tc.get("eos_token")))
            eos = (e,) if e is not None else ()
        bos_text = _token_content(tc.get("bos_token")) or _token_text(tok, bos)
        add_bos = bos is not None and (tc.get("add_bos_token") is True or
                                       (bos_text is not None and _post_processor_adds(tok.get("post_processor"),
                                                                                     bos_text)))
        return TokenizerSpec(json=text, bos_token_id=bos, eos_token_ids=tuple(eos), add_bos=bool(add_bos),
                             chat_template=self._chat_template(tc), special_tokens=_special_tokens(self.path, tc))

    def _chat_template(self, tc: dict[str, Any]) -> str | None:
        """The default chat template as transformers loads it: ``chat_template.jinja`` when present, else
        tokenizer_config.json's ``chat_template`` (a string, or a list of ``{"name", "template"}``: "default")."""
        jinja = self.path / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        t = tc.get("chat_template")
        if isinstance(t, list):
            t = next((c.get("template") for c in t if isinstance(c, dict) and c.get("name") == "default"), None)
        if t is not None and not isinstance(t, str):
            raise ModelFormatError(f"{self.path / 'tokenizer_config.json'}: chat_template is a "
                                   f"{type(t).__name__}, expected a string or a list of {{name, template}}")
        return t

    def close(self) -> None:
        """Drop open file handles."""
        self._handles.clear()

    def __enter__(self) -> "HFModel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _token_content(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def _special_tokens(path: Path, tc: dict[str, Any]) -> dict[str, str]:
    """Texts of the named special tokens (bos_token, eos_token, ...) from tokenizer_config.json, then the legacy
    special_tokens_map.json for the names it lacks (what transformers' ``special_tokens_map`` holds)."""
    legacy = _read_json(path / "special_tokens_map.json", required=False) or {}
    out = {}
    for name in SPECIAL_TOKEN_NAMES:
        text = _token_content(tc.get(name)) if tc.get(name) is not None else _token_content(legacy.get(name))
        if text is not None:
            out[name] = text
    return out


def _token_table(tok: dict[str, Any]) -> list[tuple[str, int]]:
    """(text, id) of every token of a tokenizers JSON: the added tokens first, then the model vocabulary (a
    BPE/WordPiece ``{piece: id}`` dict or a Unigram ``[[piece, score], ...]`` list)."""
    out = [(t.get("content"), t.get("id")) for t in tok.get("added_tokens") or []]
    vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        out += list(vocab.items())
    elif isinstance(vocab, list):
        out += [(entry[0], i) for i, entry in enumerate(vocab) if entry]
    return out


def _token_id(tok: dict[str, Any], content: str | None) -> int | None:
    """Id of token text ``content`` in a tokenizers JSON (added tokens, then the model vocabulary)."""
    if content is None:
        return None
    return next((int(i) for text, i in _token_table(tok) if text == content), None)


def _token_text(tok: dict[str, Any], tid: int | None) -> str | None:
    """Text of token ``tid`` in a tokenizers JSON (added tokens, then the model vocabulary)."""
    if tid is None:
        return None
    return next((text for text, i in _token_table(tok) if i == tid), None)


def _post_processor_adds(pp: Any, bos_text: str) -> bool:
    """Whether a tokenizers post-processor (TemplateProcessing, possibly inside a Sequence) inserts ``bos_text``
    at the start of a single sequence."""
    if not isinstance(pp, dict):
        return False
    if pp.get("type") == "Sequence":
        return any(_post_processor_adds(p, bos_text) for p in pp.get("processors") or [])
    if pp.get("type") == "TemplateProcessing":
        single = pp.get("single") or []
        return bool(single) and (single[0].get("SpecialToken") or {}).get("id") == bos_text
    return False


def open_hf(path: str | os.PathLike) -> HFModel:
    """Open a Hugging Face checkpoint directory (validates config and every tensor's presence and shape)."""
    return HFModel(path)


open_hf_model = open_hf  # the name exporters/export.py imports
