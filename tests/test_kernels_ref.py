"""Every numpy reference kernel against transformers' / torch's own implementation of the same op."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama import modeling_llama as ml  # noqa: E402

from edgespool.kernels import (  # noqa: E402
    Rope, apply_rope, quantize, rope_cos_sin, rope_inv_freq, route, sparse_moe,
)
from edgespool.kernels import attention as attention_mod  # noqa: E402
from edgespool.kernels.attention import attention  # noqa: E402
from edgespool.kernels.linear import linear  # noqa: E402
from edgespool.kernels.rmsnorm import rmsnorm  # noqa: E402
from edgespool.kernels.swiglu import swiglu  # noqa: E402
from edgespool.kernels.quant import QTensor  # noqa: E402
from edgespool.kernels.table import REFERENCE  # noqa: E402

RNG = np.random.default_rng(0)


def t(a: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(a))


def q32(a) -> QTensor:
    return quantize(a.detach().numpy() if hasattr(a, "detach") else a, "f32")


def llama_cfg(**kw):
    base = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128)
    base.update(kw)
    return tf.LlamaConfig(**base)


# -- RMSNorm -----------------------------------------------------------------------------------------------------
def test_rmsnorm_matches_llama_rmsnorm():
    x = RNG.standard_normal((7, 64)).astype(np.float32) * 3
    w = RNG.standard_normal(64).astype(np.float32)
    mod = ml.LlamaRMSNorm(64, eps=1e-5)
    mod.weight.data = t(w)
    with torch.no_grad():
        ref = mod(t(x)).numpy()
    np.testing.assert_allclose(rmsnorm(x, w, 1e-5), ref, rtol=1e-5, atol=1e-6)


# -- RoPE --------------------------------------------------------------------------------------------------------
ROPE_PARAMS = {
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32},
}


@pytest.mark.parametrize("kind", list(ROPE_PARAMS))
@pytest.mark.parametrize("head_dim", [16, 64])
def test_rope_inv_freq_matches_transformers_init_functions(kind, head_dim):
    cfg = llama_cfg(hidden_size=head_dim * 4, rope_parameters=dict(ROPE_PARAMS[kind]))
    scaling = {k: v for k, v in cfg.rope_parameters.items() if k != "rope_theta"}
    for seq_len in ([None, 100, 300] if kind == "dynamic" else [None]):
        ref_inv, ref_att = ROPE_INIT_FUNCTIONS[kind](cfg, None, seq_len=seq_len)
        inv, att = rope_inv_freq(head_dim, cfg.rope_parameters["rope_theta"], scaling, cfg.max_position_embeddings,
                                 seq_len=seq_len)
        np.testing.assert_allclose(inv, ref_inv.numpy(), rtol=2e-6)
        assert att == pytest.approx(ref_att)


def test_rope_default_and_cos_sin_match_rotary_embedding_module():
    cfg = llama_cfg(rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    mod = ml.LlamaRotaryEmbedding(cfg)
    pos = np.arange(3, 90)
    with torch.no_grad():
        cos_ref, sin_ref = mod(torch.zeros(1, dtype=torch.float32), t(pos)[None])
    inv, att = rope_inv_freq(16, 10000.0, None, 128)
    np.testing.assert_allclose(inv, mod.inv_freq.numpy(), rtol=1e-7)
    cos, sin = rope_cos_sin(pos, inv, att)
    np.testing.assert_allclose(cos, cos_ref[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(sin, sin_ref[0].numpy(), atol=1e-6)
    c2, s2 = Rope(16, 10000.0, None, 128).cos_sin(pos)  # cached table path
    np.testing.assert_allclose(c2, cos, atol=1e-7)
    np.testing.assert_allclose(s2, sin, atol=1e-7)


def test_apply_rope_matches_apply_rotary_pos_emb():
    T, nh, nkv, D = 9, 4, 2, 16
    q = RNG.standard_normal((T, nh, D)).astype(np.float32)
    k = RNG.standard_normal((T, nkv, D)).astype(np.float32)
    cos, sin = rope_cos_sin(np.arange(5, 5 + T), *rope_inv_freq(D, 10000.0))
    qr, kr = ml.apply_rotary_pos_emb(t(q.transpose(1, 0, 2))[None], t(k.transpose(1, 0, 2))[None],
                                     t(cos)[None], t(sin)[None])
    np.testing.assert_allclose(apply_rope(q, cos, sin), qr[0].numpy().transpose(1, 0, 2), atol=1e-6)
    np.testing.assert_allclose(apply_rope(k, cos, sin), kr[0].numpy().transpose(1, 0, 2), atol=1e-6)


# -- attention ---------------------------------------------------------------------------------------------------
def _torch_attention(q, k, v, q_pos, k_pos, window):
    """transformers' eager attention with a mask from transformers' own mask functions."""
    from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function

    fn = sliding_window_causal_mask_function(window) if window else causal_mask_function
    allowed = fn(0, 0, t(q_pos)[:, None], t(k_pos)[None, :])
    mask = torch.where(allowed, 0.0, float("-inf"))[None, None].float()
    module = torch.nn.Module()
    module.num_key_value_groups = q.shape[1] // k.shape[0]
    out, _ = ml.eager_attention_forward(module, t(q.transpose(1, 0, 2))[None], t(k)[None], t(v)[None], mask,
                                        scaling=q.shape[-1] ** -0.5)
    return out[0].numpy()  # [T, nh, D]


@pytest.mark.parametrize("nh,nkv", [(4, 4), (4, 2), (8, 1)])
@pytest.mark.parametrize("window", [None, 4])
def test_attention_prefill_matches_eager_attention(nh, nkv, window):
    T, D = 11, 16
    q = RNG.standard_normal((T, nh, D)).astype(np.float32)
    k = RNG.standard_normal((nkv, T, D)).astype(np.float32)
    v = RNG.standard_normal((nkv, T, D)).astype(np.float32)
    pos = np.arange(T)
    np.testing.assert_allclose(attention(q, k, v, pos, pos, window), _torch_attention(q, k, v, pos, pos, window),
                               atol=2e-6)


def test_attention_in_query_blocks_equals_one_block(monkeypatch):
    T, nh, nkv, D = 50, 4, 2, 16
    q = RNG.standard_normal((T, nh, D)).astype(np.float32)
    k = RNG.standard_normal((nkv, T, D)).astype(np.float32)
    v = RNG.standard_normal((nkv, T, D)).astype(np.float32)
    pos = np.arange(T)
    whole = attention(q, k, v, pos, pos, 9)
    monkeypatch.setattr(attention_mod, "SCORE_BYTES", 4 * nh * T * 7)  # blocks of 7 queries
    np.testing.assert_allclose(attention(q, k, v, pos, pos, 9), whole, atol=1e-6)
    np.testing.assert_allclose(whole, _torch_attention(q, k, v, pos, pos, 9), atol=2e-6)


@pytest.mark.parametrize("window", [None, 5])
def test_attention_decode_against_cache_matches_eager_attention(window):
    S, D, nh, nkv = 20, 16, 4, 2
    q = RNG.standard_normal((1, nh, D)).astype(np.float32)
    k = RNG.standard_normal((nkv, S, D)).astype(np.float32)
    v = RNG.standard_normal((nkv, S, D)).astype(np.float32)
    qp, kp = np.array([S - 1]), np.arange(S)
    np.testing.assert_allclose(attention(q, k, v, qp, kp, window), _torch_attention(q, k, v, qp, kp, window),
                               atol=2e-6)


# -- SwiGLU ------------------------------------------------------------------------------------------------------
def test_swiglu_matches_llama_mlp():
    torch.manual_seed(0)
    mod = ml.LlamaMLP(llama_cfg())
    x = RNG.standard_normal((5, 64)).astype(np.float32) * 2
    with torch.no_grad():
        ref = mod(t(x)).numpy()
    got = swiglu(x, q32(mod.gate_proj.weight), q32(mod.up_proj.weight), q32(mod.down_proj.weight))
    np.testing.assert_allclose(got, ref, atol=2e-6, rtol=1e-5)


# -- linear dispatch ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["f32", "f16", "int8", "int4"])
def test_linear_matches_torch_linear_on_the_dequantised_weight(scheme):
    w = RNG.standard_normal((48, 64)).astype(np.float32)
    b = RNG.standard_normal(48).astype(np.float32)
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    qt = quantize(w, scheme)
    ref = torch.nn.functional.linear(t(x), t(qt.dequantize()), t(b)).numpy()
    np.testing.assert_allclose(linear(x, qt, b), ref, atol=1e-5)
    np.testing.assert_array_equal(REFERENCE.linear(x, qt, b), linear(x, qt, b))  # the same reference kernels


def test_reference_table_is_the_numpy_reference_and_read_only():
    """REFERENCE (the default kernel table) runs exactly kernels.linear.linear / kernels.attention.attention, says
    so, and cannot be changed; an unknown scheme fails the same way through both."""
    import dataclasses

    assert REFERENCE.attention_kernel is None and REFERENCE.description == "numpy reference kernels"
    with pytest.raises(TypeError):
        REFERENCE.linear_kernels["int8"] = None  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        REFERENCE.attention_kernel = lambda *a: None  # type: ignore[misc]
    q = RNG.standard_normal((3, 4, 16)).astype(np.float32)
    k = RNG.standard_normal((2, 9, 16)).astype(np.float32)
    v = RNG.standard_normal((2, 9, 16)).astype(np.float32)
    np.testing.assert_array_equal(REFERENCE.attention(q, k, v, np.arange(6, 9), np.arange(9), 4),
                                  attention(q, k, v, np.arange(6, 9), np.arange(9), 4))
    bogus = QTensor("int3", (4, 4), np.zeros((4, 4), np.int8))
    for fn in (linear, REFERENCE.linear):
        with pytest.raises(ValueError, match="no linear kernel for weight scheme 'int3'"):
            fn(np.zeros((1, 4), np.float32), bogus)


# -- MoE ---------------------------------------------------------------------------------------------------------
def _moe_module(arch: str, norm_topk_prob: bool):
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    common = dict(hidden_size=32, num_attention_heads=4, num_experts_per_tok=2)
    if arch == "mixtral":
        cfg = tf.MixtralConfig(**common, intermediate_size=24, num_local_experts=6)
        mod = MixtralSparseMoeBlock(cfg)
    elif arch == "qwen2_moe":
        cfg = tf.Qwen2MoeConfig(**common, moe_intermediate_size=24, num_experts=6, shared_expert_intermediate_size=40,
                                norm_topk_prob=norm_topk_prob)
        mod = Qwen2MoeSparseMoeBlock(cfg)
    else:
        cfg = tf.OlmoeConfig(**common, intermediate_size=24, num_experts=6, norm_topk_prob=norm_topk_prob)
        mod = OlmoeSparseMoeBlock(cfg)
    torch.manual_seed(1)
    for p in mod.parameters():
        p.data = torch.randn_like(p) * 0.3
    return mod.eval()


@pytest.mark.parametrize("arch,norm", [("mixtral", True), ("qwen2_moe", False), ("qwen2_moe", True),
                                       ("olmoe", False), ("olmoe", True)])
def test_moe_block_matches_transformers_sparse_moe_block(arch, norm):
    mod = _moe_module(arch, norm)
    x = RNG.standard_normal((13, 32)).astype(np.float32)
    with torch.no_grad():
        ref = mod(t(x)[None])
        ref = (ref[0] if isinstance(ref, tuple) else ref)[0].numpy()
        logits, ref_w, ref_idx = mod.gate(t(x))
    # routing: same experts, same weights (normalisation rule of the architecture)
    w, idx = route(x @ mod.gate.weight.detach().numpy().T, 2, norm)
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(ref_idx.numpy(), 1))
    np.testing.assert_allclose(np.sort(w, 1), np.sort(ref_w.numpy(), 1), atol=1e-6)
    if norm:
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    else:
        assert (w.sum(1) < 1.0).all()
    ex = mod.experts
    inter = ex.gate_up_proj.shape[1] // 2
    experts = {e: (q32(ex.gate_up_proj[e, :inter]), q32(ex.gate_up_proj[e, inter:]), q32(ex.down_proj[e]))
               for e in range(ex.gate_up_proj.shape[0])}
    shared = None
    if arch == "qwen2_moe":
        se = mod.shared_expert
        shared = (q32(se.gate_proj.weight), q32(se.up_proj.weight), q32(se.down_proj.weight),
                  q32(mod.shared_expert_gate.weight))
    got = sparse_moe(x, q32(mod.gate.weight), experts, 2, norm, shared)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
