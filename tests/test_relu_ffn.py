"""ReLU-family (ReGLU) Llama checkpoints: ``hidden_act: "relu"`` (ReluLLaMA / ProSparse-style LlamaForCausalLM,
FFN ``down(relu(gate x) * up x)``) through the HF exporter, the engine, the numpy reference kernel and the ONNX
lowering, each checked against transformers (or numpy); plus the errors for activations edgespool does not run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgespool.errors import UnsupportedModelError
from edgespool.exporters.hf_config import config_from_hf
from edgespool.kernels.quant import quantize
from edgespool.kernels.swiglu import reglu, swiglu

TOL = 1e-3
PROMPT = [int(t) for t in np.random.default_rng(11).integers(3, 500, 20)]


def _hf_dict(**kw) -> dict:
    d = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 512, "intermediate_size": 128}
    d.update(kw)
    return d


# -- config mapping -------------------------------------------------------------------------------------------------
def test_config_accepts_relu_for_llama_and_rejects_other_activations():
    assert config_from_hf(_hf_dict(hidden_act="relu")).hidden_act == "relu"
    assert config_from_hf(_hf_dict()).hidden_act == "silu"
    with pytest.raises(UnsupportedModelError, match="hidden_act 'gelu'"):
        config_from_hf(_hf_dict(hidden_act="gelu"))
    moe = _hf_dict(architectures=["MixtralForCausalLM"], num_local_experts=4, num_experts_per_tok=2,
                   hidden_act="relu")
    with pytest.raises(UnsupportedModelError, match="hidden_act 'relu'"):
        config_from_hf(moe)


# -- numpy reference kernel ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["f32", "int8"])
def test_reglu_kernel_matches_numpy(scheme):
    rng = np.random.default_rng(0)
    H, I = 48, 96
    g, u, d = (rng.standard_normal(s).astype(np.float32) for s in ((I, H), (I, H), (H, I)))
    x = rng.standard_normal((3, H)).astype(np.float32)
    qg, qu, qd = (quantize(w, scheme) for w in (g, u, d))
    G, U, D = (q.dequantize().astype(np.float64) for q in (qg, qu, qd))
    xd = x.astype(np.float64)
    ref = (np.maximum(xd @ G.T, 0) * (xd @ U.T)) @ D.T
    np.testing.assert_allclose(reglu(x, qg, qu, qd), ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(swiglu(x, qg, qu, qd, "relu"), ref, atol=1e-4, rtol=1e-4)
    silu_ref = ((xd @ G.T) / (1 + np.exp(-(xd @ G.T))) * (xd @ U.T)) @ D.T
    np.testing.assert_allclose(swiglu(x, qg, qu, qd), silu_ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="gelu"):
        swiglu(x, qg, qu, qd, "gelu")


# -- against transformers --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def relu_llama(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import tiny_models as tm

    d = tmp_path_factory.mktemp("relu_llama")
    tm.make_hf_model("llama", d, seed=3, tokenizer="bpe", hidden_act="relu")
    assert json.loads((d / "config.json").read_text())["hidden_act"] == "relu"
    return d, tm.hf_logits(d, PROMPT), tm.hf_greedy(d, PROMPT[:6], 16)


def _export(src_dir: Path, out: Path, onnx: bool = False, **kw) -> Path:
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.hf import open_hf

    return export_model(open_hf(src_dir), out, policy=QuantPolicy(quant="f32"), onnx=onnx, kernels=False,
                        progress=False, **kw).path


def test_relu_llama_bundle_matches_transformers(relu_llama, tmp_path):
    from edgespool.runtime.bundle import Bundle
    from edgespool.runtime.engine import Engine
    from edgespool.runtime.weights import ResidentWeights

    d, ref, greedy = relu_llama
    b = _export(d, tmp_path / "b")
    assert Bundle(b).config.hidden_act == "relu"
    eng = Engine(ResidentWeights(Bundle(b)))
    got = eng.forward(PROMPT, eng.new_cache(64))
    assert float(np.abs(got - ref).max()) <= TOL
    assert list(eng.generate(PROMPT[:6], 16)) == greedy
    # the activation matters: the same weights with SiLU give other logits (the test could fail)
    m = json.loads((b / "manifest.json").read_text())
    m["model"]["hidden_act"] = "silu"
    (b / "manifest.json").write_text(json.dumps(m))
    eng2 = Engine(ResidentWeights(Bundle(b)))
    assert float(np.abs(eng2.forward(PROMPT, eng2.new_cache(64)) - ref).max()) > 10 * TOL


def test_relu_llama_onnx_matches_transformers(relu_llama, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from edgespool.exporters.onnx_decoder import MODEL_FILE, empty_kv_cache
    from edgespool.runtime.bundle import Bundle

    d, ref, _ = relu_llama
    b = _export(d, tmp_path / "b", onnx=True)
    cfg = Bundle(b).config
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(b / MODEL_FILE), so, providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.asarray([PROMPT], np.int64), **empty_kv_cache(cfg, 1)}
    names = [o.name for o in sess.get_outputs()]
    logits = dict(zip(names, sess.run(None, feeds)))["logits"][0]
    assert float(np.abs(logits - ref).max()) <= TOL
