"""Prefill on all threads (issue 12 item 3): the C block kernels' threaded prefill pieces against independent numpy
references and against their own one-thread results.

* the prefill GEMM (activation rounding split over the pool in row ranges, then output row groups over the pool):
  equal to a float64 numpy model (gguf-py's decode of the blocks x the Q8_0-rounded activations) and bit-identical
  for 1, 2 and 3 threads, for widths that are not powers of two and prompt row counts that are not multiples of
  the 4 / 8-row activation tile nor of the 16-row weight group;
* the prefill attention (``es_attention_prefill``: (query row, KV head) items over the pool) against
  :func:`edgespool.kernels.attention.attention`, with a past, a sliding window, head sizes off the 8-lane path,
  key counts that are not multiples of 8; bit-identical for any thread count;
* SiLU x up (``es_silu_mul``, a vectorised polynomial exp) against float64 and :func:`edgespool.kernels.swiglu.silu`;
* RMSNorm rows (``es_rmsnorm_rows``) bit-identical to :func:`edgespool.kernels.rmsnorm.rmsnorm`;
* RoPE in place (``es_rope``) bit-identical to :func:`edgespool.kernels.rope.apply_rope` (HF's rotate_half form);
* the kernel table: prefill attention through the block kernels, decode (one query row) to the base kernel.
"""
from __future__ import annotations

import numpy as np
import pytest
from edgespool.kernels import c_blocks
from edgespool.kernels.attention import attention
from edgespool.kernels.block_pack import PackedQTensor
from edgespool.kernels.quant import QTensor
from edgespool.kernels.rmsnorm import rmsnorm
from edgespool.kernels.rope import apply_rope, rope_cos_sin, rope_inv_freq
from edgespool.kernels.swiglu import silu
from test_kernels_blocks import _weight, gguf_dequant, q8_rounded, rand_blocks, rel


@pytest.fixture(scope="module")
def kerns(tmp_path_factory):
    lib = c_blocks.host_library(cache_dir=tmp_path_factory.mktemp("blockcache"))
    ks = [c_blocks.BlockKernels(lib, threads=t) for t in (1, 2, 3)]
    yield ks
    for k in ks:
        k.close()


@pytest.mark.parametrize("t,rows,n", [("Q8_0", 301, 32 * 45), ("Q4_K", 200, 768), ("Q6_K", 129, 1280),
                                      ("Q4_0", 1000, 32 * 27)])
def test_threaded_prefill_gemm_equals_numpy_and_one_thread(kerns, t, rows, n):
    rng = np.random.default_rng(hash(t) % 1000)
    raw = rand_blocks(rng, t, rows, n)
    w = QTensor(t.lower(), (rows, n), raw)
    wf = gguf_dequant(raw, t, rows, n).astype(np.float64)
    for m in (5, 37, 130, 515):
        x = rng.standard_normal((m, n)).astype(np.float32)
        want = q8_rounded(x) @ wf.T
        main, stored = [], []  # per thread count: the kernel the engine runs (packed where it can), the stored one
        for k in kerns:
            p = k.prepare_weight(w)
            main.append(k.linear(x, p))
            if isinstance(p, PackedQTensor):
                stored.append(k.linear(x, w))
        for y in main + stored:
            assert y.shape == (m, rows) and rel(y, want) < 2e-6, (t, m)
        for ys in (main, stored):
            for y in ys[1:]:
                np.testing.assert_array_equal(y, ys[0])  # the thread split changes nothing


def test_threaded_fused_qkv_prefill_equals_one_thread(kerns):
    rng = np.random.default_rng(5)
    ws = [_weight(rng, s, r, 1536) for s, r in (("q4_k", 1536), ("q4_k", 256), ("q6_k", 256))]
    x = rng.standard_normal((131, 1536)).astype(np.float32)
    outs = []
    for k in kerns:
        ps = [k.prepare_weight(w) for w in ws]
        got = k.linear_multi(x, ps)
        if got is None:
            pytest.skip(f"this build ({k.isa}) has no packed K-quant kernels")
        for y, p, w in zip(got, ps, ws):
            assert rel(y, q8_rounded(x) @ w.dequantize().astype(np.float64).T) < 2e-6
        outs.append(got)
    for got in outs[1:]:
        for a, b in zip(got, outs[0]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("T,past,nh,nkv,D,window", [(512, 0, 12, 2, 128, 0), (37, 5, 6, 3, 40, 0),
                                                    (100, 20, 4, 1, 64, 33), (19, 3, 2, 2, 36, 0),
                                                    (70, 0, 9, 3, 72, 8)])
def test_prefill_attention_matches_numpy(kerns, T, past, nh, nkv, D, window):
    rng = np.random.default_rng(T + D)
    S = past + T
    q = rng.standard_normal((T, nh, D)).astype(np.float32)
    cache = rng.standard_normal((2, nkv, S + 7, D)).astype(np.float32)  # KV-cache views: head stride > S rows
    K, V = cache[0, :, :S], cache[1, :, :S]
    qp, kp = np.arange(past, past + T), np.arange(S)
    ref = attention(q, K, V, qp, kp, window or None, 0.11)
    outs = [k.attention(q, K, V, qp, kp, window or None, 0.11) for k in kerns]
    assert outs[0] is not None
    assert float(np.abs(outs[0] - ref).max()) < 2e-5 * float(np.abs(ref).max())
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_prefill_attention_refuses_what_it_does_not_serve(kerns):
    k = kerns[1]
    rng = np.random.default_rng(2)
    K = rng.standard_normal((2, 9, 32)).astype(np.float32)
    q = rng.standard_normal((3, 4, 32)).astype(np.float32)
    assert k.attention(q, K.astype(np.float16), K.astype(np.float16), np.arange(6, 9), np.arange(9)) is None
    assert k.attention(q, K, K, np.array([6, 7, 9]), np.arange(9)) is None  # positions not consecutive


def test_silu_mul_matches_float64_and_numpy(kerns):
    rng = np.random.default_rng(3)
    g = (4 * rng.standard_normal((37, 1001))).astype(np.float32)
    u = rng.standard_normal((37, 1001)).astype(np.float32)
    g64, u64 = g.astype(np.float64), u.astype(np.float64)
    exact = g64 / (1 + np.exp(-g64)) * u64
    assert all(k.silu_min_threads == 1 for k in kerns)  # the polynomial SiLU serves every thread count
    outs = [k.silu_mul(g, u) for k in kerns]
    assert float(np.abs(outs[0] - exact).max()) < 1e-6 * float(np.abs(exact).max())
    assert float(np.abs(outs[0] - silu(g) * u).max()) < 2e-6 * float(np.abs(exact).max())  # the numpy path's
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    for k in kerns:  # over the gate output itself: the same values, no new array
        g2 = g.copy()
        o = k.silu_mul(g2, u, in_place=True)
        assert o is g2
        np.testing.assert_array_equal(o, outs[0])
    # the whole float range: no overflow, no NaN, relative error of a float32 result where it is not negligible
    x = np.concatenate([np.linspace(-150, 150, 300001), [-3e38, -1e-30, 0.0, 1e-30, 3e38]]).astype(np.float32)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        ex = x64 / (1 + np.exp(-x64))
    o = kerns[1].silu_mul(x, np.ones_like(x))
    assert np.isfinite(o).all()
    big = np.abs(ex) > 1e-30
    assert float((np.abs(o - ex) / np.abs(ex))[big].max()) < 5e-7
    assert float(np.abs(o - ex)[~big].max()) < 1e-28
    kerns[2].silu_min_threads = c_blocks.SILU_MIN_THREADS  # an older library's scalar tanhf: numpy below 4 threads
    try:
        assert kerns[2].silu_mul(g, u) is None
    finally:
        kerns[2].silu_min_threads = 1


@pytest.mark.parametrize("rows,n", [(512, 1536), (7, 896), (1, 576), (33, 37), (3, 5)])
def test_rmsnorm_rows_equal_numpy_bit_for_bit(kerns, rows, n):
    rng = np.random.default_rng(rows * n)
    x = (3 * rng.standard_normal((rows, n))).astype(np.float32)
    w = (1 + 0.2 * rng.standard_normal(n)).astype(np.float32)
    ref = rmsnorm(x, w, 1e-6)
    for k in kerns:
        np.testing.assert_array_equal(k.rmsnorm(x, w, 1e-6), ref)
    x3 = x.reshape(rows, 1, n)  # any leading shape: rows of the last axis
    np.testing.assert_array_equal(kerns[1].rmsnorm(x3, w, 1e-6), ref.reshape(rows, 1, n))
    assert kerns[1].rmsnorm(x[:, ::2], w[::2].copy(), 1e-6) is None  # not contiguous: numpy's turn
    assert kerns[1].rmsnorm(x.astype(np.float64), w, 1e-6) is None
    assert kerns[1].rmsnorm(x, w[:-1].copy(), 1e-6) is None  # width mismatch


@pytest.mark.parametrize("T,heads,D", [(300, 12, 128), (7, 2, 64), (1, 3, 96), (33, 5, 18)])
def test_rope_in_place_equals_numpy(kerns, T, heads, D):
    rng = np.random.default_rng(T)
    inv, att = rope_inv_freq(D, 1e6, None, 32768)
    cos, sin = rope_cos_sin(np.arange(40, 40 + T), inv, att)
    x = (3 * rng.standard_normal((T, heads, D))).astype(np.float32)
    ref = apply_rope(x, cos, sin)
    for k in kerns:
        a, b = x.copy(), x[:, :1].copy()
        assert k.rope([a, b], cos, sin)
        np.testing.assert_array_equal(a, ref)  # bit for bit, any thread count
        np.testing.assert_array_equal(b, ref[:, :1])
    strided = x[:, ::2]  # not C-contiguous: declined, nothing touched
    before = x.copy()
    assert not kerns[1].rope([x.copy(), strided], cos, sin)
    np.testing.assert_array_equal(x, before)
    assert not kerns[1].rope([x.copy()], cos[:, :-2], sin[:, :-2])  # tables of another head size


def test_table_attention_prefill_and_decode_here_other_kv_to_the_base(kerns):
    calls = []

    def base(*args):
        calls.append(args[0].shape[0])
        return None

    t = kerns[1].table(c_blocks.REFERENCE.replace(attention_kernel=base))
    rng = np.random.default_rng(4)
    K = rng.standard_normal((2, 10, 32)).astype(np.float32)
    q = rng.standard_normal((10, 4, 32)).astype(np.float32)
    ref = attention(q, K, K, np.arange(10), np.arange(10))
    out = t.attention(q, K, K, np.arange(10), np.arange(10))
    assert calls == [] and float(np.abs(out - ref).max()) < 1e-5
    # decode runs the same kernel: a query row's result is the same alone as inside a prompt chunk (bit for bit;
    # another kernel for decode made a re-fed prompt's last row differ and, through int8 activations, the tokens)
    q1 = q[-1:]
    one = t.attention(q1, K, K, np.array([9]), np.arange(10))
    np.testing.assert_array_equal(one, out[-1:])
    assert calls == [] and float(np.abs(one - attention(q1, K, K, np.array([9]), np.arange(10))).max()) < 1e-5
    h = t.attention(q1, K.astype(np.float16), K.astype(np.float16), np.array([9]), np.arange(10))  # f16 KV rows
    assert calls == [1] and h is not None  # the base kernel was asked (it declined: the numpy reference ran)
