"""The reference linear kernel dequantises in bounded row blocks: same values as quant.dequantize, same products as
a whole-matrix numpy matmul (within float rounding), and a temporary that does not grow with the matrix."""
from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

from edgespool.kernels import linear as L
from edgespool.kernels.quant import dequantize, quantize
from edgespool.kernels.table import REFERENCE

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("scheme", ["f32", "f16", "int8", "int4"])
@pytest.mark.parametrize("rows", [(0, 1), (3, 50), (0, 96), (95, 96)])
def test_row_block_dequantisation_equals_whole_matrix_dequantisation(scheme, rows):
    w = quantize(RNG.standard_normal((96, 128)).astype(np.float32), scheme)
    buf = np.empty(96 * 128, dtype=np.float32)
    got = L.dequantize_rows_into(w, *rows, buf)
    np.testing.assert_array_equal(got, dequantize(w)[rows[0]: rows[1]])


@pytest.mark.parametrize("scheme", ["f16", "int8", "int4"])
@pytest.mark.parametrize("lead", [(1,), (5,), (2, 3)])
def test_blocked_linear_matches_numpy_on_the_dequantised_matrix(monkeypatch, scheme, lead):
    # a block of 36 rows of 256 floats (+ slack) over a 100 x 256 matrix: two full blocks and a ragged 28-row one
    monkeypatch.setattr(L, "BLOCK_BYTES", 36 * 256 * 4 + 100)
    monkeypatch.setattr(L, "_tls", threading.local())
    w = quantize(RNG.standard_normal((100, 256)).astype(np.float32), scheme)
    x = RNG.standard_normal((*lead, 256)).astype(np.float32)
    ref = x @ dequantize(w).T
    got = L.linear(x, w)
    assert got.shape == (*lead, 100) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_rows_wider_than_a_block_still_work(monkeypatch):
    monkeypatch.setattr(L, "BLOCK_BYTES", 256)  # 64 floats per block, rows of 128
    monkeypatch.setattr(L, "_tls", threading.local())
    w = quantize(RNG.standard_normal((10, 128)).astype(np.float32), "int4")
    x = RNG.standard_normal((2, 128)).astype(np.float32)
    np.testing.assert_allclose(L.linear(x, w), x @ dequantize(w).T, rtol=1e-5, atol=1e-5)


def test_blocked_linear_temporaries_do_not_grow_with_the_matrix():
    w = quantize(RNG.standard_normal((2816, 1024)).astype(np.float32), "int4")  # 11 MiB as float32
    x = RNG.standard_normal((1, 1024)).astype(np.float32)
    out = 2816 * 4

    def peak_extra() -> int:
        tracemalloc.start()
        try:
            L.linear(x, w)
            return tracemalloc.get_traced_memory()[1] - out
        finally:
            tracemalloc.stop()

    def run_in_new_thread() -> int:  # a fresh thread allocates its scratch: count it
        res = []
        t = threading.Thread(target=lambda: res.append(peak_extra()))
        t.start()
        t.join()
        return res[0]

    extra = run_in_new_thread()
    assert extra <= L.reference_workspace_bytes() + 256 * 1024, extra
    assert L.reference_workspace_bytes() < 2816 * 1024 * 4 // 3
    tracemalloc.start()
    try:
        dequantize(w)  # the unblocked reference would hold the whole float32 matrix (and an int8 copy)
        whole = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert whole > 2816 * 1024 * 4 > 3 * extra


def test_plan_workspace_uses_the_kernel_bound_not_the_largest_matrix(tmp_path):
    from offload_synth import dense_config, make_bundle

    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.schedulers.memory_plan import workspace_bytes

    b = Bundle(make_bundle(tmp_path / "d", dense_config(hidden=256, inter=2048, vocab=4096)))
    ws = workspace_bytes(b.config, b, 1, 64)
    assert ws >= REFERENCE.workspace_bytes() == L.reference_workspace_bytes()
    assert ws < REFERENCE.workspace_bytes() + 6 * (1 << 20)


def test_decode_products_run_single_threaded_and_restore_the_callers_blas_threads(monkeypatch):
    fn = L._blas_threads_fn()
    if fn is None:
        pytest.skip("numpy's BLAS is not an OpenBLAS with openblas_set_num_threads_local")
    seen = []
    real_matmul = np.matmul

    def spy(*a, **k):
        cur = fn(1)  # read this thread's setting (and put it back)
        fn(cur)
        seen.append(cur)
        return real_matmul(*a, **k)

    w = quantize(RNG.standard_normal((64, 128)).astype(np.float32), "int8")
    old = fn(2)
    try:
        monkeypatch.setattr(L.np, "matmul", spy)
        L.linear(RNG.standard_normal((1, 128)).astype(np.float32), w)
        L.linear(RNG.standard_normal((L.SINGLE_THREAD_ROWS + 1, 128)).astype(np.float32), w)
        monkeypatch.undo()
        assert seen == [1, 2]
    finally:
        assert fn(old) == 2
