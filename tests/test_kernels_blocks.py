"""The C block kernels (edgespool/kernels/c_blocks.py, c_src/blockdot.c) against independent references.

* weights: every ggml format as stored (random block bytes with sane f16 scales), decoded by gguf-py (the numpy
  port of ggml's C reference, itself checked bit-identical to libggml in test_gguf.py) and, where llama-cpp-python
  is installed, by libggml's own ``dequantize_row_*``; edgespool's int8 / int4 by the numpy reference kernels;
* activations: a float64 numpy model of the Q8_0 rounding of x (so the integer dots must be exact), and float x
  (error bound of the rounding);
* llama.cpp's own block dot products (libggml-cpu ``vec_dot`` of the type traits, on x quantised by ggml's own
  ``from_float``) for the 32-value formats, which share the activation rounding exactly;
* the aarch64 build (NEON + dotprod, and NEON without dotprod) under qemu-aarch64 on the same inputs.

Shapes are not powers of two (rows 37 / 301 / 1000, widths 7 or 27 blocks, 3 super-blocks) and batches of 1..6 rows
(the 4-row weight reuse and its tail).
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from edgespool.kernels import c_blocks
from edgespool.kernels.block_pack import PACKED_SCHEMES, PackedQTensor
from edgespool.kernels.quant import QTensor, quantize
from edgespool.kernels.table import REFERENCE
from edgespool.runtime.bundle.ggml_schemes import GGML_BLOCKS

FORMATS = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
F16_AT = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q2_K": [80, 82], "Q3_K": [108],
          "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


@pytest.fixture(scope="module")
def kern(tmp_path_factory):
    lib = c_blocks.host_library(cache_dir=tmp_path_factory.mktemp("blockcache"))
    k1, k2 = c_blocks.BlockKernels(lib, threads=1), c_blocks.BlockKernels(lib, threads=2)
    yield k1, k2
    k1.close()
    k2.close()


def rand_blocks(rng, t: str, rows: int, n: int) -> np.ndarray:
    """Random ggml blocks of type ``t`` (uint8 ``[rows, row_bytes]``) with finite, small f16 scales."""
    bv, bb = GGML_BLOCKS[t]
    raw = rng.integers(0, 256, (rows, n // bv, bb), dtype=np.uint8)
    for p in F16_AT[t]:
        raw[:, :, p:p + 2] = rng.uniform(-0.02, 0.02, (rows, n // bv)).astype(np.float16).view(np.uint8).reshape(
            rows, n // bv, 2)
    if t == "Q6_K":  # int8 sub-block scales
        raw[:, :, 192:208] = rng.integers(-60, 60, (rows, n // bv, 16)).astype(np.int8).view(np.uint8)
    return raw.reshape(rows, -1)


def gguf_dequant(raw: np.ndarray, t: str, rows: int, n: int) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    return np.asarray(dequantize(raw, GGMLQuantizationType[t]), np.float64).reshape(rows, n)


def q8_rounded(x: np.ndarray) -> np.ndarray:
    """float64 model of the kernels' activation rounding: per 32 values d = f16(max|x|/127), codes
    round-half-away(x / (max|x|/127)) clipped to +-127 (ggml's quantize_row_q8_0)."""
    b = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(b).max(1) / np.float32(127)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    v = b * inv[:, None]
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)), -127, 127)
    return (q.astype(np.float64) * d.astype(np.float16).astype(np.float64)[:, None]).reshape(x.shape)


def rel(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("t", FORMATS)
def test_ggml_formats_exact_on_rounded_activations(kern, t):
    rng = np.random.default_rng(FORMATS.index(t))
    k1, k2 = kern
    rows, n = (301, 768) if t.endswith("K") else (1000, 32 * 27)
    raw = rand_blocks(rng, t, rows, n)
    w = QTensor(t.lower(), (rows, n), raw)
    wf = gguf_dequant(raw, t, rows, n)
    for m in (1, 2, 4, 5, 6):
        x = rng.standard_normal((m, n)).astype(np.float32)
        y1, y2 = k1.linear(x, w), k2.linear(x, w)
        assert y1.shape == (m, rows) and y1.dtype == np.float32
        assert rel(y1, q8_rounded(x) @ wf.T) < 2e-6, (t, m)  # the integer block dots are exact
        assert rel(y1, x.astype(np.float64) @ wf.T) < 2e-2  # the rounding of x costs < 2% of max|y|
        np.testing.assert_array_equal(y1, y2)  # the row split changes nothing
    # the 4-row weight reuse computes each row like a single-row call
    x = rng.standard_normal((6, n)).astype(np.float32)
    np.testing.assert_allclose(k1.linear(x, w)[5], k1.linear(x[5:6], w)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_edgespool_schemes_match_the_numpy_reference(kern, scheme):
    rng = np.random.default_rng(7)
    k1, k2 = kern
    wf = rng.standard_normal((37, 32 * 7)).astype(np.float32)
    w = quantize(wf, scheme, 32)
    x = rng.standard_normal((3, 32 * 7)).astype(np.float32)
    ref = q8_rounded(x) @ w.dequantize().astype(np.float64).T
    assert rel(k1.linear(x, w), ref) < 2e-6
    assert rel(k2.linear(x, w), REFERENCE.linear(x, w)) < 2e-2


def _weight(rng, scheme: str, rows: int, n: int) -> QTensor:
    if scheme.startswith("q"):
        return QTensor(scheme, (rows, n), rand_blocks(rng, scheme.upper(), rows, n))
    return quantize(rng.standard_normal((rows, n)).astype(np.float32), scheme, 32)


@pytest.mark.parametrize("scheme", PACKED_SCHEMES)
def test_packed_layout(kern, scheme):
    """The x16 repacked layout (c_src/blockpack.h): the stored bytes come back bit for bit (dequantize, embedding
    rows, the numpy reference kernels), and the packed GEMV / GEMM compute the same integer block dots as the
    stored-layout kernels (exact on Q8_0-rounded x; float order differs), for row counts that are not multiples of
    the 16-row group, batches across the 8-row activation tile, and one or two threads."""
    k1, k2 = kern
    rng = np.random.default_rng(PACKED_SCHEMES.index(scheme) + 40)
    shapes = ((37, 224), (301, 896), (1000, 864), (129, 576))
    if scheme in ("q4_k", "q5_k", "q6_k", "q3_k", "q2_k"):  # 256-value super-blocks
        shapes = ((37, 256), (301, 1536), (129, 512))
    for rows, n in shapes:
        w = _weight(rng, scheme, rows, n)
        p = k1.prepare_weight(w)
        if not isinstance(p, PackedQTensor):
            assert p is w
            pytest.skip(f"this build ({k1.isa}) computes {scheme} from the stored layout (packed: AVX-512 VNNI)")
        assert p.scheme == w.scheme and p.shape == w.shape and p.scale is None and p.data.ctypes.data % 64 == 0
        back = p.stored_rows(0, rows)
        np.testing.assert_array_equal(back.data, w.data)
        if w.scale is not None:
            np.testing.assert_array_equal(back.scale, w.scale)
        np.testing.assert_array_equal(p.dequantize(), w.dequantize())
        idx = np.array([rows - 1, 0, 5, 5])
        np.testing.assert_array_equal(p.rows(idx), w.rows(idx))
        wf = w.dequantize().astype(np.float64)
        for m in (1, 2, 3, 8, 9, 17):
            x = rng.standard_normal((m, n)).astype(np.float32)
            y = k1.linear(x, p)
            assert y.shape == (m, rows) and rel(y, q8_rounded(x) @ wf.T) < 2e-6, (rows, n, m)
            assert rel(y, k1.linear(x, w)) < 2e-6
            np.testing.assert_array_equal(y, k2.linear(x, p))  # the row split changes nothing
        x = rng.standard_normal((3, n)).astype(np.float32)
        np.testing.assert_array_equal(REFERENCE.linear(x, p), REFERENCE.linear(x, w))
    assert k1.prepare_weight(p) is p  # packing twice is a no-op


@pytest.mark.parametrize("t", ["Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"])
def test_packed_ggml_formats_match_gguf_dequant(kern, t):
    """Q4_1 (nibbles + per-block min), Q5_0 (nibbles + a fifth-bit plane), Q4_K and Q6_K packed: the packed GEMV / GEMM
    equal Q8_0-rounded activations times the ``gguf`` package's dequantisation of the stored blocks (an
    independent reference), for row counts of real models that are not multiples of 16 / 256, 1 and 2 threads."""
    k1, k2 = kern
    rng = np.random.default_rng(70 + len(t))
    for rows, n in ((896, 512 if t.endswith("K") else 576), (150, 4864), (1537, 1536 if t.endswith("K") else 896)):
        raw = rand_blocks(rng, t, rows, n)
        w = QTensor(t.lower(), (rows, n), raw)
        p = k1.prepare_weight(w)
        if not isinstance(p, PackedQTensor):
            pytest.skip(f"this build ({k1.isa}) computes {t} from the stored layout (packed: AVX-512 VNNI)")
        wf = gguf_dequant(raw, t, rows, n).astype(np.float64)
        for m in (1, 9):
            x = rng.standard_normal((m, n)).astype(np.float32)
            y = k1.linear(x, p)
            assert rel(y, q8_rounded(x) @ wf.T) < 2e-6, (t, rows, n, m)
            np.testing.assert_array_equal(y, k2.linear(x, p))


# resident bytes of the x16 form / the stored blocks for a multiple of 16 rows (blockpack.h's layout table)
PACKED_BYTE_RATIO = {"q8_0": 1.0, "q4_0": 1.0, "q4_1": 1.0, "q5_0": 1.0, "q5_1": 1.0, "q4_k": 2368 / 2304, "q5_k": 2880 / 2816, "q6_k": 1.0,
                    "q3_k": 1824 / 1760, "q2_k": 1.0}


@pytest.mark.parametrize("t", ["Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"])
def test_packed_every_value_position_and_resident_bytes(kern, t):
    """Each activation a one-hot 127 (its Q8_0 rounding is exact: d = 1, code 127), so row j of the packed GEMM is
    127 x column j of the weight: every value position of every block (Q5_0's fifth bits from the bit-plane, all
    32 of each block) against the ``gguf`` package's decode of the stored bytes, one activation row at a time and
    as one GEMM. The packed buffer is the stored size (Q4_K / Q6_K: their layout's ratio)."""
    k1, _ = kern
    rng = np.random.default_rng(90 + FORMATS.index(t))
    rows, n = 48, (512 if t.endswith("K") else 96)
    raw = rand_blocks(rng, t, rows, n)
    w = QTensor(t.lower(), (rows, n), raw)
    p = k1.prepare_weight(w)
    if not isinstance(p, PackedQTensor):
        pytest.skip(f"this build ({k1.isa}) computes {t} from the stored layout")
    assert p.data.nbytes == pytest.approx(raw.nbytes * PACKED_BYTE_RATIO[t.lower()], rel=1e-9)
    want = 127 * gguf_dequant(raw, t, rows, n).T  # [n, rows]
    x = (127 * np.eye(n)).astype(np.float32)
    assert rel(k1.linear(x, p), want) < 1e-6
    for j in rng.choice(n, 12, replace=False):
        assert rel(k1.linear(x[j:j + 1], p)[0], want[j]) < 1e-6, j


def test_isa_label_names_the_build(kern):
    """``es_isa`` (shown in the kernel table's description and the benchmark JSON) names the instruction set the
    kernels run on and says "+x16" exactly when the build packs some format; on an AVX-512 VNNI CPU the host build
    is the zmm kernel (it used to say "avx2+vnni")."""
    k1, _ = kern
    packs = any(k1._lib.es_pack_kind(c) for c in range(9))
    assert k1.isa in ("avx512-vnni+x16", "avx2+avx-vnni+x16", "avx2+x16", "avx2", "neon-dotprod+x16", "neon", "c")
    assert k1.isa.endswith("+x16") == packs and k1.isa in k1.table().description
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith(("flags", "Features"))).split()
    except (OSError, StopIteration):
        flags = []
    if {"avx512f", "avx512bw", "avx512_vnni"} <= set(flags):
        assert k1.isa == "avx512-vnni+x16" and all(k1._lib.es_pack_kind(c) for c in (0, 1, 2, 3, 4, 6, 7, 8))


def test_two_python_threads_share_one_pool(kern):
    """Two Python threads calling one 2-thread BlockKernels at once (ctypes drops the GIL, so the calls overlap in
    C): the pool runs one job at a time and a caller that finds it busy computes its own job on its own thread;
    every result equals the 1-thread kernels' bit for bit (before the run lock, a second caller overwrote the
    posted job while the first one's chunks were being claimed)."""
    import threading

    k1, k2 = kern
    rng = np.random.default_rng(21)
    cases = []
    for scheme, rows, n in (("q8_0", 1536, 576), ("q4_0", 576, 1536), ("int8", 960, 576), ("q4_1", 1200, 576)):
        w = _weight(rng, scheme, rows, n)
        p1, p2 = k1.prepare_weight(w), k2.prepare_weight(w)
        xs = [rng.standard_normal((m, n)).astype(np.float32) for m in (1, 1, 3)]
        cases.append((p2, xs, [k1.linear(x, p1) for x in xs]))
    bad: list[str] = []

    def hammer(j: int) -> None:
        for it in range(60):
            w, xs, want = cases[(j + it) % len(cases)]
            for x, ref in zip(xs, want):
                if not np.array_equal(k2.linear(x, w), ref):
                    bad.append(f"thread {j} call {it} {w.scheme}")

    ts = [threading.Thread(target=hammer, args=(j,)) for j in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in ts), "a caller hung on the shared pool"
    assert not bad, bad[:5]


def test_fused_multi_weight_dispatch_equals_one_call_each(kern):
    """``linear_multi`` (one pool dispatch for a layer's q / k / v or gate / up, x rounded once) gives each weight's
    result bit for bit as its own ``linear`` call: mixed formats in one job (Qwen's Q4_K q/k with a Q6_K v; Q5_0
    with Q8_0), rows not multiples of 16, decode and prefill rows, 1 and 2 threads; and the kernel table's
    ``linear_many`` (what the engine calls) adds biases like ``linear``. Weights this library did not pack are
    refused (None), and the table then runs one call per weight."""
    k1, k2 = kern
    rng = np.random.default_rng(33)
    for schemes, rows, n in ((("q4_k", "q4_k", "q6_k"), (1536, 256, 256), 1536), (("q5_0", "q8_0"), (4864, 130), 896),
                             (("q4_1", "q4_1", "q4_1"), (576, 192, 192), 576), (("int4", "int8"), (40, 1000), 224)):
        ws = [_weight(rng, s, r, n) for s, r in zip(schemes, rows)]
        for k in (k1, k2):
            ps = [k.prepare_weight(w) for w in ws]
            if not all(isinstance(p, PackedQTensor) for p in ps):
                assert k.linear_multi(np.zeros((1, n), np.float32), ps) is None
                continue
            for m in (1, 2, 9):
                x = rng.standard_normal((m, n)).astype(np.float32)
                ys = k.linear_multi(x, ps)
                assert ys is not None and len(ys) == len(ps)
                for y, p in zip(ys, ps):
                    np.testing.assert_array_equal(y, k.linear(x, p))
            bias = rng.standard_normal(rows[0]).astype(np.float32)
            t = k.table()
            x = rng.standard_normal((1, n)).astype(np.float32)
            got = t.linear_many(x, ps, [bias] + [None] * (len(ps) - 1))
            for y, p, b in zip(got, ps, [bias] + [None] * (len(ps) - 1)):
                np.testing.assert_array_equal(y, t.linear(x, p, b))
    other = c_blocks.BlockKernels(c_blocks.host_library(), threads=1)  # another library object: not its packing
    try:
        w = _weight(rng, "q8_0", 64, 256)
        p = k1.prepare_weight(w)
        if isinstance(p, PackedQTensor):
            assert other.linear_multi(np.ones((1, 256), np.float32), [p, p]) is None
    finally:
        other.close()


def test_packing_leaves_other_formats_alone(kern):
    k1, _ = kern
    rng = np.random.default_rng(9)
    w64 = quantize(rng.standard_normal((16, 128)).astype(np.float32), "int4", 64)
    assert k1.prepare_weight(w64) is w64


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_resident_model_runs_packed_with_one_copy(tmp_path, quant):
    """A resident bundle on its block kernels: every int8 / int4 linear weight is packed at first read, no tensor
    keeps the group's read buffer alive (one copy of the weights), and the logits equal the same kernels on the
    stored layout (float order) and the numpy reference (Q8_0 activation rounding)."""
    import edgespool
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.synth import synth_demo_model

    b = export_model(synth_demo_model(seed=3, hidden=128, layers=2, experts=2, top_k=1, moe_intermediate=96,
                                      heads=4, kv_heads=2), tmp_path / quant,
                     policy=QuantPolicy(quant=quant, group_size=32), onnx=False, kernels=True, progress=False,
                     kernel_activations="q8").path
    ids = [1, 5, 9, 14, 3, 22, 7, 11]
    with edgespool.load(b) as m:
        bk = m.kernels.backend
        if not isinstance(bk, c_blocks.BlockKernels) or not bk.can_pack:
            pytest.skip(f"no packing block kernels here: {m.kernels.description}")
        got = m.logits(ids)
        tensors = [t for g in m.source._groups.values() for t in g.values()]
        packed = [t for t in tensors if isinstance(t, PackedQTensor)]
        if not bk._lib.es_pack_kind(c_blocks.SCHEME_CODES[quant][0]):
            pytest.skip(f"this build ({bk.isa}) computes {quant} from the stored layout")
        assert packed and bk.packed == len(packed) and all(t.scheme == quant for t in packed)
        assert all(isinstance(t, PackedQTensor) or t.data.base is None for t in tensors)
        lib = bk.path
    stored = c_blocks.BlockKernels(lib, threads=1)
    stored.can_pack = False
    with edgespool.load(b, kernels=stored.table()) as m:
        want = m.logits(ids)
        assert not any(isinstance(t, PackedQTensor) for g in m.source._groups.values() for t in g.values())
    stored.close()
    with edgespool.load(b, kernels=False) as m:
        ref = m.logits(ids)
    assert rel(got, want) < 1e-3, rel(got, want)
    assert rel(got, ref) < 3e-2 and got[-1].argmax() == ref[-1].argmax()


def test_table_routes_and_falls_back(kern):
    k1, _ = kern
    rng = np.random.default_rng(3)
    table = k1.table()
    w64 = quantize(rng.standard_normal((16, 128)).astype(np.float32), "int4", 64)  # no g64 block kernel
    x = rng.standard_normal((2, 128)).astype(np.float32)
    calls = k1.calls
    np.testing.assert_allclose(table.linear(x, w64), REFERENCE.linear(x, w64), rtol=1e-5, atol=1e-5)
    assert k1.calls == calls and any("int4" in r for r in k1.fallbacks)
    w8 = quantize(rng.standard_normal((16, 128)).astype(np.float32), "int8")
    y = table.linear(x.reshape(1, 2, 128), w8, bias=np.ones(16, np.float32))
    assert y.shape == (1, 2, 16) and k1.calls == calls + 1
    assert "C block kernels" in table.description


def test_target_flags_and_missing_compiler(tmp_path):
    from edgespool.errors import TargetError

    assert c_blocks.gcc_flags({"mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}) == ["-mcpu=cortex-a76"]
    assert "-mavx512vnni" in c_blocks.gcc_flags({"mtriple": "x86_64-linux-gnu", "mcpu": "znver4"})
    with pytest.raises(TargetError, match="not found"):
        c_blocks.compile_library({"mtriple": "x86_64-linux-gnu"}, tmp_path / "b.so", cc="no-such-gcc-xyz")


# -- llama.cpp's own vec_dot ---------------------------------------------------------------------------------------
GGML_TYPE = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13,
             "Q6_K": 14}


class _Traits(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p), ("vec_dot_type", ctypes.c_int),
                ("nrows", ctypes.c_int64)]


def _ggml_cpu():
    pytest.importorskip("llama_cpp")
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    cands = sorted(lib_dir.glob("libggml-cpu.so*"))
    if not cands:
        pytest.skip(f"no libggml-cpu in {lib_dir}")
    ctypes.CDLL(str(min(lib_dir.glob("libggml-base.so*"))), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(cands[0]))
    lib.ggml_cpu_init()
    lib.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_Traits)
    lib.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    return lib


def ggml_vec_dot(lib, t: str, raw_row: np.ndarray, x: np.ndarray) -> float:
    tr = lib.ggml_get_type_traits_cpu(GGML_TYPE[t]).contents
    vt = lib.ggml_get_type_traits_cpu(tr.vec_dot_type).contents
    n = x.size
    xq = np.zeros(n * 2 + 1024, np.uint8)  # generous: q8_1 / q8_K blocks are under 2 bytes per value
    ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(vt.from_float)(
        x.ctypes.data, xq.ctypes.data, n)
    out = np.zeros(1, np.float32)
    vd = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                          ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)(tr.vec_dot)
    vd(n, out.ctypes.data, 0, np.ascontiguousarray(raw_row).ctypes.data, 0, xq.ctypes.data, 0, 1)
    return float(out[0])


@pytest.mark.llamacpp
@pytest.mark.parametrize("t", FORMATS)
def test_against_llamacpp_vec_dot(kern, t):
    """llama.cpp's vec_dot on the same bytes: equal up to float order for the 32-value formats (the same
    activation rounding); K-quants within the difference of ggml's one activation scale per 256 values."""
    lib = _ggml_cpu()
    rng = np.random.default_rng(11)
    rows, n = 96, 768
    raw = rand_blocks(rng, t, rows, n)
    x = rng.standard_normal((1, n)).astype(np.float32)
    y = kern[0].linear(x, QTensor(t.lower(), (rows, n), raw))[0]
    ref = np.array([ggml_vec_dot(lib, t, raw[r], x[0]) for r in range(rows)])
    if t.endswith("K"):  # ggml rounds x with one scale per 256 values, the kernels per 32: no worse than ggml
        exact = x[0].astype(np.float64) @ gguf_dequant(raw, t, rows, n).T
        err, gerr = np.sqrt(np.mean((y - exact) ** 2)), np.sqrt(np.mean((ref - exact) ** 2))
        assert rel(y, ref) < 3e-2 and err <= 1.25 * gerr, (err, gerr)  # comparable to llama.cpp's own error
    else:  # Q4_1 / Q5_1: ggml's q8_1 keeps d * sum(codes) as f16 (their min term)
        assert rel(y, ref) < (1e-3 if t in ("Q4_1", "Q5_1") else 1e-5), rel(y, ref)
    p = kern[0].prepare_weight(QTensor(t.lower(), (rows, n), raw))
    if isinstance(p, PackedQTensor):  # the x16 layout on AVX-512 VNNI builds: the stored kernels' dots
        yp = kern[0].linear(x, p)[0]
        assert rel(yp, y) < 2e-6
        assert rel(yp, ref) < (3e-2 if t.endswith("K") else 1e-3 if t in ("Q4_1", "Q5_1") else 1e-5)


@pytest.mark.llamacpp
def test_gguf_dequant_is_libggml_for_the_test_blocks():
    """The reference decode used above equals libggml's dequantize_row_* on these random blocks."""
    pytest.importorskip("llama_cpp")
    import gguf_tools

    rng = np.random.default_rng(5)
    for t in FORMATS:
        raw = rand_blocks(rng, t, 3, 512)
        np.testing.assert_array_equal(gguf_dequant(raw, t, 3, 512).astype(np.float32).reshape(-1),
                                      gguf_tools.ggml_dequantize(raw, t, 3 * 512))


# -- aarch64 build under qemu ----------------------------------------------------------------------------------------
HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
void *es_pool_new(int); long es_act_bytes(int, int); const char *es_isa(void);
int es_linear(void *, int, const uint8_t *, long, const uint8_t *, long, int, int, const float *, int, float *,
              uint8_t *, int);
int main(int argc, char **argv) {  /* in: wt rows n m row_bytes, raw, x; out: isa line, y */
    FILE *f = fopen(argv[1], "rb"); int h[5]; fread(h, 4, 5, f);
    uint8_t *w = malloc((long)h[1] * h[4]); fread(w, 1, (long)h[1] * h[4], f);
    float *x = malloc(4L * h[2] * h[3]); fread(x, 4, (long)h[2] * h[3], f); fclose(f);
    float *y = malloc(4L * h[1] * h[3]); uint8_t *s = malloc(es_act_bytes(h[2], h[3]) + 8);
    int rc = es_linear(es_pool_new(2), h[0], w, h[4], 0, 0, h[1], h[2], x, h[3], y, s, 2);
    FILE *o = fopen(argv[2], "wb"); fwrite(y, 4, (long)h[1] * h[3], o); fclose(o);
    printf("%s %d\n", es_isa(), rc); return rc;
}
"""


@pytest.mark.parametrize("mcpu,isa", [("cortex-a76", "neon-dotprod+x16"), ("cortex-a72", "neon")])
def test_aarch64_build_under_qemu(tmp_path, mcpu, isa):
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64") or shutil.which(
        "qemu-aarch64-static")
    if not cc or not qemu:
        pytest.skip("needs aarch64-linux-gnu-gcc and qemu-aarch64")
    (tmp_path / "h.c").write_text(HARNESS)
    exe = tmp_path / "h"
    flags = c_blocks.gcc_flags({"mtriple": "aarch64-linux-gnu", "mcpu": mcpu})
    subprocess.run([cc, "-O2", "-static", "-pthread", *flags, "-o", str(exe), str(tmp_path / "h.c"),
                    str(c_blocks.SOURCE), "-lm"], check=True, capture_output=True)
    rng = np.random.default_rng(2)
    for t in FORMATS:
        rows, n, m = 45, (512 if t.endswith("K") else 32 * 9), 5
        raw = rand_blocks(rng, t, rows, n)
        x = rng.standard_normal((m, n)).astype(np.float32)
        inp = tmp_path / "in.bin"
        inp.write_bytes(np.array([c_blocks.SCHEME_CODES[t.lower()][0], rows, n, m, raw.shape[1]], np.int32)
                        .tobytes() + raw.tobytes() + x.tobytes())
        p = subprocess.run([qemu, "-cpu", mcpu, str(exe), str(inp), str(tmp_path / "out.bin")],
                           capture_output=True, text=True, timeout=120, check=False)
        assert p.returncode == 0 and p.stdout.split() == [isa, "0"], p.stdout + p.stderr
        y = np.fromfile(tmp_path / "out.bin", np.float32).reshape(m, rows)
        assert rel(y, q8_rounded(x) @ gguf_dequant(raw, t, rows, n).T) < 2e-6, t


# -- a bundle's own block kernels in the arm64 rig (qemu cortex-a76 = Pi 5) ----------------------------------------
_RIG_RUN = r"""
import json, sys
import numpy as np
import edgespool
from edgespool.targets import get_target
m = edgespool.load(sys.argv[1])
ids = [1, 5, 9, 14, 3, 7]
lg = m.logits(ids)
np.save(sys.argv[2], lg)
print(json.dumps({"kernels": m.kernels.description, "calls": getattr(m.kernels.backend, "calls", None),
                  "cpu": get_target("host").cpu, "features": list(get_target("host").features)}))
"""


@pytest.mark.arm64
@pytest.mark.slow
def test_rpi5_keep_bundle_of_a_real_q4_k_m_file_runs_packed_k_quants_in_the_arm64_rig(tmp_path):
    """The real Qwen2.5-Coder-0.5B Q4_K_M file kept as stored (Q4_K, Q6_K, Q5_0, Q8_0 blocks) and exported for
    rpi5 runs under qemu cortex-a76 with its NEON dotprod x16 tiles for every one of those formats (no stored-row
    or numpy fallback), and its logits match the host's numpy reference of the same bundle to the Q8_0 activation
    rounding."""
    import json
    import sys

    import edgespool
    from conftest import require_arm64_rig
    from edgespool.apps.assets import fetch
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model, open_source

    require_arm64_rig(extras=())
    b = export_model(open_source(fetch("qwen2.5-coder-0.5b")), tmp_path / "rpi5", target="rpi5",
                     policy=QuantPolicy(quant="keep"), onnx=False, kernels=True, progress=False).path
    (tmp_path / "run.py").write_text(_RIG_RUN.replace('"calls": getattr(m.kernels.backend, "calls", None),',
                                                      '"calls": getattr(m.kernels.backend, "calls", None), '
                                                      '"fallbacks": getattr(m.kernels.backend, "fallbacks", None),'))
    r = subprocess.run([sys.executable, "-m", "edgespool", "rig", "run", "--profile", "rpi5", "--arch", "arm64",
                        "--emulate", "--", "python3", str(tmp_path / "run.py"), str(b), str(tmp_path / "lg.npy")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=1200, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("{")))
    assert "neon-dotprod+x16" in res["kernels"] and res["calls"] > 0 and not res["fallbacks"], res
    with edgespool.load(b, kernels=False) as m:
        want = m.logits([1, 5, 9, 14, 3, 7])
    got = np.load(tmp_path / "lg.npy")
    assert rel(got, want) < 3e-2, rel(got, want)


@pytest.mark.arm64
@pytest.mark.slow
def test_rpi5_bundle_runs_its_block_kernels_in_the_arm64_rig(tmp_path):
    """An int8 bundle exported for rpi5 runs its own NEON+dotprod block kernels under qemu cortex-a76 (host
    detection reads AT_HWCAP there: no cortex-a72 fallback to numpy), and its logits match the host's numpy
    reference of the same bundle to the Q8_0 activation rounding."""
    import json
    import sys

    import edgespool
    from conftest import require_arm64_rig
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.synth import synth_demo_model

    require_arm64_rig(extras=())
    b = export_model(synth_demo_model(seed=3, hidden=128, layers=2, experts=4, moe_intermediate=160, heads=4, kv_heads=2),
                     tmp_path / "rpi5", target="rpi5", policy=QuantPolicy(quant="int8"), onnx=False, kernels=True,
                     progress=False).path
    (tmp_path / "run.py").write_text(_RIG_RUN)
    r = subprocess.run([sys.executable, "-m", "edgespool", "rig", "run", "--profile", "rpi5", "--arch", "arm64",
                        "--emulate", "--", "python3", str(tmp_path / "run.py"), str(b), str(tmp_path / "lg.npy")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("{")))
    assert res["cpu"] == "cortex-a76" and "asimddp" in res["features"], res
    assert "C block kernels" in res["kernels"] and "neon-dotprod+x16" in res["kernels"] and res["calls"] > 0, res
    with edgespool.load(b, kernels=False) as m:  # the host: numpy reference of the same bundle
        want = m.logits([1, 5, 9, 14, 3, 7])
    got = np.load(tmp_path / "lg.npy")
    assert rel(got, want) < 3e-2, rel(got, want)


@pytest.mark.slow
def test_real_q4km_keep_bundle_runs_on_block_kernels(tmp_path):
    """Qwen2.5-Coder-0.5B's Q4_K_M file (Q5_0 / Q6_K / Q4_K / Q8_0 blocks) exported with --quant keep: every
    linear runs on the block kernels (no fallback) and the logits match the numpy (gguf-py dequantise + BLAS)
    path of the same bundle to the Q8_0 activation rounding."""
    gg = sorted((Path.home() / ".cache/edgespool/assets/qwen2.5-coder-0.5b").glob("*.gguf"))
    if not gg:
        pytest.skip("run `edgespool fetch qwen2.5-coder-0.5b` first")
    import edgespool
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model, open_source

    src = open_source(gg[0])
    try:
        b = export_model(src, tmp_path / "keep", policy=QuantPolicy(quant="keep"), onnx=False, kernels=True,
                         progress=False).path
    finally:
        src.close()
    ids = [750, 3974, 29472, 1445, 1648, 982, 262, 421]
    with edgespool.load(b) as m:
        assert "C block kernels" in m.kernels.description
        got = m.logits(ids)
        bk = m.kernels.backend
        assert bk.calls > 0 and not bk.fallbacks, bk.fallbacks
        q5 = [t for g in m.source._groups.values() for t in g.values() if getattr(t, "scheme", "") == "q5_0"]
        if bk.can_pack and bk._lib.es_pack_kind(c_blocks.SCHEME_CODES["q5_0"][0]):  # packed at its stored size
            assert q5 and all(isinstance(t, PackedQTensor) for t in q5)
            assert all(t.data.nbytes == t.shape[0] * t.shape[1] // 32 * 22 for t in q5)
    with edgespool.load(b, kernels=False) as m:
        want = m.logits(ids)
    assert rel(got, want) < 3e-2
    assert (got[-1].argmax() == want[-1].argmax())


def test_format_without_block_kernel_is_counted_as_a_fallback(kern):
    """A weight the C kernels do not run (int4 in groups of 64: the kernels take g32) goes to the base table's
    numpy kernel through the routed table, equal to the reference, and is counted in ``fallbacks`` (which
    `edgespool bench` reports), not silent."""
    k1, _ = kern
    rng = np.random.default_rng(3)
    w = quantize(rng.standard_normal((8, 256)).astype(np.float32), "int4", 64)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    table = k1.table(REFERENCE)
    before = sum(v for k, v in k1.fallbacks.items() if "int4" in k and "group 64" in k)
    y = table.linear(x, w)
    np.testing.assert_array_equal(y, REFERENCE.linear(x, w))
    assert sum(v for k, v in k1.fallbacks.items() if "int4" in k and "group 64" in k) == before + 1, k1.fallbacks


@pytest.mark.parametrize("scheme", PACKED_SCHEMES)
def test_decode_forms_are_bit_identical(kern, scheme):
    """The packed decode tiles' two forms (one row-group stream a tile; a call's four row groups interleaved:
    kernels/decode_form.py) give the same bits for one activation row, on partial 4-group tiles (rows 64 k + 1..63)
    and with the rows split over two threads; the form is per format and per pool."""
    k1, k2 = kern
    if not k1.has_decode_forms:
        pytest.skip(f"this build ({k1.isa}) has one decode form")
    rng = np.random.default_rng(PACKED_SCHEMES.index(scheme) + 90)
    n = 512 if scheme in ("q4_k", "q5_k", "q6_k", "q3_k", "q2_k") else 576
    for rows in (17, 64, 97, 300):
        w = _weight(rng, scheme, rows, n)
        p = k1.prepare_weight(w)
        if not isinstance(p, PackedQTensor):
            pytest.skip(f"this build ({k1.isa}) computes {scheme} from the stored layout")
        x = rng.standard_normal((1, n)).astype(np.float32)
        got = {}
        for k in (k1, k2):
            for form in (1, 4):
                assert k.decode_form(scheme, form) == form
                got[k.threads, form] = k.linear(x, p)
            k.decode_form(scheme, 1)
        ref = got[1, 1]
        assert rel(ref, q8_rounded(x) @ w.dequantize().astype(np.float64).T) < 2e-6
        for key, y in got.items():
            np.testing.assert_array_equal(y, ref, err_msg=f"{scheme} rows {rows} threads/form {key}")
    other = "q4_0" if scheme != "q4_0" else "q8_0"
    k1.decode_form(scheme, 4)
    assert k1.decode_form(other) == 1 and k2.decode_form(scheme) == 1  # per format, per pool
    k1.decode_form(scheme, 1)
    with pytest.raises(ValueError, match="decode form 3"):
        k1.decode_form(scheme, 3)


def test_decode_form_choice_measured_cached_forced(kern, tmp_path, monkeypatch):
    """decode_form.choose: measures both forms on a model's packed weights and keeps the faster (form 4 only when
    at least MIN_GAIN faster), caches the choice per CPU / library / threads / format, reads it back on the next
    model, follows the main format for a small one, obeys $EDGESPOOL_DECODE_FORM, and names a bad value."""
    from edgespool.errors import OptionError
    from edgespool.kernels import decode_form

    k1, _ = kern
    if not k1.has_decode_forms:
        pytest.skip(f"this build ({k1.isa}) has one decode form")
    monkeypatch.setenv("EDGESPOOL_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(decode_form, "SWEEP_BYTES", 4 << 20)
    monkeypatch.setattr(decode_form, "MIN_SWEEP_BYTES", 2 << 20)
    rng = np.random.default_rng(3)
    big = [k1.prepare_weight(_weight(rng, "q8_0", 1024, 1024)) for _ in range(4)]  # ~4.3 MB of q8_0
    small = [k1.prepare_weight(_weight(rng, "q4_0", 64, 256))]
    got = decode_form.choose(k1, big + small)
    assert got["q8_0"]["how"] == "measured" and got["q4_0"]["how"] == "follows q8_0"
    t1, t4 = got["q8_0"]["ms"]["1"], got["q8_0"]["ms"]["4"]
    assert t1 > 0 and t4 > 0 and got["q8_0"]["form"] == (4 if t4 < t1 * (1 - decode_form.MIN_GAIN) else 1)
    assert k1.decode_form("q8_0") == got["q8_0"]["form"] == k1.decode_form("q4_0")
    assert (tmp_path / "decode-forms.json").exists()
    few = decode_form.choose(k1, small)  # too few bytes to measure DRAM reads: the default, nothing cached
    assert few["q4_0"]["how"].startswith("default") and "q4_0" not in (tmp_path / "decode-forms.json").read_text()
    again = decode_form.choose(k1, big + small)
    assert again["q8_0"]["how"] == "cached" and again["q8_0"]["form"] == got["q8_0"]["form"]
    monkeypatch.setenv("EDGESPOOL_DECODE_FORM", "4")
    assert decode_form.choose(k1, big)["q8_0"] == {"form": 4, "how": "forced ($EDGESPOOL_DECODE_FORM)"}
    assert k1.decode_form("q8_0") == 4
    monkeypatch.setenv("EDGESPOOL_DECODE_FORM", "fast")
    with pytest.raises(OptionError, match="EDGESPOOL_DECODE_FORM='fast'"):
        decode_form.choose(k1, big)
    for s in ("q8_0", "q4_0"):
        k1.decode_form(s, 1)
