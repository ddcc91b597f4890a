"""int8 hard-swish / hard-sigmoid lowered to onnxruntime as DequantizeLinear -> HardSwish / HardSigmoid ->
QuantizeLinear (runtime/cnn/act_lower.py): the chain equals the numpy executor's table on all 256 codes for random
scales, the check rejects a table that differs, and a real net (PaddleOCR-style hard-swish blocks) stays
bit-identical to the numpy int8 executor."""
import numpy as np
import pytest

from edgespool.runtime.bundle.cnn_graph import CnnGraph, Node
from edgespool.runtime.cnn.act_lower import exact_float_acts
from edgespool.runtime.cnn.quant import QuantCnn, act_params, quantize_cnn

pytest.importorskip("onnxruntime")


def _act_graph(n_nodes: int) -> tuple[CnnGraph, list[Node]]:
    nodes, prev = [], "x"
    for k in range(n_nodes):
        kind = "hardswish" if k % 2 == 0 else "hardsigmoid"
        attrs = {"kind": kind} if kind == "hardswish" else {"kind": kind, "alpha": 0.2 if k % 4 == 1 else 1 / 6,
                                                            "beta": 0.5}
        nodes.append(Node(f"a{k}", "act", [prev], f"t{k}", attrs))
        prev = f"t{k}"
    return CnnGraph("acts", "x", (1, 4, 4), prev, nodes), nodes


def test_chain_equals_table_for_random_scales():
    rng = np.random.default_rng(3)
    g, nodes = _act_graph(40)
    ranges = {"x": (-6.0, 7.0)}
    for n in nodes:
        lo = float(rng.uniform(-8, 0))
        ranges[n.output] = (lo, float(rng.uniform(0.05, 9)))
    q = quantize_cnn(g, ranges)
    # every node's input range is its producer's (random) range: 40 different (s_in, z_in, s_out, z_out) sets
    exact = exact_float_acts(g, q)
    assert exact == frozenset(n.name for n in nodes), sorted(set(n.name for n in nodes) - exact)


def test_check_rejects_a_wrong_table():
    g, nodes = _act_graph(2)
    q = quantize_cnn(g, {"x": (-6.0, 6.0), "t0": (-0.5, 6.0), "t1": (0.0, 1.0)})
    bad = QuantCnn(q.tensors, {k: dict(v) for k, v in q.nodes.items()})
    lut = bad.nodes["a0"]["lut"].copy()
    lut[200] = lut[200] + 1 if lut[200] < 127 else lut[200] - 1
    bad.nodes["a0"]["lut"] = lut
    assert exact_float_acts(g, bad) == frozenset({"a1"})
    assert act_params(-0.5, 6.0) == q.tensors["t0"]


def test_hardswish_net_bit_identical_and_uses_chain():
    from edgespool.runtime.cnn.executor import CnnRunner
    from edgespool.runtime.cnn.calibrate import calibrate_and_quantize
    from edgespool.runtime.cnn.onnx_lower import full_box, lower_segment
    from edgespool.runtime.cnn.ort_runner import OrtCnnRunner

    rng = np.random.default_rng(0)
    nodes, prev, c = [], "x", 3
    for k, o in enumerate((8, 16, 16)):
        w = rng.standard_normal((o, c, 3, 3)).astype(np.float32) * 0.3
        nodes.append(Node(f"c{k}", "conv", [prev], f"c{k}", {"kernel": (3, 3), "stride": (1, 1), "pads": (1, 1, 1, 1),
                                                              "dilation": (1, 1), "group": 1, "act": None},
                          {"w": w, "b": rng.standard_normal(o).astype(np.float32) * 0.1}))
        nodes.append(Node(f"h{k}", "act", [f"c{k}"], f"h{k}", {"kind": "hardswish"}))
        prev, c = f"h{k}", o
    g = CnnGraph("hsnet", "x", (3, 12, 12), prev, nodes)
    q = calibrate_and_quantize(g, [rng.standard_normal((3, 12, 12)).astype(np.float32) for _ in range(3)])
    r = OrtCnnRunner(g, q, None, 1)
    assert r.float_acts == frozenset({"h0", "h1", "h2"})
    m = lower_segment(g, 0, len(g.nodes), {"x": full_box(g, "x")}, {}, [g.output], q, g.name)
    ops = {n.op_type for n in m.graph.node}
    assert "Gather" not in ops and "HardSwish" in ops and "QLinearConv" in ops
    for _ in range(3):
        x = rng.standard_normal((3, 12, 12)).astype(np.float32) * 2
        assert np.array_equal(r.run_layers(x), CnnRunner(g, q).run_layers(x).output)
