"""ONNX lowering of decoder models (exporters/onnx_decoder.py), checked with plain onnxruntime against transformers.

f32 graphs must match transformers' logits (<= 1e-3) for every architecture, and prompt + cached decode steps must
equal the full-sequence logits. Quantised graphs (int8 QDQ, int4 MatMulNBits / INT4 QDQ) must match transformers run
on the *dequantised* weights (kernels/quant.dequantize), i.e. the same math in an independent implementation.

Benchmark (session creation, one-step decode latency): ``python tests/test_onnx_decoder.py --bench``.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from edgespool.errors import ModelFormatError, OptionError, UnsupportedModelError  # noqa: E402
from edgespool.exporters.onnx_decoder import (DATA_FILE, MODEL_FILE, empty_kv_cache, export_onnx,  # noqa: E402
                                              next_kv_cache)
from edgespool.kernels.quant import QTensor, dequantize, quantize  # noqa: E402
from edgespool.runtime.bundle.config import ModelConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import ARCHS, hf_logits, tiny_config  # noqa: E402

PROMPT = [1, 17, 300, 42, 7, 99, 256, 3, 480, 11, 64, 200]


# ---------------------------------------------------------------------------------------------------------------
# Test-side HF checkpoint reading: config.json -> ModelConfig, safetensors names -> canonical names.
# ---------------------------------------------------------------------------------------------------------------
def make_checkpoint(arch: str, out: Path, seed: int = 0, **overrides) -> Path:
    """A random tiny HF checkpoint (weights + config only; the tests here need no tokenizer)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(tiny_config(arch, **overrides)).float().eval()
    model.save_pretrained(out, safe_serialization=True)
    return out


def model_config(d: dict) -> ModelConfig:
    arch = d["model_type"]
    heads = d["num_attention_heads"]
    rp = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    theta = float(rp.pop("rope_theta", d.get("rope_theta", 10000.0)))
    scaling = rp if rp.get("rope_type", rp.get("type", "default")) != "default" else None
    moe = arch in ("mixtral", "qwen2_moe", "olmoe")
    n_exp = d.get("num_local_experts", d.get("num_experts", 0)) if moe else 0
    layers = d["num_hidden_layers"]
    if arch == "qwen2_moe":
        moe_layers = tuple(i for i in range(layers) if i not in d.get("mlp_only_layers", [])
                           and (i + 1) % d["decoder_sparse_step"] == 0)
    else:
        moe_layers = tuple(range(layers)) if moe else ()
    window = d.get("sliding_window") if arch in ("mistral", "mixtral") or d.get("use_sliding_window") else None
    eos = d.get("eos_token_id")
    return ModelConfig(
        arch=arch, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"], num_layers=layers, num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads, head_dim=d.get("head_dim") or d["hidden_size"] // heads,
        rms_norm_eps=d["rms_norm_eps"], rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=d["max_position_embeddings"], tie_word_embeddings=d.get("tie_word_embeddings", False),
        attention_bias=arch in ("qwen2", "qwen2_moe") or bool(d.get("attention_bias")), qk_norm=arch == "olmoe",
        clip_qkv=d.get("clip_qkv"), sliding_window=window or None, num_experts=n_exp,
        num_experts_per_tok=d.get("num_experts_per_tok", 0) if moe else 0,
        moe_intermediate_size=(d.get("moe_intermediate_size") or d["intermediate_size"]) if moe else 0,
        norm_topk_prob=True if arch == "mixtral" else bool(d.get("norm_topk_prob", False)),
        shared_expert_intermediate_size=d.get("shared_expert_intermediate_size", 0) if arch == "qwen2_moe" else 0,
        moe_layers=moe_layers, bos_token_id=d.get("bos_token_id"),
        eos_token_ids=tuple(eos if isinstance(eos, list) else [eos]) if eos is not None else ())


def hf_names(cfg: ModelConfig) -> dict[str, str]:
    """canonical name -> HF safetensors name."""
    m = {"embed": "model.embed_tokens.weight", "norm": "model.norm.weight", "lm_head": "lm_head.weight"}
    mlp = "block_sparse_moe" if cfg.arch == "mixtral" else "mlp"
    for name in cfg.tensor_shapes():
        parts = name.split(".")
        if parts[0] != "layers":
            continue
        i, rest = parts[1], parts[2:]
        p = f"model.layers.{i}."
        leaf = rest[-1]
        simple = {"attn_norm": "input_layernorm.weight", "ffn_norm": "post_attention_layernorm.weight",
                  "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight",
                  "wo": "self_attn.o_proj.weight", "bq": "self_attn.q_proj.bias", "bk": "self_attn.k_proj.bias",
                  "bv": "self_attn.v_proj.bias", "q_norm": "self_attn.q_norm.weight",
                  "k_norm": "self_attn.k_norm.weight", "router": f"{mlp}.gate.weight",
                  "shared_gate": "mlp.shared_expert_gate.weight"}
        proj = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
        if len(rest) == 1:
            m[name] = p + simple[leaf]
        elif rest[0] == "ffn":
            m[name] = p + f"mlp.{proj[leaf]}.weight"
        elif rest[0] == "shared":
            m[name] = p + f"mlp.shared_expert.{proj[leaf]}.weight"
        elif rest[0] == "experts" and cfg.arch == "mixtral":
            m[name] = p + f"block_sparse_moe.experts.{rest[1]}.{ {'gate': 'w1', 'up': 'w3', 'down': 'w2'}[leaf]}.weight"
        else:
            m[name] = p + f"mlp.experts.{rest[1]}.{proj[leaf]}.weight"
    return m


# Architectures whose config and names this file maps itself; later ones are read through exporters/hf.py.
OWN_MAPPING = ("llama", "mistral", "qwen2", "mixtral", "qwen2_moe", "olmoe")


def read_checkpoint(d: Path) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, str]]:
    raw = json.loads((d / "config.json").read_text())
    if raw["model_type"] not in OWN_MAPPING:
        from edgespool.exporters.hf import open_hf

        src = open_hf(d)
        names = src.config.tensor_shapes()
        return src.config, {k: src.tensor(k) for k in names}, {k: src.source_name(k) for k in names}
    cfg = model_config(raw)
    st = load_file(str(d / "model.safetensors"))
    names = {k: v for k, v in hf_names(cfg).items() if k in cfg.tensor_shapes()}
    return cfg, {k: st[v].astype(np.float32) for k, v in names.items()}, names


def quantise_all(tensors: dict[str, np.ndarray], scheme: str, group: int = 32) -> dict[str, QTensor]:
    """Every 2-D tensor (embedding, lm_head, router and shared gate included) in ``scheme``; 1-D ones stay f32."""
    return {k: quantize(v, scheme if v.ndim == 2 else "f32", group) for k, v in tensors.items()}


def dequantised_checkpoint(src: Path, dst: Path, q: dict[str, QTensor], names: dict[str, str]) -> Path:
    """A copy of HF checkpoint ``src`` whose weights are the dequantised ``q`` (the independent reference)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", dst / "config.json")
    st = load_file(str(src / "model.safetensors"))
    for canon, hf in names.items():
        st[hf] = np.ascontiguousarray(dequantize(q[canon]))
    save_file(st, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


# ---------------------------------------------------------------------------------------------------------------
# ORT helpers
# ---------------------------------------------------------------------------------------------------------------
def session(d: Path, options: dict[str, str] | None = None):
    so = ort.SessionOptions()
    for k, v in (options or {}).items():
        so.add_session_config_entry(k, v)
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(d / MODEL_FILE), so, providers=["CPUExecutionProvider"])


def run(sess, cfg: ModelConfig, ids: np.ndarray, past: dict[str, np.ndarray] | None = None):
    feeds = {"input_ids": np.asarray(ids, np.int64), **(past or empty_kv_cache(cfg, len(ids)))}
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feeds)))
    return out["logits"], next_kv_cache(cfg, out)


def export_qtensors(cfg: ModelConfig, q: dict[str, QTensor], out: Path, **kw) -> dict:
    return export_onnx(cfg, lambda n: q[n], out, **kw)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """One tiny checkpoint per architecture, made on first use."""
    made: dict[str, Path] = {}

    def get(arch: str, **overrides) -> Path:
        key = arch + "".join(f"-{k}={v}" for k, v in sorted(overrides.items()))
        if key not in made:
            made[key] = make_checkpoint(arch, tmp_path_factory.mktemp(key.replace("/", "_")), **overrides)
        return made[key]

    return get


# ---------------------------------------------------------------------------------------------------------------
# f32: every architecture against transformers, and the KV cache against the full sequence.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_f32_matches_transformers_and_cache(arch, ckpts, tmp_path):
    d = ckpts(arch)
    cfg, tensors, _ = read_checkpoint(d)
    manifest = export_qtensors(cfg, quantise_all(tensors, "f32"), tmp_path)
    assert (tmp_path / MODEL_FILE).exists() and (tmp_path / DATA_FILE).stat().st_size == manifest["data_nbytes"]
    sess = session(tmp_path)
    ref = hf_logits(d, PROMPT)
    full, _ = run(sess, cfg, np.array([PROMPT]))
    np.testing.assert_allclose(full[0], ref, atol=1e-3, rtol=0)

    # prompt of 5, then one token per call through the KV cache
    logits, past = run(sess, cfg, np.array([PROMPT[:5]]))
    steps = [logits[0]]
    for t in PROMPT[5:]:
        logits, past = run(sess, cfg, np.array([[t]]), past)
        steps.append(logits[0])
    np.testing.assert_allclose(np.concatenate(steps), full[0], atol=1e-4, rtol=0)
    assert past["past_key.0"].shape == (1, cfg.num_kv_heads, len(PROMPT), cfg.head_dim)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_decode_matches_transformers(arch, ckpts, tmp_path):
    """A user's loop: prompt in one call, then 24 greedy tokens one call each through the KV cache."""
    from tiny_models import hf_greedy

    d = ckpts(arch)
    cfg, tensors, _ = read_checkpoint(d)
    export_qtensors(cfg, quantise_all(tensors, "f32"), tmp_path)
    sess = session(tmp_path)
    logits, past = run(sess, cfg, np.array([PROMPT[:4]]))
    got = []
    for _ in range(24):
        got.append(int(logits[0, -1].argmax()))
        logits, past = run(sess, cfg, np.array([[got[-1]]]), past)
    assert got == hf_greedy(d, PROMPT[:4], 24)


def test_batch_rows_are_independent(ckpts, tmp_path):
    cfg, tensors, _ = read_checkpoint(ckpts("qwen2"))
    export_qtensors(cfg, quantise_all(tensors, "f32"), tmp_path)
    sess = session(tmp_path)
    a, b = PROMPT[:6], PROMPT[6:]
    both, past = run(sess, cfg, np.array([a, b]))
    np.testing.assert_allclose(both[0], run(sess, cfg, np.array([a]))[0][0], atol=1e-5)
    np.testing.assert_allclose(both[1], run(sess, cfg, np.array([b]))[0][0], atol=1e-5)
    step, _ = run(sess, cfg, np.array([[5], [9]]), past)
    np.testing.assert_allclose(step[1], run(sess, cfg, np.array([b + [9]]))[0][0, -1:], atol=1e-4)


@pytest.mark.parametrize("arch,overrides", [
    ("mistral", {"sliding_window": 4}),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 32}}),
    ("llama", {"tie_word_embeddings": True, "rope_parameters": {  # Llama 3.2's settings
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}),
    ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 500.0, "factor": 4.0}}),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                   "original_max_position_embeddings": 64}}),
    ("qwen2", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}}),
    ("llama", {"tie_word_embeddings": True}),
    ("olmoe", {"clip_qkv": 0.05}),
    ("mixtral", {"sliding_window": 5}),
    ("qwen2_moe", {"norm_topk_prob": True, "decoder_sparse_step": 2}),
    ("gemma2", {"attn_logit_softcapping": 0.5, "final_logit_softcapping": 1.5, "query_pre_attn_scalar": 24}),
    ("granite", {"tie_word_embeddings": True}),
])
def test_f32_variants(arch, overrides, ckpts, tmp_path):
    """Sliding window, RoPE scaling, tied embeddings, clip_qkv, renormalised top-k and mixed dense/MoE layers."""
    d = ckpts(arch, **overrides)
    cfg, tensors, _ = read_checkpoint(d)
    if "sliding_window" in overrides:
        assert cfg.sliding_window == overrides["sliding_window"]
    if "rope_parameters" in overrides:
        assert cfg.rope_scaling and cfg.rope_scaling["rope_type"] == overrides["rope_parameters"]["rope_type"]
    if arch == "qwen2_moe":
        assert cfg.moe_layers == (1,)
    export_qtensors(cfg, quantise_all(tensors, "f32"), tmp_path)
    sess = session(tmp_path)
    full, _ = run(sess, cfg, np.array([PROMPT]))
    np.testing.assert_allclose(full[0], hf_logits(d, PROMPT), atol=1e-3, rtol=0)
    logits, past = run(sess, cfg, np.array([PROMPT[:7]]))
    for k, t in enumerate(PROMPT[7:], start=7):
        logits, past = run(sess, cfg, np.array([[t]]), past)
        np.testing.assert_allclose(logits[0, 0], full[0, k], atol=1e-4, rtol=0)


def test_window_changes_the_logits(ckpts, tmp_path):
    """The sliding-window mask is not a no-op: the same weights without the window give other logits."""
    cfg, tensors, _ = read_checkpoint(ckpts("mistral", sliding_window=4))
    from dataclasses import replace

    export_qtensors(cfg, quantise_all(tensors, "f32"), tmp_path / "w")
    export_qtensors(replace(cfg, sliding_window=None), quantise_all(tensors, "f32"), tmp_path / "full")
    lw, _ = run(session(tmp_path / "w"), cfg, np.array([PROMPT]))
    lf, _ = run(session(tmp_path / "full"), cfg, np.array([PROMPT]))
    assert np.abs(lw[0, :4] - lf[0, :4]).max() < 1e-5  # inside the window: identical
    assert np.abs(lw[0, 6:] - lf[0, 6:]).max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Quantised graphs against transformers on the dequantised weights.
# ---------------------------------------------------------------------------------------------------------------
QUANT_CASES = [
    ("llama", "f16", {}), ("llama", "int8", {}), ("llama", "int4", {}), ("llama", "int4", {"int4_lowering": "qdq"}),
    ("qwen2", "int4", {}), ("mixtral", "int8", {}), ("qwen2_moe", "int4", {}), ("olmoe", "int4", {}),
]


@pytest.mark.parametrize("arch,scheme,kw", QUANT_CASES)
def test_quantised_matches_dequantised_reference(arch, scheme, kw, ckpts, tmp_path):
    d = ckpts(arch)
    cfg, tensors, names = read_checkpoint(d)
    q = quantise_all(tensors, scheme)
    manifest = export_qtensors(cfg, q, tmp_path / "onnx", **kw)
    assert manifest["tensor_schemes"].get(scheme, 0) > 0 and scheme in manifest["quant_lowering"]
    ref = hf_logits(dequantised_checkpoint(d, tmp_path / "ref", q, names), PROMPT)
    logits, _ = run(session(tmp_path / "onnx", manifest["session_options"]), cfg, np.array([PROMPT]))
    np.testing.assert_allclose(logits[0], ref, atol=1e-3, rtol=0)
    ops = {n.op_type for n in __import__("onnx").load(str(tmp_path / "onnx" / MODEL_FILE),
                                                       load_external_data=False).graph.node}
    expect = {"f16": "Cast", "int8": "DequantizeLinear", "int4": "MatMulNBits"}[scheme]
    if kw.get("int4_lowering") == "qdq":
        expect = "DequantizeLinear"
    assert expect in ops


def test_int4_tied_embedding_and_odd_group(ckpts, tmp_path):
    """Tied int4 embeddings (Gather + nibble unpack, and a MatMul copy) and a group size MatMulNBits cannot take
    (8 -> per-tensor fallback to blocked INT4 QDQ)."""
    d = ckpts("llama", tie_word_embeddings=True)
    cfg, tensors, names = read_checkpoint(d)
    assert "lm_head" not in tensors
    q = quantise_all(tensors, "int4", group=8)
    manifest = export_qtensors(cfg, q, tmp_path / "onnx")
    assert "layers.0.wq" in manifest["int4_qdq_fallback"]
    ref = hf_logits(dequantised_checkpoint(d, tmp_path / "ref", q, names), PROMPT)
    logits, _ = run(session(tmp_path / "onnx", manifest["session_options"]), cfg, np.array([PROMPT]))
    np.testing.assert_allclose(logits[0], ref, atol=1e-3, rtol=0)


@pytest.mark.parametrize("scheme,kw", [("int8", {}), ("int4", {"int4_lowering": "qdq"})])
def test_qdq_default_ort_options_quantise_activations(scheme, kw, ckpts, tmp_path):
    """Documented trap: without session.qdq_matmulnbits_accuracy_level=0, ORT fuses int8/INT4 DequantizeLinear +
    MatMul into MatMulNBits with int8 activations, and the logits move away from the reference."""
    cfg, tensors, _ = read_checkpoint(ckpts("llama"))
    manifest = export_qtensors(cfg, quantise_all(tensors, scheme), tmp_path, **kw)
    assert manifest["session_options"] == {"session.qdq_matmulnbits_accuracy_level": "0"}
    exact, _ = run(session(tmp_path, manifest["session_options"]), cfg, np.array([PROMPT]))
    default, _ = run(session(tmp_path), cfg, np.array([PROMPT]))
    assert np.abs(exact - default).max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Files, manifest and bad input.
# ---------------------------------------------------------------------------------------------------------------
def test_manifest_and_stale_data_file(ckpts, tmp_path):
    cfg, tensors, _ = read_checkpoint(ckpts("olmoe"))
    q = quantise_all(tensors, "int8")
    (tmp_path / DATA_FILE).write_bytes(b"\xff" * 12345)  # a stale data file must not be appended to
    m1 = export_qtensors(cfg, q, tmp_path)
    size1 = (tmp_path / DATA_FILE).stat().st_size
    m2 = export_qtensors(cfg, q, tmp_path)
    assert (tmp_path / DATA_FILE).stat().st_size == size1 == m1["data_nbytes"] == m2["data_nbytes"]
    json.dumps(m1)  # goes into manifest.json as is
    assert m1["file"] == MODEL_FILE and m1["opsets"]["ai.onnx"] == 21
    names = [i["name"] for i in m1["inputs"]]
    assert names == ["input_ids"] + [f"past_{kv}.{i}" for i in range(2) for kv in ("key", "value")]
    assert m1["outputs"][0] == {"name": "logits", "dtype": "float32", "shape": ["batch", "seq", cfg.vocab_size]}
    assert m1["inputs"][1]["shape"] == ["batch", cfg.num_kv_heads, "past_len", cfg.head_dim]
    assert "moe" in m1["quant_lowering"] and m1["session_options"] == {"session.qdq_matmulnbits_accuracy_level": "0"}
    f32 = export_qtensors(cfg, quantise_all(tensors, "f32"), tmp_path / "f32")
    assert f32["session_options"] == {} and f32["tensor_schemes"] == {"f32": len(tensors)}


def test_bad_input(ckpts, tmp_path):
    from dataclasses import replace

    cfg, tensors, _ = read_checkpoint(ckpts("llama"))
    q = quantise_all(tensors, "f32")
    missing = {k: v for k, v in q.items() if k != "layers.1.wo"}
    with pytest.raises(ModelFormatError, match="layers.1.wo"):
        export_qtensors(cfg, missing, tmp_path)
    assert not (tmp_path / DATA_FILE).exists()
    bad = dict(q, **{"layers.0.wk": quantize(np.zeros((8, 64), np.float32), "f32")})
    with pytest.raises(ModelFormatError, match=r"layers.0.wk.*\(8, 64\)"):
        export_qtensors(cfg, bad, tmp_path)
    with pytest.raises(OptionError, match="opset"):
        export_qtensors(cfg, q, tmp_path, opset=11)
    with pytest.raises(OptionError, match="accuracy_level"):
        export_qtensors(cfg, q, tmp_path, accuracy_level=7)
    with pytest.raises(OptionError, match="int4_lowering"):
        export_qtensors(cfg, q, tmp_path, int4_lowering="gptq")
    with pytest.raises(UnsupportedModelError, match="rope_scaling type 'longrope'"):
        export_qtensors(replace(cfg, rope_scaling={"rope_type": "longrope"}), q, tmp_path)
    with pytest.raises(UnsupportedModelError, match="gelu"):
        export_qtensors(replace(cfg, hidden_act="gelu"), q, tmp_path)
    q4 = quantise_all(tensors, "int4", group=8)
    with pytest.raises(OptionError, match="opset >= 21"):
        export_qtensors(cfg, q4, tmp_path, opset=18)


def test_opset_18_f32(ckpts, tmp_path):
    d = ckpts("qwen2")
    cfg, tensors, _ = read_checkpoint(d)
    m = export_qtensors(cfg, quantise_all(tensors, "f32"), tmp_path, opset=18)
    assert m["opsets"]["ai.onnx"] == 18
    logits, _ = run(session(tmp_path), cfg, np.array([PROMPT]))
    np.testing.assert_allclose(logits[0], hf_logits(d, PROMPT), atol=1e-3, rtol=0)


@pytest.mark.slow
def test_bundle_export_pipeline_onnx(tmp_path):
    """End to end through the bundle exporter: HF checkpoint -> int4 bundle (policy: experts/dense int4, routers and
    norms f32) -> the bundle's model.onnx in ORT == transformers on the bundle's dequantised weights."""
    hf = pytest.importorskip("edgespool.exporters.hf")
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.runtime.bundle.reader import Bundle
    from tiny_models import make_hf_model

    d = make_hf_model("qwen2_moe", tmp_path / "hf")
    res = export_model(hf.open_hf(d), tmp_path / "bundle", policy=QuantPolicy(quant="int4"), kernels=False,
                       progress=False)
    b = Bundle(res.path)
    section = b.manifest["onnx"]
    assert section["int4_lowering"] == "matmulnbits" and section["tensor_schemes"]["int4"] > 0
    cfg = b.config
    q = {}
    for grp in b.groups:
        q.update(b.read_group(grp))
    _, _, names = read_checkpoint(d)
    ref = hf_logits(dequantised_checkpoint(d, tmp_path / "ref", q, names), PROMPT)
    logits, _ = run(session(res.path, section["session_options"]), cfg, np.array([PROMPT]))
    np.testing.assert_allclose(logits[0], ref, atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Benchmark: python tests/test_onnx_decoder.py --bench [arch] [scheme]
# ---------------------------------------------------------------------------------------------------------------
def bench(arch: str = "mixtral", scheme: str = "int4", steps: int = 200, accuracy_level: int = 0,
          **overrides) -> dict:
    """Export ``arch`` in ``scheme`` (all 2-D tensors), then time ORT session creation (median of 5) and single-token
    decode steps (median over ``steps``, one ORT thread, the manifest's session options)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d = make_checkpoint(arch, Path(tmp) / "hf", **overrides)
        cfg, tensors, _ = read_checkpoint(d)
        q = quantise_all(tensors, scheme)
        t0 = time.perf_counter()
        manifest = export_qtensors(cfg, q, Path(tmp) / "onnx", accuracy_level=accuracy_level)
        export_s = time.perf_counter() - t0
        opts = manifest["session_options"]
        creates = []
        for _ in range(5):
            t0 = time.perf_counter()
            sess = session(Path(tmp) / "onnx", opts)
            creates.append(time.perf_counter() - t0)
        _, past = run(sess, cfg, np.array([PROMPT]))
        lat = []
        for k in range(steps):
            t0 = time.perf_counter()
            _, past = run(sess, cfg, np.array([[PROMPT[k % len(PROMPT)]]]), past)
            lat.append(time.perf_counter() - t0)
        return {"arch": arch, "scheme": scheme, "accuracy_level": accuracy_level, "layers": cfg.num_layers,
                "hidden": cfg.hidden_size, "onnx_data_MB": round(manifest["data_nbytes"] / 1e6, 2),
                "export_s": round(export_s, 3), "session_create_ms_median": round(1e3 * float(np.median(creates)), 2),
                "decode_step_ms_median": round(1e3 * float(np.median(lat)), 3),
                "decode_step_ms_p90": round(1e3 * float(np.percentile(lat, 90)), 3),
                "context_at_end": int(past["past_key.0"].shape[2]), "ort_threads": 1}


MEDIUM = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
              num_key_value_heads=4, max_position_embeddings=1024)

if __name__ == "__main__" and "--bench" in sys.argv:
    # python tests/test_onnx_decoder.py --bench [--medium] [arch] [scheme] [accuracy_level]
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    ov = MEDIUM if "--medium" in sys.argv else {}
    for a in (args[:1] or ["llama", "mixtral"]):
        for s in (args[1:2] or ["f32", "int8", "int4"]):
            for lvl in ([int(args[2])] if len(args) > 2 else [0]):
                print(json.dumps(bench(a, s, steps=50 if ov else 200, accuracy_level=lvl, **ov)), flush=True)
