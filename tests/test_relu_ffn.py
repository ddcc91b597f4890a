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
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.runtime.decoder.engine import Engine
    from edgespool.runtime.decoder.weights import ResidentWeights

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
    from edgespool.runtime.bundle.reader import Bundle

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


# -- the bundled FFN layout (--ffn-layout bundled) -------------------------------------------------------------------
def _hf_names() -> dict[str, str]:
    from edgespool.exporters.hf import TENSOR_NAMES

    return {pat: cands[0] for pat, cands in TENSOR_NAMES.items() if cands}


def _dequantised_checkpoint(src: Path, dst: Path, bundle: Path) -> Path:
    """A copy of HF checkpoint ``src`` whose weights are the bundle's stored values (dequantised, the FFN rebuilt
    from the neuron bundles with numpy): transformers on it is the independent reference of a quantised bundle."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from edgespool.runtime.bundle.reader import Bundle

    b = Bundle(bundle)
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("config.json",):
        shutil.copy(src / f, dst / f)
    st = load_file(str(src / "model.safetensors"))
    pats = _hf_names()
    for name in b.tensors:
        t = b.read_group(b.tensors[name]["group"])[name]
        parts = name.split(".")
        if name.endswith(".ffn.bundles"):
            i = parts[1]
            g, u, dt = (v.dequantize() for v in t.vectors())
            for canon, w in (("gate", g), ("up", u), ("down", dt.T)):
                st[pats[f"layers.{{i}}.ffn.{canon}"].format(i=i)] = np.ascontiguousarray(w, np.float32)
            continue
        pat = ".".join(["layers", "{i}", *parts[2:]]) if parts[0] == "layers" else name
        st[pats[pat].format(i=parts[1] if parts[0] == "layers" else "")] = np.ascontiguousarray(
            t.dequantize(), np.float32)
    save_file(st, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("scheme", ["f32", "f16", "int8", "int4"])
def test_bundled_layout_resident_matches_transformers(relu_llama, tmp_path, scheme):
    """A bundled-FFN bundle, resident: f32 vs transformers itself; f16/int8/int4 vs transformers run on the
    bundle's stored (dequantised) values. The manifest says schema 2, a group per FFN, 512-byte bundles."""
    import tiny_models as tm

    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.hf import open_hf
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.runtime.decoder.engine import Engine
    from edgespool.runtime.decoder.weights import ResidentWeights

    d, ref, greedy = relu_llama
    out = export_model(open_hf(d), tmp_path / "b", policy=QuantPolicy(quant=scheme), onnx=False, kernels=False,
                       progress=False, ffn_layout="bundled").path
    b = Bundle(out)
    assert b.manifest["schema_version"] == 2 and b.ffn_layout == "bundled"
    for i in range(b.config.num_layers):
        g = b.groups[f"layers.{i}.ffn_bundled"]
        assert g.tensors == (f"layers.{i}.ffn.bundles",) and g.offset % 4096 == 0
        assert not any(".ffn." in t for t in b.groups[f"layers.{i}"].tensors)
        rec = b.tensors[f"layers.{i}.ffn.bundles"]
        assert rec["layout"] == "neuron_bundles" and rec["bundle"]["bytes"] % 512 == 0
    if scheme != "f32":
        ref = tm.hf_logits(_dequantised_checkpoint(d, tmp_path / "deq", out), PROMPT)
    eng = Engine(ResidentWeights(b))
    got = eng.forward(PROMPT, eng.new_cache(64))
    assert float(np.abs(got - ref).max()) <= TOL
    if scheme == "f32":
        assert list(eng.generate(PROMPT[:6], 16)) == greedy


def test_bundle_rows_hold_the_matrix_layouts_values(relu_llama, tmp_path):
    """gate/up rows in a bundle are byte-identical to the matrix layout's int8 rows; down columns are down.T
    quantised per neuron (numpy reference quantiser)."""
    from edgespool.exporters.hf import open_hf
    from edgespool.runtime.bundle.reader import Bundle

    d, _, _ = relu_llama
    out = _export_q(d, tmp_path / "b", "int8", "bundled")
    mat = Bundle(_export_q(d, tmp_path / "m", "int8", "matrix"))
    b = Bundle(out)
    src = open_hf(d)
    t = b.read_group("layers.1.ffn_bundled")["layers.1.ffn.bundles"]
    g, u, dt = t.vectors()
    m = mat.read_group("layers.1")
    for q, name in ((g, "gate"), (u, "up")):
        np.testing.assert_array_equal(q.data, m[f"layers.1.ffn.{name}"].data)
        np.testing.assert_array_equal(q.scale, m[f"layers.1.ffn.{name}"].scale)
    down = src.tensor("layers.1.ffn.down").astype(np.float32)
    s = np.abs(down.T).max(axis=1) / 127.0
    np.testing.assert_array_equal(dt.data, np.clip(np.rint(down.T / s[:, None]), -127, 127).astype(np.int8))
    np.testing.assert_allclose(dt.scale, s, rtol=1e-6)


def _export_q(d: Path, out: Path, scheme: str, layout: str, onnx: bool = False) -> Path:
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.hf import open_hf

    return export_model(open_hf(d), out, policy=QuantPolicy(quant=scheme), onnx=onnx, kernels=False,
                        progress=False, ffn_layout=layout).path


def test_bundled_layout_onnx_still_matches(relu_llama, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from edgespool.exporters.onnx_decoder import MODEL_FILE, empty_kv_cache
    from edgespool.runtime.bundle.reader import Bundle

    d, ref, _ = relu_llama
    b = _export_q(d, tmp_path / "b", "f32", "bundled", onnx=True)
    sess = ort.InferenceSession(str(b / MODEL_FILE), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.asarray([PROMPT], np.int64), **empty_kv_cache(Bundle(b).config, 1)}
    names = [o.name for o in sess.get_outputs()]
    assert float(np.abs(dict(zip(names, sess.run(None, feeds)))["logits"][0] - ref).max()) <= TOL


def test_bundled_layout_errors(relu_llama, tmp_path):
    """SiLU models are refused; version-2 manifests with an unknown layout, a bad bundle record or a version-1
    reader's view are clear errors naming the tensor."""
    import tiny_models as tm

    from edgespool.errors import BundleError, OptionError
    from edgespool.runtime.bundle.reader import Bundle

    silu = tmp_path / "silu"
    tm.make_hf_model("llama", silu, seed=1, tokenizer="bpe")
    with pytest.raises(OptionError, match="ReLU-family"):
        _export_q(silu, tmp_path / "x", "f32", "bundled")
    d, _, _ = relu_llama
    b = _export_q(d, tmp_path / "b", "int8", "bundled")
    m0 = json.loads((b / "manifest.json").read_text())
    m = json.loads(json.dumps(m0))
    m["tensors"]["layers.0.ffn.bundles"]["layout"] = "hilbert_curve"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="layers.0.ffn.bundles.*unknown layout 'hilbert_curve'"):
        Bundle(b)
    m = json.loads(json.dumps(m0))
    m["tensors"]["layers.0.ffn.bundles"]["bundle"]["bytes"] = 1000
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="layers.0.ffn.bundles"):
        Bundle(b)
    m = json.loads(json.dumps(m0))
    m["schema_version"] = 3
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="schema version 3"):
        Bundle(b)
    # a plain (matrix) export stays schema 1, readable by version-1 readers
    assert json.loads((_export_q(d, tmp_path / "m", "f32", "matrix") / "manifest.json").read_text())[
        "schema_version"] == 1


def test_cli_export_ffn_layout(relu_llama, tmp_path):
    from click.testing import CliRunner

    from edgespool.apps.cli import cli
    from edgespool.runtime.bundle.reader import Bundle

    d, _, _ = relu_llama
    r = CliRunner().invoke(cli, ["export", str(d), "-q", "int8", "--ffn-layout", "bundled", "--no-onnx",
                                  "--no-kernels", "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert Bundle(tmp_path / "b").ffn_layout == "bundled"


# -- streaming: neuron windows (offload/neuron_ffn.py) ----------------------------------------------------------------
PLAN_KW = dict(max_context=64, max_batch_tokens=32, workspace=1 << 20, kv_dtype="f32")  # exactness at f32 KV


@pytest.fixture(scope="module")
def relu_bundles(tmp_path_factory):
    """A larger tiny ReLU Llama (H 128, I 512, 3 layers) exported f32 and int8 with bundled FFNs."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import tiny_models as tm

    d = tmp_path_factory.mktemp("relu_llama_big")
    tm.make_hf_model("llama", d, seed=5, tokenizer="bpe", hidden_act="relu", hidden_size=128, intermediate_size=512,
                     num_hidden_layers=3)
    return {q: _export_q(d, tmp_path_factory.mktemp(f"b_{q}") / "b", q, "bundled") for q in ("f32", "int8")}


@pytest.mark.parametrize("scheme,capacity", [("f32", 0.6), ("f32", 0.1), ("int8", 0.3), ("int8", 0.1)])
def test_streamed_neuron_windows_equal_resident(relu_bundles, scheme, capacity):
    """At the minimum budget of the neuron-window plan (attention streamed through one slot, FFNs through windows
    of 60 % / 10 % of the neurons: reuse, eviction and chunked passes), the logits equal the resident engine's
    within 1e-5 and greedy tokens are identical; only newly active neurons are read."""
    from edgespool.offload.streaming_source import StreamingWeights
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.runtime.decoder.engine import Engine
    from edgespool.runtime.decoder.weights import ResidentWeights
    from edgespool.schedulers.memory_plan import minimum_budget, plan_memory

    b = Bundle(relu_bundles[scheme])
    lo = minimum_budget(b, None, neuron_capacity=capacity, **PLAN_KW)
    plan = plan_memory(b, None, lo, neuron_capacity=capacity, **PLAN_KW)
    assert plan.neuron_layers == (0, 1, 2) and plan.streamed_layers and not plan.is_resident
    assert plan.total_bytes <= lo and plan.neuron_capacity == int(np.ceil(capacity * 512))
    res = Engine(ResidentWeights(b))
    src = StreamingWeights(b, plan, io_threads=1, neuron_io_threads=2)
    try:
        st = Engine(src)
        ref = res.forward(PROMPT, res.new_cache(64))
        got = st.forward(PROMPT, st.new_cache(64))
        assert float(np.abs(got - ref).max()) <= 1e-5
        c1, c2 = res.new_cache(64), st.new_cache(64)
        res.forward(PROMPT[:4], c1)
        st.forward(PROMPT[:4], c2)
        for t in PROMPT[4:]:  # decode steps, one token each
            a, s = res.forward([t], c1), st.forward([t], c2)
            assert float(np.abs(a - s).max()) <= 1e-5
        assert list(Engine(src).generate(PROMPT[:6], 12)) == list(res.generate(PROMPT[:6], 12))
        n = src.stats()["neuron_window"]
        assert 0.2 < n["active_fraction"] < 0.8  # a random ReLU FFN: about half the neurons fire
        assert n["neurons_loaded"] <= n["neurons_requested"]
        if capacity > 0.5:
            assert n["reuse"] > 0.2  # neurons kept in the window are not read again
        elif capacity > 0.2:
            assert n["reuse"] > 0.0
        else:
            assert n["neurons_loaded"] == n["neurons_requested"] or n["reuse"] < 0.2
        assert n["bytes_read"] == n["neurons_loaded"] * plan.neuron_bundle_bytes
    finally:
        src.close()


def test_neuron_window_faults(relu_bundles, tmp_path):
    """An injected read error in a bundled FFN group, or the weights file truncated while running, is a
    StorageError naming the file: never a wrong token."""
    import shutil

    from edgespool.errors import StorageError
    from edgespool.offload.streaming_source import StreamingWeights
    from edgespool.offload.weight_store import fault_from_env
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.runtime.decoder.engine import Engine
    from edgespool.schedulers.memory_plan import minimum_budget, plan_memory

    d = tmp_path / "b"
    shutil.copytree(relu_bundles["int8"], d)
    b = Bundle(d)
    plan = plan_memory(b, None, minimum_budget(b, None, neuron_capacity=0.1, **PLAN_KW), neuron_capacity=0.1,
                       **PLAN_KW)
    with pytest.raises(StorageError, match="weights.bin: read error in tensor 'layers.1.ffn.bundles'"):
        StreamingWeights(b, plan, fault=fault_from_env("eio:layers.1.ffn_bundled"))
    src = StreamingWeights(b, plan)
    try:
        eng = Engine(src)
        cache = eng.new_cache(64)
        eng.forward(PROMPT[:4], cache)
        with open(b.weights_path, "r+b") as f:  # cut the file inside the last layer's neuron bundles
            f.truncate(b.groups["layers.2.ffn_bundled"].offset + 512)
        with pytest.raises(StorageError, match="weights.bin"):
            for t in PROMPT[4:]:
                eng.forward([t], cache)
    finally:
        src.close()


def test_cli_bench_reports_neuron_windows(relu_bundles):
    from click.testing import CliRunner

    from edgespool.apps.cli import cli
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.schedulers.memory_plan import minimum_budget

    b = relu_bundles["int8"]
    lo = minimum_budget(Bundle(b), None, neuron_capacity=0.2, max_context=4 + 3 + 16, max_batch_tokens=4)
    r = CliRunner().invoke(cli, ["bench", str(b), "--memory-budget", str(lo + 4096), "-n", "3",
                                 "--prompt-tokens", "4", "--neuron-capacity", "0.2", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    nw = res["neuron_window"]
    assert res["plan"]["neuron_layers"] == [0, 1, 2] and nw["capacity"] == int(np.ceil(0.2 * 512))
    assert nw["decode"]["passes"] == 3 * 2 and res["bytes_read_per_token"] > 0
