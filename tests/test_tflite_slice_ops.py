"""TFLite SLICE / STRIDED_SLICE import, against the LiteRT interpreter: small models built with LiteRT's own
generated schema (the ``Net`` builder of test_cnn_tflite_ops). The slices act on output heads (a conv map, its
NHWC reshape, a channel slice): begin / end masks, negative indices, strides > 1, shrink_axis, SLICE's size -1;
the layer-by-layer and patch-based runs must both give LiteRT's values. Errors: ellipsis masks, a stride of 0."""
from __future__ import annotations

import numpy as np
import pytest

litert = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert (the TFLite reference) missing")
from test_cnn_tflite_ops import BO, OPT, Net, S, reference  # noqa: E402

from edgespool.errors import UnsupportedModelError  # noqa: E402
from edgespool.exporters.cnn.from_tflite import load_tflite  # noqa: E402
from edgespool.runtime.cnn.executor import CnnRunner  # noqa: E402
from edgespool.schedulers.patch_plan import plan_patches  # noqa: E402


def strided(n: Net, x: int, begin, end, steps, out_shape, bm=0, em=0, shrink=0, ellipsis=0) -> int:
    o = S.StridedSliceOptionsT()
    o.beginMask, o.endMask, o.shrinkAxisMask, o.ellipsisMask = bm, em, shrink, ellipsis
    c = [n.const(np.array(v, np.int32)) for v in (begin, end, steps)]
    return n.op(BO.STRIDED_SLICE, [x, *c], out_shape, OPT.StridedSliceOptions, o)


def slice_net(seed: int = 0) -> bytes:
    n = Net(seed)
    x = n.tensor([1, 48, 48, 3], name="image")
    t0, _ = n.conv(x, (48, 48), 3, 16, 3, 1, True, act=S.ActivationFunctionType.RELU6)  # 48x48x16: worth patching
    t1, _ = n.conv(t0, (48, 48), 16, 8, 3, 2, True, act=S.ActivationFunctionType.RELU6)  # 24x24x8
    t2, _ = n.conv(t1, (24, 24), 8, 12, 3, 2, True)  # 12x12x12
    # head 1: channels 2..9 step 3 of rows 1..-1, every 2nd column (end mask on W)
    a = strided(n, t2, [0, 1, 0, 2], [1, -1, 0, 10], [1, 1, 2, 3], [1, 10, 6, 3], em=0b0100)
    # head 2: NHWC reshape to [1, 144, 12], then batch 0 (shrink) of every 4th anchor backwards, channels 0..4
    ro = S.ReshapeOptionsT()
    ro.newShape = [1, 144, 12]
    r = n.op(BO.RESHAPE, [t2, n.const(np.array([1, 144, 12], np.int32))], [1, 144, 12], OPT.ReshapeOptions, ro)
    b = strided(n, r, [0, 140, 0], [1, 0, 5], [1, -4, 1], [35, 5], shrink=0b001, bm=0b100)
    # head 3: SLICE of the 24x24 map, size -1 on H
    c = n.op(BO.SLICE, [t1, n.const(np.array([0, 3, 1, 4], np.int32)), n.const(np.array([1, -1, 5, 3], np.int32))],
             [1, 21, 5, 3])
    for t, name in ((a, "a"), (b, "b"), (c, "c")):
        n.tensors[t].name = name
    return n.build([x], [a, b, c])


def test_slices_match_litert(tmp_path):
    model = slice_net()
    p = tmp_path / "slices.tflite"
    p.write_bytes(model)
    net = load_tflite(p)
    x = np.random.default_rng(3).uniform(-1, 1, (48, 48, 3)).astype(np.float32)
    ref = reference(model, x)
    r = CnnRunner(net.graph)
    y = r.run_layers(x.transpose(2, 0, 1)).output
    got = net.split(y)
    assert set(got) == {"a", "b", "c"}
    for k in ref:
        assert got[k].shape == ref[k].shape, k
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
    plan = plan_patches(net.graph, itemsize=4, max_overhead=1.0)
    assert plan.is_patched
    yp = r.run_patched(x.transpose(2, 0, 1), plan).output
    for k, v in net.split(yp).items():
        np.testing.assert_allclose(v, ref[k], rtol=1e-5, atol=1e-5, err_msg=f"patched {k}")


@pytest.mark.parametrize("bad", ["ellipsis", "zero_stride"])
def test_bad_slices_are_one_line_errors(tmp_path, bad):
    n = Net()
    x = n.tensor([1, 8, 8, 3], name="image")
    t, _ = n.conv(x, (8, 8), 3, 4, 1, 1, True)
    if bad == "ellipsis":
        y = strided(n, t, [0, 0, 0, 0], [1, 4, 4, 4], [1, 1, 1, 1], [1, 4, 4, 4], ellipsis=1)
    else:
        y = strided(n, t, [0, 0, 0, 0], [1, 4, 4, 4], [1, 0, 1, 1], [1, 4, 4, 4])
    n.tensors[y].name = "cut"
    p = tmp_path / f"{bad}.tflite"
    p.write_bytes(n.build([x], [y]))
    with pytest.raises(UnsupportedModelError) as e:
        load_tflite(p)
    msg = str(e.value)
    assert str(p) in msg and "STRIDED_SLICE" in msg and "\n" not in msg
    assert ("ellipsis" in msg) if bad == "ellipsis" else ("stride is 0" in msg)


def softmax_net(beta: float) -> bytes:
    n = Net(5)
    x = n.tensor([1, 48, 48, 3], name="image")
    t0, _ = n.conv(x, (48, 48), 3, 16, 3, 1, True, act=S.ActivationFunctionType.RELU6)
    t1, _ = n.conv(t0, (48, 48), 16, 6, 3, 2, True)  # 24x24x6
    so = S.SoftmaxOptionsT()
    so.beta = beta
    a = n.op(BO.SOFTMAX, [t1], [1, 24, 24, 6], OPT.SoftmaxOptions, so)  # per-pixel class scores
    mo = S.ReducerOptionsT()
    mo.keepDims = True
    g = n.op(BO.MEAN, [t1, n.const(np.array([1, 2], np.int32))], [1, 1, 1, 6], OPT.ReducerOptions, mo)
    ro = S.ReshapeOptionsT()
    ro.newShape = [1, 6]
    r = n.op(BO.RESHAPE, [g, n.const(np.array([1, 6], np.int32))], [1, 6], OPT.ReshapeOptions, ro)
    fo = S.FullyConnectedOptionsT()
    fc = n.op(BO.FULLY_CONNECTED, [r, n.const(n.rng.standard_normal((4, 6)).astype(np.float32)),
                                   n.const(n.rng.standard_normal(4).astype(np.float32))], [1, 4],
              OPT.FullyConnectedOptions, fo)
    b = n.op(BO.SOFTMAX, [fc], [1, 4], OPT.SoftmaxOptions, so)  # a [1, N] vector's softmax
    n.tensors[a].name, n.tensors[b].name = "pixels", "probs"
    return n.build([x], [a, b])


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_softmax_matches_litert_f32_patched_and_ort(tmp_path, beta):
    from edgespool.runtime.cnn.calibrate import calibrate_and_quantize
    from edgespool.runtime.cnn.ort_runner import OrtCnnRunner

    model = softmax_net(beta)
    p = tmp_path / "softmax.tflite"
    p.write_bytes(model)
    net = load_tflite(p)
    x = np.random.default_rng(4).uniform(-1, 1, (48, 48, 3)).astype(np.float32)
    ref = reference(model, x)
    xc = x.transpose(2, 0, 1).copy()
    r = CnnRunner(net.graph)
    y = r.run_layers(xc).output
    plan = plan_patches(net.graph, itemsize=4, max_overhead=1.0)
    assert plan.is_patched
    runs = {"layers": y, "patched": r.run_patched(xc, plan).output,
            "onnxruntime": OrtCnnRunner(net.graph, None, plan, 1).run_patched(xc)}
    for how, out in runs.items():
        got = net.split(out)
        for k in ref:
            assert got[k].shape == ref[k].shape, (how, k)
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=f"{how} {k}")
    with pytest.raises(UnsupportedModelError, match="SOFTMAX has no int8 path"):
        calibrate_and_quantize(net.graph, [xc])


def test_channel_crop_inside_the_body_matches_litert(tmp_path):
    """mediapipe's "channel_padding" crop (hand_recrop.tflite): a STRIDED_SLICE of a map's first channels feeding
    a residual ADD, i.e. in the body, not at an output: imported as a 1x1 conv with a 0/1 weight."""
    n = Net(9)
    x = n.tensor([1, 48, 48, 3], name="image")
    t0, _ = n.conv(x, (48, 48), 3, 16, 3, 2, True, act=S.ActivationFunctionType.RELU6)  # 24x24x16
    crop = strided(n, t0, [0, 0, 0, 0], [1, 24, 24, 8], [1, 1, 1, 1], [1, 24, 24, 8], bm=0b0111, em=0b0110)
    t1, _ = n.conv(t0, (24, 24), 16, 8, 1, 1, True)
    t2 = n.op(BO.ADD, [crop, t1], [1, 24, 24, 8], OPT.AddOptions, S.AddOptionsT())
    every2 = strided(n, t2, [0, 0, 0, 1], [1, 24, 24, 8], [1, 1, 1, 2], [1, 24, 24, 4])  # odd channels
    t3, _ = n.conv(every2, (24, 24), 4, 6, 3, 2, True)
    n.tensors[t3].name = "out"
    model = n.build([x], [t3])
    p = tmp_path / "crop.tflite"
    p.write_bytes(model)
    net = load_tflite(p)
    sels = [nd for nd in net.graph.nodes if nd.op == "conv" and nd.weights["w"].shape[2:] == (1, 1)
            and set(np.unique(nd.weights["w"])) <= {0.0, 1.0}]
    assert len(sels) == 2
    xi = np.random.default_rng(2).uniform(-1, 1, (48, 48, 3)).astype(np.float32)
    ref = reference(model, xi)["out"]
    r = CnnRunner(net.graph)
    y = r.run_layers(xi.transpose(2, 0, 1)).output
    np.testing.assert_allclose(net.split(y)["out"], ref, rtol=1e-5, atol=1e-5)
    plan = plan_patches(net.graph, itemsize=4, max_overhead=1.0)
    if plan.is_patched:
        np.testing.assert_allclose(r.run_patched(xi.transpose(2, 0, 1), plan).output, y, rtol=1e-6, atol=1e-6)
