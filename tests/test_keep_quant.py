"""`--quant keep`: a GGUF's tensors stored exactly as the file stores them, checked against the file's bytes, ggml's
own dequantisation, llama.cpp's logits and the same model dequantised to f32; plus perplexity (llama-perplexity's
windowing vs llama.cpp and vs torch's cross-entropy) and the real-model assets."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

import gguf_tools as gt
from edgespool.errors import EdgespoolError, OptionError, UnsupportedModelError
from edgespool.exporters.compress import QuantPolicy
from edgespool.exporters.export import export_model
from edgespool.exporters.gguf_source import open_gguf_model
from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.perplexity import chunk_nll, chunks, perplexity

from test_gguf import PROMPT, _llamacpp, models  # noqa: F401 (the session fixture)

# K-quant blocks hold 256 values: a llama wide enough that llama.cpp's Q4_K_M keeps K-quant types
WIDE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)


def _export(path: Path, out: Path, quant: str = "keep", onnx: bool = False) -> Path:
    src = open_gguf_model(path)
    try:
        return export_model(src, out, policy=QuantPolicy(quant=quant), onnx=onnx, kernels=False,
                            progress=False).path
    finally:
        src.close()


def _logits(bundle: Path, ids: list[int]) -> np.ndarray:
    from edgespool import load

    with load(bundle, kernels=False) as m:
        return m.logits(ids)


@pytest.fixture(scope="module")
def q4km(models, tmp_path_factory):  # noqa: F811 - pytest fixture injection
    _llamacpp()
    f32 = models.gguf("llama", "f32", variant="wide", **WIDE)
    return f32, gt.quantize(f32, tmp_path_factory.mktemp("q4km") / "llama.q4_k_m.gguf", "q4_k_m")


def test_keep_stores_the_files_bytes_and_dequantises_like_ggml(q4km, tmp_path):
    _, path = q4km
    b = Bundle(_export(path, tmp_path / "keep"))
    g = open_gguf_model(path)
    kinds = set()
    for name, rec in b.tensors.items():
        gname, expert = g._gguf_name(name)
        t = g.reader.tensors[[x.name for x in g.reader.tensors].index(gname)]
        if t.tensor_type.name == "F32":
            assert rec["scheme"] == "f32"
            continue
        kinds.add(rec["scheme"])
        assert rec["scheme"] == t.tensor_type.name.lower(), name
        stored = b.read_group(rec["group"])[name]
        raw = np.asarray(t.data).reshape(stored.data.shape[0], -1)
        if name.endswith((".wq", ".wk")):  # llama: rows un-permuted as whole rows (blocks untouched)
            heads = g.config.num_heads if name.endswith(".wq") else g.config.num_kv_heads
            from edgespool.exporters.gguf_source import unpermute_qk

            raw = unpermute_qk(raw, heads)
        np.testing.assert_array_equal(stored.data, raw, err_msg=name)  # bytes identical to the file's
        ref = gt.ggml_dequantize(np.asarray(t.data), t.tensor_type.name, int(t.n_elements))
        ref = ref.reshape(stored.shape[0], -1)
        if name.endswith((".wq", ".wk")):
            ref = unpermute_qk(ref, heads)
        np.testing.assert_array_equal(stored.dequantize(), ref, err_msg=name)  # libggml's C dequantisation
    assert {"q4_k", "q6_k"} <= kinds, kinds
    gguf_bytes = os.path.getsize(path)
    # the file's bytes plus at most one 4 KiB alignment pad per tensor (the 1% bound is checked on a real model)
    assert b.weights_nbytes <= gguf_bytes + 4096 * len(b.tensors)
    assert sum(f.stat().st_size for f in b.path.iterdir() if f.is_file()) <= 1.05 * b.weights_nbytes + (6 << 20)


def test_keep_logits_equal_the_dequantised_model_and_track_llamacpp(q4km, tmp_path):
    _, path = q4km
    keep = _logits(_export(path, tmp_path / "keep"), PROMPT)
    f32 = _logits(_export(path, tmp_path / "f32", quant="f32"), PROMPT)  # the same values, dequantised at export
    assert float(np.abs(keep - f32).max()) < 1e-4
    ref = gt.llama_logits(path, PROMPT)  # llama.cpp also rounds activations to 8-bit blocks (Q8_K for K-quants)
    assert float(np.abs(keep - ref).max()) <= 0.35 and float(np.abs(keep - ref).mean()) <= 0.05
    assert (keep.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_requantising_a_kquant_gguf_reports_what_it_cost(q4km, tmp_path):
    _, path = q4km
    rep = export_model(open_gguf_model(path), tmp_path / "i8", policy=QuantPolicy(quant="int8"), onnx=False,
                       kernels=False, progress=False).report
    assert rep["classes"]["ffn"]["rel_rmse"] > 0
    keep = export_model(open_gguf_model(path), tmp_path / "k", policy=QuantPolicy(quant="keep"), onnx=False,
                        kernels=False, progress=False).report
    assert keep["classes"]["ffn"]["rel_rmse"] == 0 and keep["bytes_before"] == keep["bytes_after"]


def test_keep_refuses_onnx_and_types_it_lacks(q4km, tmp_path):
    f32, path = q4km
    with pytest.raises(OptionError, match="ONNX"):
        _export(path, tmp_path / "x", onnx=True)
    iq = gt.quantize(f32, tmp_path / "llama.iq4_nl.gguf", "iq4_nl")
    with pytest.raises(UnsupportedModelError, match="IQ4_NL"):
        _export(iq, tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_cli_defaults_to_keep_for_gguf_and_says_so(q4km, tmp_path):
    from click.testing import CliRunner

    from edgespool.apps.cli import cli

    _, path = q4km
    r = CliRunner().invoke(cli, ["export", "--help"])
    assert "keep (the default for GGUF inputs)" in " ".join(r.output.split())
    r = CliRunner().invoke(cli, ["export", str(path), "-o", str(tmp_path / "b"), "--no-kernels", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["quant"]["quant"] == "keep" and not (tmp_path / "b" / "model.onnx").exists()
    r = CliRunner().invoke(cli, ["inspect", str(tmp_path / "b")])
    assert "on disk" in r.output and "x the weights" in r.output


# -- perplexity ------------------------------------------------------------------------------------------------------
def test_chunk_nll_matches_torch_cross_entropy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    ctx, V = 16, 50
    logits = rng.standard_normal((ctx, V)).astype(np.float32) * 3
    chunk = rng.integers(0, V, ctx).tolist()
    s, n = chunk_nll(logits, chunk)
    first = ctx // 2
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits[first:ctx - 1], dtype=torch.float64),
                                            torch.tensor(chunk[first + 1:]), reduction="sum")
    assert n == ctx - 1 - first and math.isclose(s, float(ref), rel_tol=1e-12)


def test_chunks_follow_llama_perplexity():
    ids = list(range(100, 140))
    c = chunks(ids, 16, bos=1)
    assert len(c) == 2 and c[0][0] == 1 and c[0][1:] == ids[1:16] and c[1][1:] == ids[17:32]
    with pytest.raises(OptionError, match="at least 32"):
        chunks(ids[:20], 16, bos=None)


def test_perplexity_equals_llamacpps_on_the_same_f32_gguf(models, tmp_path):  # noqa: F811
    _llamacpp()
    path = models.gguf("llama", "f32")
    ids = [int(t) for t in np.random.default_rng(3).integers(3, 512, 96)]
    ours = perplexity(lambda c: _logits_cached(path, tmp_path, c), ids, ctx=32, bos=1)
    llm = gt.llama_cpp_logits_fn(path, 32)
    theirs = perplexity(llm, ids, ctx=32, bos=1)
    assert ours.chunks == theirs.chunks == 3 and ours.scored == theirs.scored
    assert abs(ours.ppl / theirs.ppl - 1) < 1e-4, (ours.ppl, theirs.ppl)


_BUNDLES: dict = {}


def _logits_cached(path: Path, tmp: Path, ids: list[int]) -> np.ndarray:
    from edgespool import load

    if path not in _BUNDLES:
        _BUNDLES[path] = load(_export(path, tmp / "ppl"), kernels=False)
    return _BUNDLES[path].logits(ids)


def test_perplexity_cli_json(models, tmp_path):  # noqa: F811
    from click.testing import CliRunner

    from edgespool.apps.cli import cli

    b = _export(models.gguf("llama", "f32"), tmp_path / "b")
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    r = CliRunner().invoke(cli, ["perplexity", str(b), "--text", str(text), "--ctx", "32", "--chunks", "2",
                                 "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["chunks"] == 2 and out["scored"] == 2 * 15 and out["ppl"] > 1
    r = CliRunner().invoke(cli, ["perplexity", str(b), "--text", str(tmp_path / "missing.txt")])
    assert r.exit_code == 1 and "no such file" in r.output


# -- assets ----------------------------------------------------------------------------------------------------------
def test_asset_hash_mismatch_and_unknown_name_are_clean_errors(tmp_path, monkeypatch):
    from dataclasses import replace

    from edgespool.apps import assets

    with pytest.raises(assets.AssetError, match="known: smollm2-135m"):
        assets.get_asset("nope")
    bad = replace(assets.ASSETS["hamlet"], sha256="0" * 64)
    monkeypatch.setitem(assets.ASSETS, "hamlet", bad)
    with pytest.raises(assets.AssetError, match="sha256"):
        assets.fetch("hamlet", root=tmp_path)
    assert not list((tmp_path / "hamlet").glob("*.txt"))  # nothing half-written is cached
    assert issubclass(assets.AssetError, EdgespoolError)


@pytest.mark.slow
def test_real_qwen_keep_bundle_is_the_files_bytes(tmp_path):
    from edgespool.apps.assets import fetch

    path = fetch("qwen2.5-coder-0.5b")
    b = Bundle(_export(path, tmp_path / "q"))
    schemes = {r["scheme"] for r in b.tensors.values()}
    assert {"q4_k", "q6_k", "q8_0", "q5_0"} <= schemes
    assert b.weights_nbytes <= 1.01 * os.path.getsize(path)
    g = open_gguf_model(path)
    byname = {t.name: t for t in g.reader.tensors}
    for name in ("layers.3.ffn.down", "lm_head", "embed"):
        rec = b.tensors[name]
        t = byname[g._gguf_name(name)[0]]
        got = b.read_group(rec["group"])[name].data
        assert got.tobytes() == np.asarray(t.data).tobytes(), name


def test_unknown_pre_tokenizer_is_refused_before_any_weight(models, tmp_path):  # noqa: F811
    import time

    src_path = models.gguf("qwen2", "f32")
    g = open_gguf_model(src_path)
    if g.meta("tokenizer.ggml.model") != "gpt2":
        pytest.skip("the tiny qwen2 GGUF has no BPE vocabulary")
    g.close()
    bad = gt.rewrite_gguf(src_path, tmp_path / "bad.gguf", {"tokenizer.ggml.pre": "qwen9"}, tensors=True)
    src = open_gguf_model(bad)
    touched = []
    orig = src.tensor
    src.tensor = lambda name: touched.append(name) or orig(name)  # type: ignore[method-assign]
    t0 = time.perf_counter()
    with pytest.raises(UnsupportedModelError, match="qwen9"):
        export_model(src, tmp_path / "out", policy=QuantPolicy(quant="f32"), onnx=False, kernels=False,
                     progress=False)
    assert time.perf_counter() - t0 < 1.0 and touched == []
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
