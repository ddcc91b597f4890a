"""int8 add = onnxruntime's QLinearAdd, bit for bit (runtime/cnn/qadd.py): the float32 fma emulation against libm's
fmaf, and the whole 256 x 256 input domain against onnxruntime's own QLinearAdd for random scales / zero points."""
import ctypes
import ctypes.util

import numpy as np
import pytest

from edgespool.runtime.cnn.qadd import U8, fma32, qlinear_add

ort = pytest.importorskip("onnxruntime")


def _libm_fmaf():
    lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    lib.fmaf.restype = ctypes.c_float
    lib.fmaf.argtypes = [ctypes.c_float] * 3
    return lib.fmaf


def test_fma32_matches_libm_fmaf():
    fmaf = _libm_fmaf()
    rng = np.random.default_rng(0)
    n = 20000
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n))).astype(np.float32)
    y = (rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n))).astype(np.float32)
    z = (rng.standard_normal(n) * np.exp(rng.uniform(-40, 40, n))).astype(np.float32)
    z[: n // 2] = (-(x[: n // 2].astype(np.float64) * y[: n // 2])).astype(np.float32)  # cancellation
    # double-rounding traps: x*y = 2^-24 - 2^-54 on top of an odd-last-bit z (float64 lands on the float32 midpoint)
    tx, ty, tz = np.float32(2**-12 * (1 + 2**-15)), np.float32(2**-12 * (1 - 2**-15)), np.float32(1 + 2**-23)
    x = np.concatenate([x, [tx, -tx, tx, -tx]]).astype(np.float32)
    y = np.concatenate([y, [ty, ty, ty, ty]]).astype(np.float32)
    z = np.concatenate([z, [tz, -tz, -tz, tz]]).astype(np.float32)
    ref = np.array([fmaf(a, b, c) for a, b, c in zip(x.tolist(), y.tolist(), z.tolist())], np.float32)
    got = fma32(x, y, z)
    assert np.array_equal(got, ref)
    naive = (x.astype(np.float64) * y + z).astype(np.float32)
    assert not np.array_equal(naive[-4:], ref[-4:])  # the traps do trap a double rounding


def _ort_qlinear_add(a, b, m1, za, m2, zb, zc):
    from onnx import TensorProto, helper, numpy_helper

    shp = [1, 1, a.shape[0], a.shape[1]]
    consts = [("sa", m1, np.float32), ("za", za, np.uint8), ("sb", m2, np.float32), ("zb", zb, np.uint8),
              ("sc", 1.0, np.float32), ("zc", zc, np.uint8)]
    inits = [numpy_helper.from_array(np.array(v, dt), k) for k, v, dt in consts]
    node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["y"],
                            domain="com.microsoft")
    g = helper.make_graph([node], "qadd", [helper.make_tensor_value_info(k, TensorProto.UINT8, shp) for k in "ab"],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, shp)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                          ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"a": a.reshape(shp), "b": b.reshape(shp)})[0].reshape(a.shape)


def test_qlinear_add_bit_exact_vs_onnxruntime_all_inputs():
    """Every int8 pair (256 x 256) for 40 random multiplier / zero-point sets, plus fused-relu clamps."""
    rng = np.random.default_rng(7)
    a = np.repeat(np.arange(-128, 128, dtype=np.int8), 256).reshape(256, 256)
    b = np.tile(np.arange(-128, 128, dtype=np.int8), 256).reshape(256, 256)
    for _ in range(40):
        m1, m2 = (np.float32(np.exp(rng.uniform(-4, 4))) for _ in range(2))
        za, zb, zo = (int(v) for v in rng.integers(-128, 128, 3))
        ref = _ort_qlinear_add((a.astype(np.int16) + U8).astype(np.uint8), (b.astype(np.int16) + U8).astype(np.uint8),
                               m1, za + U8, m2, zb + U8, zo + U8).astype(np.int16) - U8
        got = qlinear_add(a, b, za, zb, zo, m1, m2)
        assert np.array_equal(got, ref), (m1, m2, za, zb, zo, int((got != ref).sum()))
        assert np.array_equal(qlinear_add(a, b, za, zb, zo, m1, m2, zo, 127), np.maximum(ref, zo))
