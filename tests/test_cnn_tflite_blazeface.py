"""The real BlazeFace (mediapipe's face_detection_short_range.tflite, 128x128, f16 weights; fetched from the pinned
mediapipe 0.10.21 wheel) imported from TFLite, against the LiteRT interpreter on real photos (scikit-image's
chelsea: a cat, no face; astronaut: a face): f32 layer-by-layer and patch-based, the onnxruntime path, int8,
and a bundle exported by the CLI. Also mediapipe's face landmark model (192x192, PRELU) in f32."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from serving_common import fetched

litert = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert (the TFLite reference) missing")
pytest.importorskip("skimage.data")

from edgespool.exporters.cnn.export import sample_photo  # noqa: E402
from edgespool.exporters.cnn.from_tflite import bundle_outputs, load_tflite  # noqa: E402
from edgespool.runtime.cnn.executor import CnnRunner  # noqa: E402
from edgespool.schedulers.patch_plan import plan_patches  # noqa: E402


def prep(img: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> [128, 128, 3] float32 in [-1, 1] (mediapipe's preprocessing: resize, x / 127.5 - 1)."""
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((128, 128), Image.BILINEAR), np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def face_model():
    return fetched("blazeface-short-range")


@pytest.fixture(scope="module")
def photos():
    return {"chelsea": prep(sample_photo("chelsea")), "astronaut": prep(sample_photo("astronaut"))}


def reference(path, x: np.ndarray) -> dict[str, np.ndarray]:
    it = litert.Interpreter(model_path=str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x[None])
    it.invoke()
    return {o["name"]: it.get_tensor(o["index"]) for o in it.get_output_details()}


def test_f32_matches_litert(face_model, photos):
    net = load_tflite(face_model)
    ops = {n.op for n in net.graph.nodes}
    assert {"conv", "add", "maxpool", "reshape", "concat"} <= ops
    r = CnnRunner(net.graph)
    for name, x in photos.items():
        ref = reference(face_model, x)
        got = net.split(r.run_layers(x.transpose(2, 0, 1)).output)
        assert set(got) == {"regressors", "classificators"}
        for k in ref:
            assert got[k].shape == ref[k].shape  # (1, 896, 16), (1, 896, 1)
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=2e-4, err_msg=f"{name} {k}")
    s = reference(face_model, photos["astronaut"])["classificators"].ravel()
    assert s.max() > 1.0 and reference(face_model, photos["chelsea"])["classificators"].max() < 0  # sanity


def test_patched_int8_and_onnxruntime(face_model, photos):
    from edgespool.exporters.cnn.export import sample_photos
    from edgespool.runtime.cnn.calibrate import calibrate_and_quantize
    from edgespool.runtime.cnn.ort_runner import OrtCnnRunner

    net = load_tflite(face_model)
    g = net.graph
    x = photos["astronaut"].transpose(2, 0, 1).copy()
    f = CnnRunner(g)
    lay = f.run_layers(x)
    plan4 = plan_patches(g, itemsize=4)
    assert plan4.is_patched
    pat = f.run_patched(x, plan4)
    # same convolutions on tiles: only the f32 summation order differs (BLAS blocks by the tile's size), so the
    # bound scales with the output's range (regression logits reach ~155; 6e-5 apart on an AVX2-only Zen 3)
    np.testing.assert_allclose(pat.output, lay.output, rtol=1e-6, atol=1e-6 * float(np.abs(lay.output).max()))
    assert pat.peak_bytes == plan4.peak_bytes and lay.peak_bytes == plan4.layer_peak_bytes
    np.testing.assert_allclose(OrtCnnRunner(g, None, plan4, 1).run_patched(x), lay.output, rtol=1e-5, atol=5e-4)
    q = calibrate_and_quantize(g, [prep(p).transpose(2, 0, 1).copy() for p in sample_photos()])
    plan1 = plan_patches(g, itemsize=1)
    r8 = CnnRunner(g, q)
    a = r8.run_layers(x)
    b = r8.run_patched(x, plan1)
    assert np.array_equal(a.output, b.output) and b.peak_bytes == plan1.peak_bytes
    assert np.array_equal(OrtCnnRunner(g, q, plan1, 1).run_patched(x), a.output)
    # in-place depthwise + fused residual adds, input streamed: same int8 output, the planner's bytes held
    plan_ip = plan_patches(g, input_resident=False, inplace_depthwise=True)
    ip_l = r8.run_layers(x, inplace_depthwise=True)
    ip_p = r8.run_patched(x, plan_ip)
    assert np.array_equal(ip_l.output, a.output) and np.array_equal(ip_p.output, a.output)
    assert ip_l.peak_bytes == plan_ip.layer_peak_bytes and ip_p.peak_bytes == plan_ip.peak_bytes
    assert ip_l.peak_bytes < a.peak_bytes and ip_p.peak_bytes < b.peak_bytes
    # int8 (our calibration; one scale for the joined heads): the face anchor it picks is one the float model
    # also scores as a face
    s8 = net.split(a.output)["classificators"].ravel()
    sf = net.split(lay.output)["classificators"].ravel()
    assert s8.max() > 1.0 and sf[int(np.argmax(s8))] > 1.0
    assert np.corrcoef(net.split(a.output)["regressors"].ravel(), net.split(lay.output)["regressors"].ravel())[0, 1] > 0.98


def test_cli_export_bundle_runs(face_model, photos, tmp_path):
    from edgespool.runtime.cnn.bundle import CnnBundle

    out = tmp_path / "face-rpi5"
    r = subprocess.run([sys.executable, "-m", "edgespool", "export", str(face_model), "--target", "rpi5", "-o",
                        str(out), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["cnn"]["preprocess"]["mean"] == [0.5] * 3 and len(man["cnn"]["tflite_outputs"]) == 2
    b = CnnBundle(out)
    assert b.plan.is_patched
    x = photos["astronaut"]
    got = bundle_outputs(b, b.run(x.transpose(2, 0, 1).copy(), patched=True).output)
    ref = reference(face_model, x)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=2e-4, err_msg=k)
    # `edgespool run --image` on it: the bundle's own [-1, 1] / no-crop preprocessing and its two output tensors
    # (not ImageNet normalisation and class ids)
    from PIL import Image

    Image.fromarray(sample_photo("astronaut")).save(tmp_path / "astronaut.png")
    r = subprocess.run([sys.executable, "-m", "edgespool", "run", str(out), "--image", str(tmp_path / "astronaut.png"),
                        "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    outs = json.loads(r.stdout)["outputs"]
    for k in ref:
        np.testing.assert_allclose(np.asarray(outs[k]["values"]).reshape(ref[k].shape), ref[k], rtol=1e-4,
                                   atol=2e-3, err_msg=k)
    r = subprocess.run([sys.executable, "-m", "edgespool", "run", str(out), "--image", str(tmp_path / "astronaut.png")],
                       capture_output=True, text=True)
    assert "output 'classificators': shape [1, 896, 1]" in r.stdout and "class" not in r.stdout.split("\n")[0]
    # piped into `head` (the reader leaves after 100 bytes of ~280 KB): a quiet exit, no "internal error" line
    p = subprocess.Popen([sys.executable, "-m", "edgespool", "run", str(out), "--image",
                          str(tmp_path / "astronaut.png"), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(p.stdout.read(100)) == 100
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == "", err


def test_face_landmark_matches_litert():
    """mediapipe's face mesh model (468 landmarks, 23 PRELUs) on astronaut's face crop, input in [0, 1]."""
    from PIL import Image

    path = fetched("face-landmark")
    net = load_tflite(path)
    crop = sample_photo("astronaut")[0:240, 140:380]
    x = np.asarray(Image.fromarray(crop).resize((192, 192), Image.BILINEAR), np.float32) / 255.0
    ref = reference(path, x)
    r = CnnRunner(net.graph)
    lay = r.run_layers(x.transpose(2, 0, 1).copy())
    got = net.split(lay.output)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=5e-4, err_msg=k)
    plan = plan_patches(net.graph, itemsize=4)
    assert plan.is_patched
    np.testing.assert_allclose(r.run_patched(x.transpose(2, 0, 1).copy(), plan).output, lay.output, rtol=1e-6,
                               atol=1e-5)


@pytest.mark.skipif(__import__("shutil").which("gcc") is None, reason="host gcc not installed")
def test_mcu_c_project_bit_exact(face_model, photos, tmp_path):
    """The int8 C project of the imported BlazeFace (patched plan, fits mcu-m7's 320 KiB), built with host gcc,
    gives the numpy int8 executor's output bit for bit."""
    from edgespool.exporters.cnn.export import sample_photos
    from edgespool.exporters.cnn.mcu_c import compile_host, export_c_project, run_host
    from edgespool.runtime.cnn.calibrate import calibrate_and_quantize
    from edgespool.targets import get_target

    g = load_tflite(face_model).graph
    q = calibrate_and_quantize(g, [prep(p).transpose(2, 0, 1).copy() for p in sample_photos()[:3]])
    x = photos["astronaut"].transpose(2, 0, 1).copy()
    want = CnnRunner(g, q).run_layers(x).output
    plan = plan_patches(g, itemsize=1)
    d = (tmp_path / "mcu").resolve()
    proj = export_c_project(g, q, plan, get_target("mcu-m7"), d, compile_arm=False)
    assert plan.is_patched and plan.peak_bytes <= proj.arena_bytes <= get_target("mcu-m7").ram
    y = run_host(compile_host(d), q.quantize_input(x), d)
    s, z = q.tensors[g.output]
    np.testing.assert_array_equal(((y.astype(np.float32) - z) * np.float32(s)).reshape(want.shape), want)
