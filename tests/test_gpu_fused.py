"""The fused one-token decode kernels (offload/gpu_fused.py; marked ``gpu``, skipped without CuPy and a device)
against plain numpy written out here: RMSNorm + q/k/v GEMVs with biases, RMSNorm + gate/up + activation, and
the warp-split decode attention (GQA, sliding window, softcap), on odd shapes (K = 576 is not a multiple of 128,
head_dim 64 and 128, 9 query heads over 3 KV heads). The eligibility rule runs without a GPU."""
from __future__ import annotations

import numpy as np
import pytest
from gpu_common import cupy_or_skip

@pytest.fixture(scope="module")
def fz():
    from edgespool.offload.gpu_fused import FusedDecodeKernels

    return FusedDecodeKernels(cupy_or_skip())


def _int8(cp, rng, n, k):
    from edgespool.offload.gpu_ops import GpuTensor

    q = rng.integers(-127, 128, (n, k)).astype(np.int8)
    s = rng.uniform(0.5, 1.5, n).astype(np.float32) / (40 * k ** 0.5)
    return q, s, GpuTensor("int8", (n, k), cp.asarray(q), cp.asarray(s))


def _norm(x, w, eps):
    x64 = x.astype(np.float64)
    return x64 / np.sqrt((x64 ** 2).mean() + eps) * w


def _act(x, act):
    if act == "silu":
        return x / (1 + np.exp(-x))
    if act == "relu":
        return np.maximum(x, 0)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


@pytest.mark.gpu
@pytest.mark.parametrize("K,ns,bias", [(576, (576, 192, 192), True), (1536, (1536, 256, 256), True),
                                       (128, (300, 7), False)])
def test_norm_qkv(fz, K, ns, bias):
    cp = fz.cp
    rng = np.random.default_rng(K)
    x = rng.standard_normal((1, K)).astype(np.float32) * 3
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32)
    h = _norm(x, nw, 1e-6)
    mats, want = [], []
    for n in ns:
        q, s, g = _int8(cp, rng, n, K)
        b = rng.standard_normal(n).astype(np.float32) if bias else None
        want.append(h @ q.T.astype(np.float64) * s + (0 if b is None else b))
        mats.append((g, None if b is None else cp.asarray(b), cp.full((1, n), np.nan, cp.float32)))
    fz.norm_qkv(cp.asarray(x), cp.asarray(nw), 1e-6, mats)
    for (_, _, y), ref in zip(mats, want):
        got = cp.asnumpy(y)
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max() + 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("act", ["silu", "relu", "gelu_tanh"])
@pytest.mark.parametrize("K,N", [(576, 1536), (1536, 8960), (64, 37)])
def test_norm_gateup(fz, act, K, N):
    cp = fz.cp
    rng = np.random.default_rng(N)
    x = rng.standard_normal((1, K)).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32)
    qg, sg, gg = _int8(cp, rng, N, K)
    qu, su, gu = _int8(cp, rng, N, K)
    h = _norm(x, nw, 1e-5)
    ref = _act(h @ qg.T.astype(np.float64) * sg, act) * (h @ qu.T.astype(np.float64) * su)
    out = cp.full((1, N), np.nan, cp.float32)
    fz.norm_gateup(cp.asarray(x), cp.asarray(nw), 1e-5, gg, gu, out, act)
    assert np.abs(cp.asnumpy(out) - ref).max() <= 1e-5 * np.abs(ref).max() + 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("nh,nkv,D", [(12, 2, 128), (9, 3, 64), (4, 4, 32)])
@pytest.mark.parametrize("pos,window,softcap", [(0, 0, 0.0), (4, 0, 0.0), (299, 0, 0.0), (299, 37, 0.0),
                                                (130, 0, 30.0)])
def test_decode_attention(fz, nh, nkv, D, pos, window, softcap):
    cp = fz.cp
    C = 320
    rng = np.random.default_rng(pos + D)
    q = rng.standard_normal((nh, D)).astype(np.float32)
    Kc = rng.standard_normal((nkv, C, D)).astype(np.float32)
    Vc = rng.standard_normal((nkv, C, D)).astype(np.float32)
    scale = D ** -0.5
    start = max(0, pos - window + 1) if window else 0
    ref = np.empty((nh, D))
    for h in range(nh):
        kv = h // (nh // nkv)
        s = Kc[kv, start:pos + 1].astype(np.float64) @ q[h] * scale
        if softcap:
            s = np.tanh(s / softcap) * softcap
        e = np.exp(s - s.max())
        ref[h] = (e / e.sum()) @ Vc[kv, start:pos + 1]
    o = cp.full((nh, D), np.nan, cp.float32)
    fz.attention(cp.asarray(q), cp.asarray(Kc), cp.asarray(Vc), o, cp.asarray(np.array([pos], np.int32)), nh, nkv,
                 C, D, window, scale, softcap)
    assert np.abs(cp.asnumpy(o) - ref).max() < 1e-5


def test_fused_layer_ok_needs_int8_everywhere():
    from edgespool.offload.gpu_fused import fused_layer_ok
    from edgespool.offload.gpu_ops import GpuTensor

    names = ("wq", "wk", "wv", "wo", "ffn.gate", "ffn.up", "ffn.down")
    w = {"p." + n: GpuTensor("int8", (8, 64), None) for n in names}
    assert fused_layer_ok(w, "p.", "silu")
    assert not fused_layer_ok(w, "p.", "swish_beta")
    assert not fused_layer_ok({**w, "p.wo": GpuTensor("f16", (8, 64), None)}, "p.", "silu")
    assert not fused_layer_ok({**w, "p.ffn.down": GpuTensor("int8", (8, 66), None)}, "p.", "silu")
    del w["p.wk"]
    assert not fused_layer_ok(w, "p.", "silu")
