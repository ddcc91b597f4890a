"""Quantisation formats against independent references: gguf-py's Q4_0/Q8_0 (llama.cpp's reference
quantisers) and plain numpy arithmetic."""
import numpy as np
import pytest

from edgespool.kernels.quant import QTensor, dequantize, linear, quantize, unpack_int4

gguf = pytest.importorskip("gguf")


def _w(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_int4_g32_is_bit_identical_to_llama_cpp_q4_0():
    w = _w((16, 128))
    q = quantize(w, "int4", 32)
    ref = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0).reshape(16, 4, 18)
    ref_d = ref[..., :2].copy().view(np.float16)[..., 0]
    ref_qs = ref[..., 2:].reshape(16, 64)
    assert np.array_equal(q.scale, ref_d)
    assert np.array_equal(q.data, ref_qs)
    deq = gguf.quants.dequantize(gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0),
                                 gguf.GGMLQuantizationType.Q4_0)
    np.testing.assert_array_equal(dequantize(q), deq)


@pytest.mark.parametrize("g", [16, 32, 64, 128])
def test_int4_group_sizes_roundtrip_error_bounded(g):
    w = _w((8, 256), 1)
    q = quantize(w, "int4", g)
    assert q.data.shape == (8, 128) and q.scale.shape == (8, 256 // g) and q.scale.dtype == np.float16
    err = np.abs(dequantize(q) - w).reshape(8, -1, g)
    # Q4_0 codes span -8..7 with the extreme value at -8: values are within half a step of the truth, except
    # those near +|max| that clip at code 7 (within one step); plus f16 rounding of the scale
    step = np.abs(q.scale.astype(np.float32))[..., None]
    slack = 1e-3 * np.abs(w).reshape(8, -1, g).max(axis=2, keepdims=True) + 1e-6
    assert (err <= step + slack).all()
    assert np.median(err / step) < 0.3


def test_int4_nibble_order_is_q4_0_within_group():
    # element j in the low nibble, element j + g/2 in the high nibble of byte j
    w = np.zeros((1, 32), np.float32)
    w[0, 0], w[0, 16], w[0, 1] = -8.0, 7.0, 3.0  # scale = -8/-8 = 1
    q = quantize(w, "int4", 32)
    assert float(q.scale[0, 0]) == 1.0
    assert q.data[0, 0] == (0 | (15 << 4))
    assert q.data[0, 1] == (11 | (8 << 4))
    codes = unpack_int4(q.data, 32)
    assert codes[0, 0] == -8 and codes[0, 16] == 7 and codes[0, 1] == 3


def test_int8_per_channel_matches_numpy_formula():
    w = _w((32, 48), 2)
    q = quantize(w, "int8")
    scale = np.abs(w).max(axis=1) / 127
    np.testing.assert_allclose(q.scale, scale, rtol=1e-6)
    np.testing.assert_array_equal(q.data, np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8))
    assert np.abs(dequantize(q) - w).max() <= scale.max() / 2 + 1e-6


def test_linear_matches_dense_numpy_for_every_scheme():
    w, x = _w((24, 64), 3), _w((5, 64), 4)
    for scheme in ("f32", "f16", "int8", "int4"):
        q = quantize(w, scheme, 32)
        np.testing.assert_allclose(linear(x, q), x @ dequantize(q).T, rtol=1e-5, atol=1e-5)


def test_rows_gather_equals_full_dequantize():
    w = _w((40, 64), 5)
    for scheme in ("f16", "int8", "int4"):
        q = quantize(w, scheme, 32)
        idx = np.array([0, 7, 39, 7])
        np.testing.assert_array_equal(q.rows(idx), dequantize(q)[idx])


def test_bad_int4_shapes_are_refused():
    with pytest.raises(ValueError, match="group size"):
        quantize(_w((4, 48)), "int4", 32)
    with pytest.raises(ValueError, match="unknown quantisation scheme"):
        quantize(_w((4, 48)), "int3")
    assert isinstance(quantize(_w((4,)), "f16"), QTensor)
