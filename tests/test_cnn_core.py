"""CNN import + executors + patch planner against onnxruntime (reference) on a tiny all-ops net and real models."""
from __future__ import annotations

import json

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgespool.errors import ModelFormatError, OptionError, UnsupportedModelError  # noqa: E402
from edgespool.exporters.cnn.from_onnx import load_onnx_cnn  # noqa: E402
from edgespool.runtime.cnn.executor import CnnRunner  # noqa: E402
from edgespool.runtime.cnn.calibrate import calibrate_and_quantize  # noqa: E402
from edgespool.schedulers.patch_plan import (  # noqa: E402
    cut_points, input_range, layer_memory, make_plan, patch_regions, plan_patches,
)


def ort_run(path, x):
    s = ort.InferenceSession(str(path))
    return s.run(None, {s.get_inputs()[0].name: x[None]})[0][0]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch = pytest.importorskip("torch")
    import cnn_torch_ref as ref

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    return ref.export_onnx(ref.TinyAllOps(), p, (1, 3, 40, 36))


def test_tiny_all_ops_matches_ort(tiny_onnx):
    g = load_onnx_cnn(tiny_onnx)
    ops = {n.op for n in g.nodes}
    assert {"conv", "concat", "maxpool", "avgpool", "gap", "mul", "add", "act", "reshape", "gemm"} <= ops
    assert any(n.op == "conv" and n.attrs["group"] > 1 for n in g.nodes)
    assert any(n.op == "conv" and n.attrs["act"] is not None for n in g.nodes)  # Relu/Clip fused
    x = np.random.default_rng(1).standard_normal((3, 40, 36)).astype(np.float32)
    ref = ort_run(tiny_onnx, x)
    out = CnnRunner(g).run_layers(x).output
    assert np.abs(out - ref).max() <= 1e-4


@pytest.mark.parametrize("grid", [(2, 2), (3, 3), (4, 4)])
def test_tiny_patched_equals_ort(tiny_onnx, grid):
    g = load_onnx_cnn(tiny_onnx)
    x = np.random.default_rng(2).standard_normal((3, 40, 36)).astype(np.float32)
    ref = ort_run(tiny_onnx, x)
    r = CnnRunner(g)
    for split in cut_points(g):
        h, w = g.shapes[g.nodes[split].output][1:]
        if grid[0] > h or grid[1] > w:
            continue
        for resident in (True, False):
            plan = make_plan(g, split, grid, itemsize=4, input_resident=resident)
            res = r.run_patched(x, plan)
            assert np.abs(res.output - ref).max() <= 1e-4, (split, grid)
            assert res.peak_bytes == plan.peak_bytes  # executor's held arrays == planner arithmetic
            assert res.macs == plan.chosen.total_macs + plan.chosen.extra_macs


def test_int8_patched_bit_identical_and_close_to_ort(tiny_onnx):
    g = load_onnx_cnn(tiny_onnx)
    rng = np.random.default_rng(3)
    cal = [rng.standard_normal((3, 40, 36)).astype(np.float32) for _ in range(4)]
    q = calibrate_and_quantize(g, cal)
    x = rng.standard_normal((3, 40, 36)).astype(np.float32)
    r = CnnRunner(g, q)
    full = r.run_layers(x)
    ref = ort_run(tiny_onnx, x)
    assert np.abs(full.output - ref).max() < 0.1 * np.abs(ref).max()
    for split in cut_points(g):
        plan = make_plan(g, split, (2, 2), itemsize=1)
        res = r.run_patched(x, plan)
        np.testing.assert_array_equal(res.output, full.output)
        assert res.peak_bytes == plan.peak_bytes


def test_receptive_field_arithmetic():
    # 3x3 stride 2 pad 1: output rows [2, 4) read input rows [3, 8)
    assert input_range(2, 4, 3, 2, 1, 1, 100) == (3, 8)
    # dilation 2 kernel 3 pad 2 stride 1: rows [0, 1) read [-2, 3) -> clipped [0, 3)
    assert input_range(0, 1, 3, 1, 2, 2, 10) == (0, 3)
    # clipped at the bottom edge
    assert input_range(9, 10, 5, 1, 2, 1, 10) == (7, 10)


def _bn_model(path, dynamic=False, extra=None):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    vals = [rng.uniform(0.5, 1.5, 4), rng.uniform(-0.5, 0.5, 4), rng.uniform(-0.5, 0.5, 4), rng.uniform(0.5, 2, 4)]
    bn = [numpy_helper.from_array(v.astype(np.float32), n) for v, n in zip(vals, ["s", "b", "m", "v"])]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="bn0", epsilon=1e-3),
             helper.make_node("BatchNormalization", ["bn", "s", "b", "m", "v"], ["y"], name="bn1")]
    if extra:
        nodes.append(helper.make_node(extra, ["y"], ["z"], name="weird0"))
    out = "z" if extra else "y"
    dims = ["N", 3, "H", "W"] if dynamic else [1, 3, 8, 8]
    g = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], [w, *bn])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return path


def test_batchnorm_folded_and_standalone(tmp_path):
    p = _bn_model(tmp_path / "bn.onnx")
    g = load_onnx_cnn(p)
    assert [n.op for n in g.nodes] == ["conv", "conv"]  # first BN folded, second is a 1x1 depthwise conv
    x = np.random.default_rng(5).standard_normal((3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(CnnRunner(g).run_layers(x).output, ort_run(p, x), atol=1e-4)


def test_unsupported_op_named(tmp_path):
    p = _bn_model(tmp_path / "bad.onnx", extra="Softsign")
    with pytest.raises(UnsupportedModelError, match="Softsign.*weird0"):
        load_onnx_cnn(p)


def test_dynamic_shape_needs_input_shape(tmp_path):
    p = _bn_model(tmp_path / "dyn.onnx", dynamic=True)
    with pytest.raises(OptionError, match="dynamic shape.*--input-shape"):
        load_onnx_cnn(p)
    g = load_onnx_cnn(p, input_shape=(1, 3, 12, 10))
    x = np.random.default_rng(6).standard_normal((3, 12, 10)).astype(np.float32)
    np.testing.assert_allclose(CnnRunner(g).run_layers(x).output, ort_run(p, x), atol=1e-4)
    with pytest.raises(OptionError, match="contradicts"):
        load_onnx_cnn(p, input_shape=(1, 4, 12, 10))


def test_not_onnx(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_bytes(b"garbage")
    with pytest.raises(ModelFormatError, match="x.onnx"):
        load_onnx_cnn(p)


def test_plan_budget_and_json(tiny_onnx):
    g = load_onnx_cnn(tiny_onnx)
    lbl = max(b for _, b in layer_memory(g))
    best = plan_patches(g, max_overhead=10.0)
    assert best.peak_bytes <= lbl
    d = json.loads(best.to_json())
    assert d["peak_bytes"] == best.peak_bytes and d["grid"] == list(best.grid)
    fit = plan_patches(g, activation_budget=best.peak_bytes, max_overhead=10.0)
    assert fit.peak_bytes <= best.peak_bytes and fit.chosen.extra_macs <= best.chosen.extra_macs
    from edgespool.errors import BudgetError
    with pytest.raises(BudgetError, match="too small"):
        plan_patches(g, activation_budget=best.peak_bytes - 1, max_overhead=10.0)
    regs = patch_regions(g, cut_points(g)[-1], (2, 2))
    t = g.nodes[cut_points(g)[-1]].output
    covered = np.zeros(g.shapes[t][1:], int)
    for r in regs:
        y0, y1, x0, x1 = r[t]
        covered[y0:y1, x0:x1] += 1
    assert (covered == 1).all()  # the patches tile the split tensor exactly once
