"""ONNX clean-up before CNN import (exporters/cnn/onnx_fold.py): PaddlePaddle-style graphs (dynamic input dims, shape
arithmetic feeding Reshape, hard-swish written out as x*clip(x+3,0,6)/6, Conv/MatMul + constant Add, trailing Softmax)
import and match onnxruntime on the original file, f32 and through the onnxruntime executor."""
from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgespool.exporters.cnn.from_onnx import load_onnx_cnn  # noqa: E402
from edgespool.runtime.cnn.executor import CnnRunner  # noqa: E402
from edgespool.runtime.cnn.ort_runner import OrtCnnRunner  # noqa: E402


def _paddle_style(path):
    rng = np.random.default_rng(0)

    def c(name, arr):
        return numpy_helper.from_array(np.asarray(arr), name)

    inits = [c("w1", rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3),
             c("b1", rng.standard_normal((1, 8, 1, 1)).astype(np.float32)),
             c("three", np.array(3.0, np.float32)), c("zero", np.array(0.0, np.float32)),
             c("six", np.array(6.0, np.float32)),
             c("wdw", rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.3),
             c("fc", rng.standard_normal((8, 5)).astype(np.float32)), c("fcb", rng.standard_normal(5).astype(np.float32)),
             c("st", np.array([0], np.int64)), c("en", np.array([1], np.int64)), c("ax", np.array([0], np.int64)),
             c("m1", np.array([-1], np.int64))]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Add", ["c1", "b1"], ["c1b"]),
        helper.make_node("Add", ["c1b", "three"], ["a3"]),
        helper.make_node("Clip", ["a3", "zero", "six"], ["cl"]),
        helper.make_node("Mul", ["c1b", "cl"], ["mu"]),
        helper.make_node("Div", ["mu", "six"], ["hs"]),
        helper.make_node("Conv", ["hs", "wdw"], ["dw"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["dw"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["gp"]),
        helper.make_node("Shape", ["gp"], ["shp"]),
        helper.make_node("Slice", ["shp", "st", "en", "ax"], ["n"]),
        helper.make_node("Concat", ["n", "m1"], ["tgt"], axis=0),
        helper.make_node("Reshape", ["gp", "tgt"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["mm"]),
        helper.make_node("Add", ["mm", "fcb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    g = helper.make_graph(nodes, "paddle_style", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 5])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_paddle_style_graph_imports_and_matches_ort(tmp_path):
    p = _paddle_style(tmp_path / "p.onnx")
    from edgespool.errors import UnsupportedModelError
    with pytest.raises(UnsupportedModelError, match="Softmax"):  # dropping it changes the output: opt-in
        load_onnx_cnn(p, input_shape=(1, 3, 20, 24))
    g = load_onnx_cnn(p, input_shape=(1, 3, 20, 24), drop_softmax=True)
    ops = [n.op for n in g.nodes]
    assert "act" in ops and ops[-1] == "gemm" and ops.count("conv") == 2
    assert any(n.op == "act" and n.attrs["kind"] == "hardswish" for n in g.nodes)
    x = np.random.default_rng(1).standard_normal((3, 20, 24)).astype(np.float32)
    s = ort.InferenceSession(str(p))
    want = s.run(None, {"x": x[None]})[0][0]
    for out in (CnnRunner(g).run_layers(x).output, OrtCnnRunner(g).run_layers(x)):
        e = np.exp(out - out.max())
        np.testing.assert_allclose(e / e.sum(), want, atol=1e-5)  # the dropped Softmax, applied here
