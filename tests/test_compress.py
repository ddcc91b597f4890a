"""Compression policy (EdgeMoE-style per-expert bit widths) and the export report's figures."""
import numpy as np
import pytest

from conftest import make_synth_bundle
from edgespool.errors import OptionError
from edgespool.exporters.compress import QuantPolicy
from edgespool.runtime.bundle.reader import Bundle


def test_per_expert_bits_policy(tmp_path):
    res = make_synth_bundle(tmp_path / "b", quant="f16", expert_bits=4, dense_bits=8)
    b = Bundle(res.path)
    s = {n: r["scheme"] for n, r in b.tensors.items()}
    assert s["layers.0.experts.1.up"] == "int4" and s["layers.1.experts.3.down"] == "int4"
    assert s["layers.0.wq"] == "int8" and s["embed"] == "int8" and s["lm_head"] == "int8"
    assert s["layers.0.router"] == "f32" and s["layers.0.attn_norm"] == "f32" and s["norm"] == "f32"
    rep = res.report
    # sizes: before = f32 source bytes; after = what the bundle stores
    exp = rep["classes"]["expert"]
    assert exp["bytes_before"] == exp["params"] * 4
    stored = sum(p["nbytes"] for n, r in b.tensors.items() if ".experts." in n for p in r["parts"].values())
    assert exp["bytes_after"] == stored
    assert 5.5 < exp["bytes_before"] / exp["bytes_after"] < 7.2  # int4 + f16 scale per 32 = 4.5 bits
    assert 0.01 < exp["rel_rmse"] < 0.15 and rep["classes"]["attn"]["rel_rmse"] < 0.02


def test_report_error_matches_numpy_recomputation(tmp_path):
    from conftest import SMALL
    from edgespool.exporters.synth import synth_demo_model
    from edgespool.kernels.quant import dequantize

    res = make_synth_bundle(tmp_path / "b", quant="int8")
    src = synth_demo_model(**SMALL)
    b = Bundle(res.path)
    se = sr = 0.0
    mx = 0.0
    for name in b.tensors:
        if name.startswith("layers.") and name.split(".")[-1] in ("wq", "wk", "wv", "wo"):
            w = src.tensor(name)
            g = b.read_group(".".join(name.split(".")[:2]))[name]
            e = dequantize(g) - w
            se += float((e.astype(np.float64) ** 2).sum())
            sr += float((w.astype(np.float64) ** 2).sum())
            mx = max(mx, float(np.abs(e).max()))
    attn = res.report["classes"]["attn"]
    assert attn["rel_rmse"] == pytest.approx(np.sqrt(se / sr), rel=1e-6)
    assert attn["max_abs_err"] == pytest.approx(mx, rel=1e-6)


def test_int4_falls_back_to_int8_for_indivisible_widths():
    p = QuantPolicy(quant="int4", group_size=64)
    assert p.scheme_for("layers.0.wq", (64, 96)) == "int8"
    assert p.scheme_for("layers.0.wq", (64, 128)) == "int4"


@pytest.mark.parametrize("kw,msg", [({"quant": "int3"}, "--quant"), ({"group_size": 7}, "--group-size"),
                                    ({"expert_bits": 5}, "--expert-bits"), ({"dense_bits": 2}, "--dense-bits"),
                                    ({"head_bits": 3}, "--head-bits")])
def test_bad_policy_options(kw, msg):
    with pytest.raises(OptionError, match=msg):
        QuantPolicy(**kw)


def test_head_bits_overrides_the_output_head_only():
    from edgespool.runtime.bundle.names import LM_HEAD

    p = QuantPolicy(quant="keep", head_bits=4)
    assert p.scheme_for(LM_HEAD, (512, 64)) == "int4" and not p.keeps(LM_HEAD, (512, 64))
    assert p.keeps("layers.0.wq", (64, 64)) and p.scheme_for("layers.0.ffn.w1", (64, 64)) == "keep"
    assert QuantPolicy(quant="keep").keeps(LM_HEAD, (512, 64))
    assert QuantPolicy(quant="int8", dense_bits=8, head_bits=4).scheme_for("layers.0.wq", (64, 64)) == "int8"


def test_export_with_head_bits_stores_the_head_in_int4(tmp_path):
    from conftest import SMALL
    from edgespool.exporters.export import export_model
    from edgespool.exporters.synth import synth_demo_model
    from edgespool.kernels.quant import dequantize
    from edgespool.runtime.bundle.names import LM_HEAD

    src = synth_demo_model(**SMALL)
    export_model(src, tmp_path / "b", policy=QuantPolicy(quant="int8", head_bits=4), overwrite=True, onnx=False,
                 kernels=False, progress=False)
    b = Bundle(tmp_path / "b")
    assert b.manifest["quant"]["head_bits"] == 4
    head = b.read_group("head")[LM_HEAD]
    assert head.scheme == "int4"
    w = src.tensor(LM_HEAD)
    rel = float(np.linalg.norm(dequantize(head) - w) / np.linalg.norm(w))
    assert 0 < rel < 0.2  # a real int4 re-quantization of the head, not a copy
    assert b.read_group("layers.0")["layers.0.wq"].scheme == "int8"
