"""The engine over f32/f16 bundles of HF checkpoints against transformers itself (logits and greedy continuations),
for every architecture and the RoPE / tying / sliding-window / MoE-layout variants; plus hf.py's bad-input errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models as tm  # noqa: E402

from edgespool.errors import ModelFormatError, UnsupportedModelError  # noqa: E402
from edgespool.exporters.bundle_writer import BundleWriter  # noqa: E402
from edgespool.exporters.hf import HFModel, config_from_hf, open_hf  # noqa: E402
from edgespool.kernels.quant import quantize  # noqa: E402
from edgespool.runtime.bundle.reader import Bundle  # noqa: E402
from edgespool.runtime.decoder.engine import Engine  # noqa: E402
from edgespool.runtime.decoder.weights import ResidentWeights  # noqa: E402

TOL = 1e-3
N_GREEDY = 32
PROMPT = [int(t) for t in np.random.default_rng(7).integers(3, tm.VOCAB, 24)]
GREEDY_PROMPT = PROMPT[:8]

# name -> (arch, make_hf_model overrides); every model uses a tokenizer.json (BPE) so no SentencePiece conversion
VARIANTS: dict[str, tuple[str, dict]] = {
    **{a: (a, {}) for a in tm.ARCHS},
    "llama_rope_llama3": ("llama", {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32}}),
    # Llama 3.2's own rope settings (theta 5e5, factor 32, original 8192) and tied embeddings: at head_dim 16 the
    # frequencies fall in all three llama3 bands (unscaled, blended, divided by the factor)
    "llama32_tied_rope_llama3": ("llama", {"tie_word_embeddings": True, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}),
    "llama_rope_linear": ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0,
                                                        "factor": 4.0}}),
    "llama_rope_dynamic": ("llama", {"max_position_embeddings": 16, "rope_parameters": {
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}}),
    "llama_rope_yarn": ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                      "original_max_position_embeddings": 64}}),
    "llama_tied": ("llama", {"tie_word_embeddings": True}),
    "mistral_sliding": ("mistral", {"sliding_window": 6}),
    "qwen2_sliding": ("qwen2", {"use_sliding_window": True, "sliding_window": 5,
                                "layer_types": ["sliding_attention", "sliding_attention"]}),
    "qwen2_mixed_sliding": ("qwen2", {"use_sliding_window": True, "sliding_window": 5,
                                      "layer_types": ["full_attention", "sliding_attention"]}),
    "qwen2_moe_sparse_step": ("qwen2_moe", {"decoder_sparse_step": 2, "norm_topk_prob": True}),
    "qwen2_moe_mlp_only": ("qwen2_moe", {"mlp_only_layers": [0]}),
    "olmoe_clip_norm": ("olmoe", {"clip_qkv": 0.3, "norm_topk_prob": True}),
    "mixtral_sliding": ("mixtral", {"sliding_window": 7}),
    "qwen3_tied": ("qwen3", {"tie_word_embeddings": True}),
    "qwen3_moe_mlp_only": ("qwen3_moe", {"mlp_only_layers": [0], "norm_topk_prob": False}),
    "granite_tied": ("granite", {"tie_word_embeddings": True}),
    "phi3_sliding": ("phi3", {"sliding_window": 6}),
    # caps that bite (scores and logits of these random models are small), query_pre_attn_scalar != head_dim
    "gemma2_softcaps": ("gemma2", {"attn_logit_softcapping": 0.5, "final_logit_softcapping": 1.5,
                                   "query_pre_attn_scalar": 24}),
    "gemma3_all_global": ("gemma3", {"layer_types": ["full_attention"] * 6}),
    "smollm3_nope": ("smollm3", {"no_rope_layers": [0, 1, 0, 1]}),
}


class Ref:
    """A tiny HF model directory with transformers' reference outputs."""

    def __init__(self, path: Path, greedy: bool = True) -> None:
        self.path = path
        self.logits = tm.hf_logits(path, PROMPT)
        self.greedy = tm.hf_greedy(path, GREEDY_PROMPT, N_GREEDY) if greedy else None


_REFS: dict[tuple[str, str], Ref] = {}


@pytest.fixture(scope="module")
def ref_of(tmp_path_factory):
    def get(variant: str, dtype: str = "float32", greedy: bool = True) -> Ref:
        key = (variant, dtype)
        if key not in _REFS:
            arch, overrides = VARIANTS[variant]
            d = tmp_path_factory.mktemp(f"{variant}_{dtype}")
            tm.make_hf_model(arch, d, dtype=dtype, tokenizer="bpe", seed=1, **overrides)
            _REFS[key] = Ref(d, greedy)
        return _REFS[key]

    return get


def export_bundle(src: HFModel, out: Path, scheme: str) -> Path:
    """Export through the project's pipeline (exporters/export.py) with f32 or f16 matrices."""
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model

    return export_model(src, out, policy=QuantPolicy(quant=scheme), onnx=False, kernels=False, progress=False).path


def engine_of(bundle: Path) -> Engine:
    return Engine(ResidentWeights(Bundle(bundle)))


def check_parity(ref: Ref, eng: Engine) -> None:
    got = eng.forward(PROMPT, eng.new_cache(64))
    assert got.shape == ref.logits.shape
    diff = float(np.abs(got - ref.logits).max())
    assert diff <= TOL, f"max abs logit diff {diff:.2e} > {TOL}"
    if ref.greedy is not None:
        out = list(eng.generate(GREEDY_PROMPT, N_GREEDY))
        assert out == ref.greedy


# -- parity ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", tm.ARCHS)
def test_f32_bundle_matches_transformers(arch, ref_of, tmp_path):
    ref = ref_of(arch)
    src = open_hf(ref.path)
    assert src.config.arch == arch
    check_parity(ref, engine_of(export_bundle(src, tmp_path / "b", "f32")))


@pytest.mark.parametrize("arch", tm.ARCHS)
def test_f16_bundle_of_f16_checkpoint_matches_transformers(arch, ref_of, tmp_path):
    """An f16 checkpoint (reference: transformers computing in float32 on the same f16 weights) -> f16 bundle."""
    ref = ref_of(arch, "float16")
    src = open_hf(ref.path)
    b = export_bundle(src, tmp_path / "b", "f16")
    schemes = {t["scheme"] for n, t in Bundle(b).tensors.items() if n.endswith((".wq", ".gate", ".down"))}
    assert schemes == {"f16"}
    check_parity(ref, engine_of(b))


def test_every_tensor_f16_via_bundle_writer(ref_of, tmp_path):
    """All tensors (norms, biases, router included) stored as f16 QTensors, written with BundleWriter directly."""
    ref = ref_of("qwen2_moe", "float16")
    src = open_hf(ref.path)
    w = BundleWriter(tmp_path / "b", src.config)
    for name in src.config.tensor_shapes():
        w.add_tensor(name, quantize(src.tensor(name), "f16"))
    tok = src.tokenizer()
    w.set_tokenizer(tok.json, bos_token_id=tok.bos_token_id, eos_token_ids=list(tok.eos_token_ids),
                    add_bos=tok.add_bos)
    check_parity(ref, engine_of(w.finish()))


@pytest.mark.parametrize("arch", ["mixtral", "phi3"])
def test_bf16_checkpoint(arch, ref_of, tmp_path):
    """bfloat16 safetensors (numpy has no bf16: read as raw bytes; Phi-3's fused rows as byte ranges) -> f32
    bundle, vs transformers in float32."""
    ref = ref_of(arch, "bfloat16", greedy=False)
    src = open_hf(ref.path)
    with open(ref.path / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["model.embed_tokens.weight"]["dtype"] == "BF16"
    check_parity(ref, engine_of(export_bundle(src, tmp_path / "b", "f32")))


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v not in tm.ARCHS])
def test_variant_matches_transformers(variant, ref_of, tmp_path):
    ref = ref_of(variant)
    src = open_hf(ref.path)
    cfg = src.config
    if "rope" in variant:
        assert cfg.rope_scaling and cfg.rope_scaling["rope_type"] == variant.split("_")[-1]
    if "sliding" in variant:
        assert cfg.sliding_window and cfg.sliding_window < len(PROMPT)
    if variant == "llama_tied":
        assert cfg.tie_word_embeddings and "lm_head" not in cfg.tensor_shapes()
    if variant == "qwen2_moe_sparse_step":
        assert cfg.moe_layers == (1,) and cfg.norm_topk_prob
    if variant in ("qwen2_moe_mlp_only", "qwen3_moe_mlp_only"):
        assert cfg.moe_layers == (1,)
    if variant == "gemma2_softcaps":
        assert (cfg.attn_logit_softcap, cfg.final_logit_softcap, cfg.attention_scale) == (0.5, 1.5, 24 ** -0.5)
    if variant == "gemma3_all_global":
        assert cfg.layer_types == () and cfg.window_of(0) is None and cfg.rope_of(0) == (1e6, cfg.rope_scaling)
    if variant == "smollm3_nope":
        assert cfg.nope_layers == (0, 2) and cfg.rope_of(0) is None and cfg.rope_of(1) is not None
    if variant == "olmoe_clip_norm":
        assert cfg.clip_qkv == 0.3 and cfg.norm_topk_prob
    check_parity(ref, engine_of(export_bundle(src, tmp_path / "b", "f32")))


@pytest.mark.parametrize("variant", ["llama", "mistral_sliding", "qwen2_moe", "olmoe", "llama_rope_llama3", "qwen3",
                                     "gemma2_softcaps", "gemma3", "smollm3"])
def test_decode_with_cache_equals_full_recompute(variant, ref_of, tmp_path):
    ref = ref_of(variant)
    eng = engine_of(export_bundle(open_hf(ref.path), tmp_path / "b", "f32"))
    full = eng.forward(PROMPT, eng.new_cache(64))
    cache = eng.new_cache(64)
    steps = [eng.forward(PROMPT[:5], cache), eng.forward(PROMPT[5:11], cache)]
    steps += [eng.forward([t], cache) for t in PROMPT[11:]]
    inc = np.concatenate(steps)
    assert cache.length == len(PROMPT)
    assert float(np.abs(inc - full).max()) <= 1e-4
    last = eng.forward(PROMPT, eng.new_cache(64), last_only=True)
    assert last.shape == (1, full.shape[1]) and float(np.abs(last[0] - full[-1]).max()) <= 1e-5


# -- checkpoint layouts ------------------------------------------------------------------------------------------
def test_sharded_checkpoint(ref_of, tmp_path):
    """A checkpoint transformers saved in several shards with model.safetensors.index.json reads the same."""
    import torch
    import transformers as tf

    ref = ref_of("qwen2_moe")
    out = tmp_path / "sharded"
    model = tf.AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    model.save_pretrained(out, max_shard_size="60KB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ref.path / f, out / f)
    assert (out / "model.safetensors.index.json").exists() and len(list(out.glob("*.safetensors"))) > 2
    a, b = open_hf(ref.path), open_hf(out)
    assert a.config == b.config
    for name in a.config.tensor_shapes():
        np.testing.assert_array_equal(a.tensor(name), b.tensor(name))
    eng = engine_of(export_bundle(b, tmp_path / "b", "f32"))
    assert float(np.abs(eng.forward(PROMPT, eng.new_cache(64)) - ref.logits).max()) <= TOL


@pytest.mark.parametrize("arch,prefix,dtype", [("mixtral", "block_sparse_moe", "float32"), ("olmoe", "mlp", "float32"),
                                               ("mixtral", "block_sparse_moe", "bfloat16")])
def test_fused_3d_expert_tensors(arch, prefix, dtype, ref_of, tmp_path):
    """transformers 5's in-memory fused layout (experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I]);
    each expert's slice is read on its own (bf16 included)."""
    import torch
    from safetensors.torch import load_file, save_file

    ref = ref_of(arch, dtype, greedy=dtype == "float32")
    out = tmp_path / "fused"
    shutil.copytree(ref.path, out)
    t = load_file(str(ref.path / "model.safetensors"))
    cfg = open_hf(ref.path).config
    names = ("w1", "w3", "w2") if prefix == "block_sparse_moe" else ("gate_proj", "up_proj", "down_proj")
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}.{prefix}.experts"
        g, u, d = ([t.pop(f"{p}.{e}.{n}.weight") for e in range(cfg.num_experts)] for n in names)
        t[f"{p}.gate_up_proj"] = torch.stack([torch.cat([a, b]) for a, b in zip(g, u)])
        t[f"{p}.down_proj"] = torch.stack(d)
    save_file(t, str(out / "model.safetensors"))
    src = open_hf(out)
    assert src.source_name("layers.0.experts.1.up").endswith("gate_up_proj[up]")
    eng = engine_of(export_bundle(src, tmp_path / "b", "f32"))
    assert float(np.abs(eng.forward(PROMPT, eng.new_cache(64)) - ref.logits).max()) <= TOL


# -- config mapping ----------------------------------------------------------------------------------------------
def _base_cfg(**kw) -> dict:
    d = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100, "intermediate_size": 128}
    d.update(kw)
    return d


def test_config_transformers4_rope_scaling_and_eos_list():
    c = config_from_hf(_base_cfg(rope_theta=500000.0, eos_token_id=[5, 6], bos_token_id=4,
                                 rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 8192}))
    assert c.rope_theta == 500000.0 and c.rope_scaling["rope_type"] == "llama3" and c.eos_token_ids == (5, 6)
    assert c.bos_token_id == 4 and c.head_dim == 16
    c = config_from_hf(_base_cfg(eos_token_id=3), generation={"eos_token_id": [3, 9]})
    assert c.eos_token_ids == (3, 9)


def test_config_defaults_and_head_dim():
    c = config_from_hf(_base_cfg(architectures=["MixtralForCausalLM"], num_local_experts=8, num_experts_per_tok=2,
                                 head_dim=32))
    assert c.rope_theta == 1e6 and c.head_dim == 32 and c.norm_topk_prob and c.moe_layers == (0, 1)
    c = config_from_hf(_base_cfg(architectures=["Qwen2ForCausalLM"], sliding_window=4096, use_sliding_window=False))
    assert c.sliding_window is None and c.attention_bias


def test_config_granite_multipliers():
    """GraniteConfig's defaults are 1.0, and attention_multiplier replaces head_dim ** -0.5 even then."""
    c = config_from_hf(_base_cfg(architectures=["GraniteForCausalLM"]))
    assert (c.embedding_multiplier, c.attention_scale, c.residual_multiplier, c.logits_scaling) == (1.0, 1.0, 1.0, 1.0)
    c = config_from_hf(_base_cfg(architectures=["GraniteForCausalLM"], embedding_multiplier=12, logits_scaling=8.0,
                                 attention_multiplier=0.015625, residual_multiplier=0.22))
    assert (c.embedding_multiplier, c.attention_scale, c.residual_multiplier, c.logits_scaling) == (
        12.0, 0.015625, 0.22, 8.0)
    assert config_from_hf(_base_cfg()).attention_scale is None
    with pytest.raises(UnsupportedModelError, match="mlp_bias"):
        config_from_hf(_base_cfg(architectures=["GraniteForCausalLM"], mlp_bias=True))


def test_config_gemma():
    """Gemma's layer pattern, local RoPE base, embedding scale in the model's dtype, defaults of both versions."""
    g2 = {"architectures": ["Gemma2ForCausalLM"], "hidden_size": 2304, "num_attention_heads": 8,
          "num_key_value_heads": 4, "num_hidden_layers": 4, "vocab_size": 100, "intermediate_size": 128}
    c = config_from_hf(g2)
    assert (c.head_dim, c.attn_logit_softcap, c.final_logit_softcap, c.sliding_window) == (256, 50.0, 30.0, 4096)
    assert c.layer_types == ("sliding_attention", "full_attention") * 2 and c.tie_word_embeddings
    assert c.embedding_multiplier == 48.0 and c.attention_scale == 1 / 16 and c.hidden_act == "gelu_tanh"
    g3 = {**g2, "architectures": ["Gemma3ForCausalLM"], "hidden_size": 2560, "num_hidden_layers": 12,
          "rope_theta": 1e6, "rope_local_base_freq": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
          "torch_dtype": "bfloat16"}
    c = config_from_hf(g3)
    assert c.layer_types == (("sliding_attention",) * 5 + ("full_attention",)) * 2
    assert c.final_logit_softcap is None and c.qk_norm and c.qk_norm_per_head
    assert c.rope_of(0) == (10000.0, None) and c.rope_of(5) == (1e6, {"rope_type": "linear", "factor": 8.0})
    assert c.embedding_multiplier == 50.5  # sqrt(2560) = 50.596 as a bfloat16 tensor, as transformers applies it
    assert config_from_hf({**g3, "torch_dtype": "float16"}).embedding_multiplier == float(np.float16(2560 ** 0.5))
    assert config_from_hf({**g3, "torch_dtype": "float32"}).embedding_multiplier == float(np.float32(2560 ** 0.5))
    with pytest.raises(UnsupportedModelError, match="hidden_activation 'gelu'"):
        config_from_hf({**g2, "hidden_activation": "gelu"})
    with pytest.raises(UnsupportedModelError, match="use_bidirectional_attention"):
        config_from_hf({**g3, "use_bidirectional_attention": True})
    with pytest.raises(UnsupportedModelError, match="sliding-window layers"):
        config_from_hf({**g3, "rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 2.0,
                                                                        "rope_theta": 1e4},
                                                  "full_attention": {"rope_type": "default", "rope_theta": 1e6}}})


def test_config_smollm3_nope_layers():
    base = _base_cfg(architectures=["SmolLM3ForCausalLM"], num_hidden_layers=8)
    c = config_from_hf(base)
    assert c.nope_layers == (3, 7) and c.tie_word_embeddings and c.rope_theta == 2e6
    assert config_from_hf({**base, "no_rope_layer_interval": 2}).nope_layers == (1, 3, 5, 7)
    c = config_from_hf({**base, "use_sliding_window": True, "sliding_window": 16})  # SmolLM3Config's rule
    assert [c.window_of(i) for i in range(8)] == [None, None, None, 16] * 2
    with pytest.raises(ModelFormatError, match="no_rope_layers"):
        config_from_hf({**base, "no_rope_layers": [1, 0]})


# -- bad input ---------------------------------------------------------------------------------------------------
@pytest.fixture
def llama_dir(ref_of, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(ref_of("llama").path, d)
    return d


def _edit_config(d: Path, **kw) -> None:
    c = json.loads((d / "config.json").read_text())
    for k, v in kw.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    (d / "config.json").write_text(json.dumps(c))


def test_error_missing_dir(tmp_path):
    with pytest.raises(ModelFormatError, match="no such model directory"):
        open_hf(tmp_path / "nope")


def test_error_missing_config(llama_dir):
    (llama_dir / "config.json").unlink()
    with pytest.raises(ModelFormatError, match=r"config\.json: missing"):
        open_hf(llama_dir)


def test_error_malformed_config(llama_dir):
    (llama_dir / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match=r"config\.json: not valid JSON"):
        open_hf(llama_dir)


def test_error_config_missing_key(llama_dir):
    _edit_config(llama_dir, hidden_size=None)
    with pytest.raises(ModelFormatError, match="'hidden_size' is missing"):
        open_hf(llama_dir)


def test_error_config_wrong_type(llama_dir):
    _edit_config(llama_dir, num_hidden_layers="two")
    with pytest.raises(ModelFormatError, match="'num_hidden_layers' should be int"):
        open_hf(llama_dir)


def test_error_rope_missing_factor(llama_dir):
    _edit_config(llama_dir, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0})
    with pytest.raises(ModelFormatError, match=r"rope_parameters\.factor"):
        open_hf(llama_dir)


def test_error_unsupported_architecture(llama_dir):
    _edit_config(llama_dir, architectures=["GPT2LMHeadModel"])
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*supported: LlamaForCausalLM.*OlmoeForCausalLM"):
        open_hf(llama_dir)


def test_error_unsupported_rope(llama_dir):
    _edit_config(llama_dir, rope_parameters={"rope_type": "longrope", "rope_theta": 1e4})
    with pytest.raises(UnsupportedModelError, match="longrope"):
        open_hf(llama_dir)
    for kind in ("longrope", "su"):  # Phi-3 128k
        with pytest.raises(UnsupportedModelError, match=f"rope type '{kind}' \\(LongRoPE.*Phi-3"):
            config_from_hf(_base_cfg(architectures=["Phi3ForCausalLM"], rope_scaling={
                "type": kind, "long_factor": [1.0] * 8, "short_factor": [1.0] * 8}))
    c = config_from_hf(_base_cfg(architectures=["Qwen2ForCausalLM"], use_sliding_window=True, sliding_window=8,
                                 layer_types=["full_attention", "sliding_attention"]))  # mixed: per-layer windows
    assert (c.window_of(0), c.window_of(1)) == (None, 8)


def test_error_missing_tensor(llama_dir):
    from safetensors.numpy import load_file, save_file

    t = load_file(str(llama_dir / "model.safetensors"))
    del t["model.layers.1.self_attn.k_proj.weight"]
    save_file(t, str(llama_dir / "model.safetensors"))
    with pytest.raises(ModelFormatError, match=r"model\.safetensors: tensor "
                                               r"'model\.layers\.1\.self_attn\.k_proj\.weight'.*missing"):
        open_hf(llama_dir)


def test_error_wrong_shape(llama_dir):
    from safetensors.numpy import load_file, save_file

    t = load_file(str(llama_dir / "model.safetensors"))
    t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"][:, :32].copy()
    save_file(t, str(llama_dir / "model.safetensors"))
    with pytest.raises(ModelFormatError, match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.up_proj\.weight' "
                                               r"has shape \[128, 32\].*\[128, 64\]"):
        open_hf(llama_dir)


def test_error_no_safetensors_and_corrupt_file(llama_dir):
    st = llama_dir / "model.safetensors"
    st.write_bytes(b"\xff" * 16)
    with pytest.raises(ModelFormatError, match="not a valid safetensors file"):
        open_hf(llama_dir)
    st.unlink()
    with pytest.raises(ModelFormatError, match=r"no \*\.safetensors"):
        open_hf(llama_dir)


def test_error_missing_shard(llama_dir):
    (llama_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(ModelFormatError, match="model-00001-of-00002.safetensors: shard listed"):
        open_hf(llama_dir)


# -- tokenizer ---------------------------------------------------------------------------------------------------
def test_tokenizer_json_passthrough(ref_of):
    ref = ref_of("qwen2")
    spec = open_hf(ref.path).tokenizer()
    assert spec.json == (ref.path / "tokenizer.json").read_text(encoding="utf-8")
    assert spec.bos_token_id == 1 and spec.eos_token_ids == (2,) and spec.add_bos is False


def test_tokenizer_bos_eos_from_tokenizer_config(llama_dir):
    _edit_config(llama_dir, bos_token_id=None, eos_token_id=None)
    (llama_dir / "generation_config.json").unlink()
    tc = json.loads((llama_dir / "tokenizer_config.json").read_text())
    tc["add_bos_token"] = True
    (llama_dir / "tokenizer_config.json").write_text(json.dumps(tc))
    spec = open_hf(llama_dir).tokenizer()
    assert (spec.bos_token_id, spec.eos_token_ids, spec.add_bos) == (1, (2,), True)


def test_tokenizer_sentencepiece_conversion(tmp_path):
    conv = pytest.importorskip("edgespool.exporters.tokenizers_convert",
                               reason="exporters/tokenizers_convert.py (SentencePiece -> tokenizers JSON) not written yet")
    pytest.importorskip("sentencepiece")
    from tokenizers import Tokenizer
    import transformers as tf

    d = tm.make_hf_model("llama", tmp_path / "spm", tokenizer="spm")
    assert not (d / "tokenizer.json").exists()
    spec = open_hf(d).tokenizer()
    assert spec.bos_token_id == 1 and spec.add_bos
    ours = Tokenizer.from_str(spec.json)
    ref = tf.AutoTokenizer.from_pretrained(d)
    text = "Once upon a time, the quick brown fox."
    want = ref(text, add_special_tokens=False)["input_ids"]
    assert ours.encode(text, add_special_tokens=False).ids == want
    assert conv is not None
