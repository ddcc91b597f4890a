"""The AVX2 x16 packed micro-kernel (kernels/c_src/blockpack_avx2.h) built for AVX2-only targets on this machine.

Two builds: ``-march=x86-64-v3`` (AVX2 + FMA + F16C, ``vpmaddubsw`` / ``vpmaddwd`` path) and ``-march=alderlake``
(AVX2 + AVX-VNNI, ``vpdpbusd`` ymm path); neither has AVX-512. Checked against a float64 numpy model of the Q8_0
activation rounding and the numpy-dequantized weights (the integer block dots must be exact), against the same
build's stored-layout kernels (checked against llama.cpp's vec_dot in test_kernels_blocks.py), and bit for bit
against the AVX-512 VNNI packed kernel of the host build where this CPU has one. Shapes are not multiples of 16.
"""
from __future__ import annotations

import numpy as np
import pytest
from edgespool.kernels import c_blocks
from edgespool.kernels.block_pack import PackedQTensor
from test_kernels_blocks import _weight, q8_rounded, rel

SCHEMES = ("q8_0", "q4_0", "int8", "int4", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q3_k", "q2_k")
KQUANTS = ("q4_k", "q5_k", "q6_k", "q3_k", "q2_k")  # 256-value super-blocks


def _cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@pytest.fixture(scope="module", params=["x86-64-v3", "alderlake"])
def avx2(request, tmp_path_factory):
    need = {"x86-64-v3": {"avx2", "fma", "f16c"}, "alderlake": {"avx2", "fma", "f16c", "avx_vnni"}}[request.param]
    if not need <= _cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(need - _cpu_flags())} for the {request.param} build")
    d = tmp_path_factory.mktemp("avx2lib")
    lib = d / f"{request.param}.so"
    rec = c_blocks.compile_library({"mtriple": "x86_64-linux-gnu", "mcpu": request.param}, lib, cache_dir=d)
    assert not any("avx512" in f for f in rec["flags"])
    k1, k2 = c_blocks.BlockKernels(lib, threads=1), c_blocks.BlockKernels(lib, threads=2)
    assert k1.isa == {"x86-64-v3": "avx2+x16", "alderlake": "avx2+avx-vnni+x16"}[request.param], k1.isa
    yield k1, k2
    k1.close()
    k2.close()


@pytest.fixture(scope="module")
def host512(tmp_path_factory):
    if not {"avx512f", "avx512bw", "avx512_vnni"} <= _cpu_flags():
        yield None
        return
    k = c_blocks.BlockKernels(c_blocks.host_library(cache_dir=tmp_path_factory.mktemp("hostlib")), threads=1)
    yield k if k.isa == "avx512-vnni+x16" else None
    k.close()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_avx2_packed_matches_references(avx2, host512, scheme):
    k1, k2 = avx2
    rng = np.random.default_rng(SCHEMES.index(scheme) + 70)
    shapes = ((37, 256), (301, 1536), (129, 512)) if scheme in KQUANTS else ((37, 224), (301, 896), (129, 576))
    for rows, n in shapes:
        w = _weight(rng, scheme, rows, n)
        p = k1.prepare_weight(w)
        assert isinstance(p, PackedQTensor), f"{k1.isa} build did not pack {scheme}"
        p512 = host512.prepare_weight(w) if host512 is not None else None
        wf = w.dequantize().astype(np.float64)
        for m in (1, 3, 8, 9, 17):
            x = rng.standard_normal((m, n)).astype(np.float32)
            y = k1.linear(x, p)
            assert y.shape == (m, rows) and rel(y, q8_rounded(x) @ wf.T) < 2e-6, (rows, n, m)
            assert rel(y, k1.linear(x, w)) < 2e-6  # the stored-layout kernels of the same build
            np.testing.assert_array_equal(y, k2.linear(x, p))  # the row split changes nothing
            if p512 is not None:
                np.testing.assert_array_equal(y, host512.linear(x, p512))  # = the AVX-512 kernel, bit for bit


def test_avx2_packed_tiny_and_tail_shapes(avx2):
    """Fewer rows than one 16-row group, and decode over a partial 4-group tile (rows 64 k + 1..63)."""
    k1, _ = avx2
    rng = np.random.default_rng(5)
    for scheme in SCHEMES:
        n = 256 if scheme in KQUANTS else 96
        for rows in (1, 7, 17, 65, 97):
            w = _weight(rng, scheme, rows, n)
            p = k1.prepare_weight(w)
            assert isinstance(p, PackedQTensor), scheme
            x = rng.standard_normal((2, n)).astype(np.float32)
            ref = q8_rounded(x) @ w.dequantize().astype(np.float64).T
            assert rel(k1.linear(x[:1], p), ref[:1]) < 2e-6 and rel(k1.linear(x, p), ref) < 2e-6, (scheme, rows)


def test_avx2_packed_ggml_formats_every_value_position(avx2):
    """Q4_1 / Q5_0 / Q4_K / Q6_K packed on AVX2 builds (2026-12-03; they stayed stored before): one-hot activations
    of 127 (exact Q8_0 rounding) make each GEMM row 127 x one weight column, so every value position of every block
    (Q5_0's fifth bits from the plane, Q6_K's two 16-value scales, Q4_K's 6-bit scales and mins) is checked against
    the ``gguf`` package's decode of the stored bytes; a real-model width (576, 1536) as decode and prefill."""
    from test_kernels_blocks import gguf_dequant

    k1, k2 = avx2
    rng = np.random.default_rng(11)
    for scheme in ("q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q3_k", "q2_k"):
        t = scheme.upper()
        n = 512 if scheme in KQUANTS else 96
        w = _weight(rng, scheme, 48, n)
        p = k1.prepare_weight(w)
        assert isinstance(p, PackedQTensor) and p.stored_rows(0, 48).data.tobytes() == w.data.tobytes(), scheme
        want = 127 * gguf_dequant(w.data, t, 48, n).T
        assert rel(k1.linear((127 * np.eye(n)).astype(np.float32), p), want) < 1e-6, scheme
        n = 1536 if scheme in KQUANTS else 576
        w = _weight(rng, scheme, 192, n)
        p = k1.prepare_weight(w)
        wf = gguf_dequant(w.data, t, 192, n)
        for m in (1, 5):
            x = rng.standard_normal((m, n)).astype(np.float32)
            y = k1.linear(x, p)
            assert rel(y, q8_rounded(x) @ wf.T) < 2e-6, (scheme, m)
            np.testing.assert_array_equal(y, k2.linear(x, p))


@pytest.mark.parametrize("mcpu,label", [("x86-64-v3", "avx2+x16"), ("alderlake", "avx2+avx-vnni+x16"),
                                        ("skylake-avx512", "avx2+x16"), ("sapphirerapids", "avx512-vnni+x16")])
def test_isa_label_of_each_x86_build(tmp_path, mcpu, label):
    """The build's ``es_isa`` label (kernel table description, benchmark JSON) for each x86 kernel family: the
    AVX-VNNI ymm build is not called plain avx2, AVX-512 without VNNI runs (and says) the AVX2 kernels, and the
    zmm VNNI build is avx512-vnni (it said "avx2+vnni"). Only the label and es_pack_kind are called (no kernel
    runs), so this checks builds this CPU cannot execute."""
    import ctypes

    lib = tmp_path / f"{mcpu}.so"
    c_blocks.compile_library({"mtriple": "x86_64-linux-gnu", "mcpu": mcpu}, lib, cache_dir=tmp_path)
    so = ctypes.CDLL(str(lib))
    so.es_isa.restype = ctypes.c_char_p
    assert so.es_isa().decode() == label
    # every x86 x16 build packs these (AVX2 since 2026-12-03, Q5_1 / Q5_K / Q3_K since 2026-12-07)
    for scheme in ("q5_0", "q4_1", "q4_k", "q6_k", "q5_1", "q5_k", "q3_k", "q2_k"):
        assert so.es_pack_kind(c_blocks.SCHEME_CODES[scheme][0]) == 1, (mcpu, scheme)


def test_avx2_decode_forms_are_bit_identical(avx2):
    """The AVX2 build's two decode forms (one stream; two interleaved row-group streams) give the same bits."""
    k1, k2 = avx2
    rng = np.random.default_rng(11)
    for scheme in SCHEMES:
        n = 512 if scheme in KQUANTS else 576
        for rows in (17, 97, 300):
            p = k1.prepare_weight(_weight(rng, scheme, rows, n))
            x = rng.standard_normal((1, n)).astype(np.float32)
            ys = []
            for k in (k1, k2):
                for form in (1, 4):
                    k.decode_form(scheme, form)
                    ys.append(k.linear(x, p))
                k.decode_form(scheme, 1)
            for y in ys[1:]:
                np.testing.assert_array_equal(y, ys[0], err_msg=f"{scheme} rows {rows}")
