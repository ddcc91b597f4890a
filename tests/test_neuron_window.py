"""Neuron windowing with row-column bundles: outputs equal a dense numpy FFN when the active set is exact, only
missing neurons are read, the window drops stale ones, and bad files / too-small windows give clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from edgespool.errors import BudgetError, StorageError
from edgespool.benchmarks.neuron_window import (ExactPredictor, LowRankPredictor, NeuronWindow, read_spec,
                                              write_neuron_file)

H, I, L = 64, 256, 2


def _weights(kind, seed=0):
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(L):
        w = {"up": rng.standard_normal((I, H)).astype(np.float32) / 8, "down": rng.standard_normal((H, I)).astype(
            np.float32) / 16}
        if kind == "reglu":
            w["gate"] = rng.standard_normal((I, H)).astype(np.float32) / 8
        layers.append(w)
    bias = [(-0.6 + 0.1 * rng.standard_normal(I)).astype(np.float32) for _ in range(L)]  # ~10-20% active
    return layers, bias


def _dense(kind, w, b, x):
    pre = (w["gate"] if kind == "reglu" else w["up"]) @ x + b
    h = np.maximum(pre, 0)
    if kind == "reglu":
        h = h * (w["up"] @ x)
    return w["down"] @ h


def _q8_rows(m):  # independent per-vector symmetric int8 round trip (rows of m)
    s = np.abs(m).max(axis=1, keepdims=True) / 127.0
    return np.clip(np.rint(m / s), -127, 127) * s


def _tokens(n, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(H).astype(np.float32)
    out = []
    for _ in range(n):  # slowly drifting inputs: consecutive tokens share most active neurons
        x = (0.95 * x + 0.3 * rng.standard_normal(H)).astype(np.float32)
        out.append(x.copy())
    return out


@pytest.mark.parametrize("kind", ["relu", "reglu"])
@pytest.mark.parametrize("scheme", ["f32", "int8"])
@pytest.mark.parametrize("layout", ["bundled", "split"])
def test_windowed_ffn_equals_the_dense_ffn_with_the_exact_active_set(tmp_path, kind, scheme, layout):
    layers, bias = _weights(kind)
    spec = write_neuron_file(tmp_path / "n.bin", kind, layers, scheme, layout)
    assert read_spec(tmp_path / "n.bin") == spec and spec.bundle_bytes % 512 == 0
    ref_w = layers
    if scheme == "int8":
        ref_w = [{n: (_q8_rows(w[n].T).T if n == "down" else _q8_rows(w[n])) for n in w} for w in layers]
    pre = [w["gate"] if kind == "reglu" else w["up"] for w in ref_w]  # the pinned copy matches the bundles
    pred = ExactPredictor(pre, bias)
    nw = NeuronWindow(tmp_path / "n.bin", capacity=I, window=3, bias=bias)
    try:
        for x in _tokens(12):
            for li in range(L):
                act = pred.active(li, x)
                assert 0 < act.size < I // 2
                np.testing.assert_allclose(nw.ffn(li, x, act), _dense(kind, ref_w[li], bias[li], x),
                                           rtol=1e-4, atol=1e-5)
            nw.end_token()
        st = nw.stats()
        full = 12 * L * spec.layer_bytes
        assert st["bytes_read"] < full / 4  # sparse + reused: far less than reading every neuron every token
        assert st["reuse"] > 0.5
    finally:
        nw.close()


def test_only_missing_neurons_are_read_and_the_window_drops_stale_ones(tmp_path):
    layers, bias = _weights("reglu")
    spec = write_neuron_file(tmp_path / "n.bin", "reglu", layers, "int8")
    nw = NeuronWindow(tmp_path / "n.bin", capacity=64, window=2, bias=bias)
    try:
        x = np.ones(H, np.float32)
        nw.ffn(0, x, [3, 4, 5, 9])
        assert nw.bytes_read == 4 * spec.bundle_bytes and nw.reads == 2  # runs 3..5 and 9
        nw.end_token()
        nw.ffn(0, x, [4, 5, 10])
        assert nw.bytes_read == 5 * spec.bundle_bytes  # only 10 was missing
        nw.end_token()
        nw.end_token()  # window 2: 3 and 9 (last used in token 0) are dropped after token 2, 4/5/10 stay
        assert set(nw.where[0]) == {4, 5, 10}
        nw.end_token()
        assert set(nw.where[0]) == set() and len(nw.free[0]) == 64
        nw.ffn(0, x, [3])
        assert nw.bytes_read == 6 * spec.bundle_bytes
    finally:
        nw.close()


def test_row_column_bundles_need_one_read_per_run_where_the_split_layout_needs_one_per_vector(tmp_path):
    layers, bias = _weights("reglu")
    n = {}
    for layout in ("bundled", "split"):
        write_neuron_file(tmp_path / f"{layout}.bin", "reglu", layers, "int8", layout)
        nw = NeuronWindow(tmp_path / f"{layout}.bin", capacity=I, window=2, bias=bias)
        try:
            y = nw.ffn(1, np.ones(H, np.float32), [7, 8, 9, 40, 100])
            n[layout] = (nw.reads, y)
        finally:
            nw.close()
    assert n["bundled"][0] == 3 and n["split"][0] == 9
    np.testing.assert_array_equal(n["bundled"][1], n["split"][1])


def test_full_rank_predictor_is_exact_and_low_rank_recall_is_measurable(tmp_path):
    layers, bias = _weights("reglu")
    pre = [w["gate"] for w in layers]
    exact, full = ExactPredictor(pre, bias), LowRankPredictor(pre, H, 0.0, bias)
    low = LowRankPredictor(pre, 16, 0.2, bias)
    rec = []
    for x in _tokens(8):
        np.testing.assert_array_equal(full.active(0, x), exact.active(0, x))
        t, p = set(exact.active(0, x)), set(low.active(0, x))
        rec.append(len(t & p) / len(t))
    assert 0.0 < np.mean(rec) <= 1.0
    assert low.nbytes < exact.nbytes
    xs = _tokens(8)
    low.calibrate(xs[:4], exact, 0.95)
    got = [len(set(exact.active(0, x)) & set(low.active(0, x))) / len(exact.active(0, x)) for x in xs[:4]]
    assert np.mean(got) >= 0.9


def test_errors(tmp_path):
    layers, bias = _weights("relu")
    write_neuron_file(tmp_path / "n.bin", "relu", layers, "int8")
    nw = NeuronWindow(tmp_path / "n.bin", capacity=4, window=2)
    try:
        with pytest.raises(BudgetError, match="exceed its capacity of 4"):
            nw.ffn(0, np.ones(H, np.float32), np.arange(5))
    finally:
        nw.close()
    (tmp_path / "bad.bin").write_bytes(b"x" * 5000)
    with pytest.raises(StorageError, match="bad magic"):
        NeuronWindow(tmp_path / "bad.bin", capacity=4)
    data = (tmp_path / "n.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(StorageError, match="truncated"):
        NeuronWindow(tmp_path / "short.bin", capacity=4)
