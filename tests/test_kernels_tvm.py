"""One shared suite for every linear-kernel implementation: the numpy reference (kernels.quant.linear) and the
TVM host kernels (kernels.tvm_backend.TvmKernels), checked against an independent float64 decode of the stored
layout written here (not kernels.quant's own dequantiser)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from edgespool.kernels import quant

SHAPES = [(64, 128), (96, 256), (33, 96)]  # 33 rows: odd; 96 inputs: not a multiple of the 32/64 lanes
SCHEMES = [("int8", 0), ("int4", 32), ("int4", 64), ("int4", 16), ("f16", 0)]
BATCHES = [1, 3, 4, 7, 16]  # up to TvmKernels.max_gemm_rows


def decode_ref(t: quant.QTensor) -> np.ndarray:
    """float64 weights decoded straight from the documented layout, element by element per group."""
    out, inn = t.shape
    if t.scheme == "f16":
        return t.data.astype(np.float64)
    if t.scheme == "int8":
        return t.data.astype(np.float64) * t.scale.astype(np.float64)[:, None]
    g = t.group_size
    w = np.empty((out, inn))
    for kg in range(inn // g):
        byts = t.data[:, kg * g // 2:(kg + 1) * g // 2].astype(np.int64)
        d = t.scale[:, kg].astype(np.float64)[:, None]
        w[:, kg * g: kg * g + g // 2] = ((byts & 15) - 8) * d
        w[:, kg * g + g // 2: (kg + 1) * g] = ((byts >> 4) - 8) * d
    return w


def make(scheme: str, g: int, out: int, inn: int, seed: int = 0) -> quant.QTensor:
    rng = np.random.default_rng(seed)
    return quant.quantize(rng.standard_normal((out, inn)).astype(np.float32), scheme, g or 32)


def _specs():
    from edgespool.kernels.tvm_build import LinearSpec

    out = []
    for o, i in SHAPES:
        for scheme, g in SCHEMES:
            if scheme == "int4" and i % g:
                continue
            out.append(LinearSpec(scheme, o, i, g))
            out.append(LinearSpec(scheme, o, i, g, "gemm", 4))
    return out


@pytest.fixture(scope="session")
def tvm_kernels(tmp_path_factory):
    pytest.importorskip("tvm", reason="apache-tvm not installed")
    from edgespool.kernels.tvm_backend import TvmKernels

    return TvmKernels.for_host(_specs(), cache_dir=tmp_path_factory.mktemp("kcache"))


@pytest.fixture(params=["numpy", "numpy_blocked", pytest.param("tvm", marks=pytest.mark.tvm),
                        pytest.param("tvm_table", marks=pytest.mark.tvm)])
def impl(request):
    """Each implementation as a callable linear(x, w, bias) -> y: the whole-matrix numpy reference, the engine's
    row-blocked numpy kernel (kernels.linear, the REFERENCE table's kernels), the TVM kernels directly, and the TVM
    kernels in a model's kernel table (TvmKernels.table(), what the engine calls)."""
    from edgespool.kernels import linear as linear_mod

    if request.param == "numpy":
        return quant.linear
    if request.param == "numpy_blocked":
        return linear_mod.linear
    kern = request.getfixturevalue("tvm_kernels")
    if request.param == "tvm_table":
        table = kern.table()
        calls0 = kern.calls

        def run_table(x, w, bias=None):
            y = table.linear(x, w, bias)
            assert kern.calls > calls0, "the table's TVM kernel did not run"
            return y
        return run_table

    def run(x, w, bias=None):
        y = kern.linear(x, w, bias)
        assert y is not None, f"TVM kernel missing for {w.scheme} {w.shape}"
        return y
    return run


# int4 needs the group to divide the width: only the combinations the format allows
VALID_CASES = [(shape, scheme, g) for shape in SHAPES for scheme, g in SCHEMES
               if not (scheme == "int4" and shape[1] % g)]


@pytest.mark.parametrize("shape,scheme,g", VALID_CASES)
@pytest.mark.parametrize("m", BATCHES)
def test_linear_matches_reference(impl, shape, scheme, g, m):
    out, inn = shape
    w = make(scheme, g, out, inn)
    rng = np.random.default_rng(m)
    x = rng.standard_normal((m, inn)).astype(np.float32)
    bias = rng.standard_normal(out).astype(np.float32)
    want = x.astype(np.float64) @ decode_ref(w).T + bias
    got = impl(x, w, bias)
    assert got.shape == (m, out) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_vector_input_and_leading_dims(impl):
    w = make("int4", 32, 64, 128)
    rng = np.random.default_rng(1)
    x1 = rng.standard_normal(128).astype(np.float32)
    assert impl(x1, w).shape == (64,)
    x3 = rng.standard_normal((2, 3, 128)).astype(np.float32)
    got = impl(x3, w)
    np.testing.assert_allclose(got, (x3.astype(np.float64) @ decode_ref(w).T), rtol=1e-4, atol=1e-4)


@pytest.mark.tvm
def test_tvm_zero_copy_readonly_and_misaligned(tvm_kernels, tmp_path):
    """Weights memory-mapped read-only (as from a bundle) and activations at an odd address work in place."""
    w = make("int8", 0, 96, 256)
    p = tmp_path / "w.bin"
    w.data.tofile(p)
    mm = np.memmap(p, dtype=np.int8, mode="r", shape=w.data.shape)
    assert not mm.flags.writeable
    wq = quant.QTensor("int8", w.shape, mm, w.scale)
    raw = np.empty(256 + 1, np.float32)
    x = raw[1:].reshape(1, 256)  # 4-byte but not 64-byte aligned
    x[:] = np.random.default_rng(2).standard_normal((1, 256))
    got = tvm_kernels.linear(x, wq)
    np.testing.assert_allclose(got, x.astype(np.float64) @ decode_ref(w).T, rtol=1e-4, atol=1e-4)
    assert not mm.flags.writeable  # untouched


@pytest.mark.tvm
def test_tvm_falls_back_and_says_so(tvm_kernels, caplog):
    x = np.ones((1, 128), np.float32)
    with caplog.at_level(logging.INFO, logger="edgespool.kernels"):
        assert tvm_kernels.linear(x, make("f32", 0, 64, 128)) is None  # no f32 kernel
        assert tvm_kernels.linear(np.ones((1, 512), np.float32), make("int8", 0, 80, 512)) is None  # no shape
        assert tvm_kernels.linear(np.ones((17, 128), np.float32), make("int8", 0, 64, 128)) is None  # prefill
    assert any("fallback" in r.message for r in caplog.records)
    assert len(tvm_kernels.fallbacks) == 3


@pytest.mark.tvm
def test_cache_compiles_once(tmp_path):
    pytest.importorskip("tvm")
    from edgespool.kernels.tvm_build import LinearSpec
    from edgespool.kernels.tvm_cache import compile_kernel
    from edgespool.targets import get_target

    spec = LinearSpec("int4", 64, 128, 32)
    tgt = get_target("host").tvm_target
    a = compile_kernel(spec, tgt, cache_dir=tmp_path)
    b = compile_kernel(spec, tgt, cache_dir=tmp_path)
    assert not a.cached and b.cached and a.path == b.path and a.nbytes == b.path.stat().st_size
    assert b.compile_seconds == pytest.approx(a.compile_seconds)
    c = compile_kernel(LinearSpec("int4", 64, 128, 64), tgt, cache_dir=tmp_path)
    assert c.path != a.path and len(list(tmp_path.iterdir())) == 2


@pytest.mark.tvm
def test_cuda_source_and_fatbin_for_jetson(tmp_path):
    """sm_87 (Orin) compiles to a fatbin here; the launch record names the kernel's parameters in order."""
    pytest.importorskip("tvm")
    import shutil

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    from edgespool.kernels.tvm_build import LinearSpec
    from edgespool.kernels.tvm_cache import compile_kernel

    k = compile_kernel(LinearSpec("int4", 64, 128, 32), {"kind": "cuda", "arch": "sm_87"}, cache_dir=tmp_path)
    assert k.files[0] == "kernel.fatbin" and k.path.stat().st_size > 0
    meta = json.loads((k.directory / "meta.json").read_text())
    assert {p["name"] for p in meta["launch"]["params"]} == {"x", "w", "scale", "y"}
    assert meta["launch"]["grid"][0] * meta["launch"]["block"][1] == 64
    assert "__global__" in (k.directory / "kernel.cu").read_text()


@pytest.mark.tvm
def test_aarch64_cross_compile(tmp_path):
    pytest.importorskip("tvm")
    import shutil

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed")
    from edgespool.kernels.tvm_build import LinearSpec
    from edgespool.kernels.tvm_cache import compile_kernel
    from edgespool.targets import get_target

    rpi5 = get_target("rpi5")
    k = compile_kernel(LinearSpec("int8", 64, 128), rpi5.tvm_target, cc=rpi5.cross_cc, cache_dir=tmp_path)
    head = k.path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64


def _host_has_vnni() -> bool:
    """The host's TVM target (what for_host compiles for) has AVX-512 VNNI."""
    try:
        from edgespool.kernels.tvm_build import has_vnni
        from edgespool.targets import get_target

        return has_vnni(get_target("host").tvm_target)
    except Exception:  # noqa: BLE001 - tvm missing etc.: the tests skip
        return False


def q8_ref_x(x: np.ndarray) -> np.ndarray:
    """x rounded to Q8_0 blocks of 32 (d = max|x|/127, codes round(x/d)), as float64: written here from the rule."""
    out = np.empty(x.shape, np.float64)
    for b in range(0, x.shape[-1], 32):
        blk = x[..., b:b + 32].astype(np.float32)
        d = (np.abs(blk).max(axis=-1, keepdims=True) / np.float32(127)).astype(np.float32)
        codes = np.where(d > 0, np.rint(blk / np.where(d > 0, d, 1)), 0)
        out[..., b:b + 32] = codes * d
    return out


@pytest.mark.tvm
@pytest.mark.skipif(not _host_has_vnni(), reason="host CPU has no AVX-512 VNNI")
@pytest.mark.parametrize("scheme", ["int4", "int8"])
@pytest.mark.parametrize("shape", [(64, 128), (36, 384)])
def test_q8_vnni_kernels(scheme, shape, tmp_path):
    """The VNNI kernel equals the exact product of Q8_0-rounded x with the stored int4 weights, and stays within
    Q8_0's error of the float result."""
    pytest.importorskip("tvm")
    from edgespool.kernels.tvm_backend import TvmKernels
    from edgespool.kernels.tvm_build import LinearSpec

    out, inn = shape
    g = 32 if scheme == "int4" else 0
    kern = TvmKernels.for_host([LinearSpec(scheme, out, inn, g, act="q8")], cache_dir=tmp_path)
    w = make(scheme, g, out, inn, seed=3)
    rng = np.random.default_rng(4)
    for m in (1, 3, 20):  # 20 > max_gemm_rows: prompts use the q8 kernel row after row too
        calls0 = kern.calls
        x = rng.standard_normal((m, inn)).astype(np.float32)
        x[:, 5] = 0.0
        x[:, 32:64] = 0.0  # an all-zero block (scale 0)
        got = kern.linear(x, w)
        want = q8_ref_x(x) @ decode_ref(w).T
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        exact = x.astype(np.float64) @ decode_ref(w).T
        assert np.abs(got - exact).max() < 2e-2 * np.abs(exact).max()
        assert kern.calls == calls0 + 1 and not kern.fallbacks  # the q8 kernel ran (no fallback)


_RIG_SCRIPT = r'''
import json, sys
import numpy as np
from pathlib import Path
from edgespool.kernels.quant import QTensor
from edgespool.kernels.tvm_backend import TvmKernels, runtime_kind
d = Path(sys.argv[1])
kern = TvmKernels.from_dir(d / "kernels")
worst = 0.0
for f in sorted(d.glob("case_*.npz")):
    z = np.load(f)
    scheme = str(z["scheme"])
    w = QTensor(scheme, tuple(int(v) for v in z["shape"]), z["data"], z["scale"], int(z["g"]))
    y = kern.linear(z["x"], w)
    worst = max(worst, float(np.abs(y - z["host"]).max() / np.abs(z["host"]).max()))
print(json.dumps({"runtime": runtime_kind(), "worst": worst, "fallbacks": kern.fallbacks}))
'''


@pytest.mark.tvm
@pytest.mark.arm64
@pytest.mark.slow
def test_rpi5_kernels_match_host_in_arm64_rig(tmp_path):
    """An rpi5 bundle's cross-compiled kernels run under qemu (cortex-a76) and match the host kernels (float
    activations) or the numpy Q8_0 reference (the dotprod sdot kernels)."""
    pytest.importorskip("tvm")
    import subprocess
    import sys

    from edgespool.exporters.kernels_export import build_kernels_for_bundle
    from edgespool.kernels.tvm_backend import TvmKernels
    from edgespool.runtime.bundle.config import ModelConfig
    from edgespool.targets import get_target

    from conftest import require_arm64_rig

    require_arm64_rig()  # builds the rig once (cached), or skips saying why it cannot be built here
    cfg = ModelConfig(arch="llama", vocab_size=64, hidden_size=128, intermediate_size=256, num_layers=1,
                      num_heads=4, num_kv_heads=2, head_dim=32)
    rng = np.random.default_rng(5)
    host_dir = tmp_path / "host"
    for scheme, act in (("int8", "f32"), ("int4", "f32"), ("int8", "q8"), ("int4", "q8")):
        meta = {n: {"scheme": scheme, "shape": list(s), "group_size": 32}
                for n, s in cfg.tensor_shapes().items() if len(s) == 2 and n != "embed"}
        case_dir = tmp_path / f"{scheme}_{act}"
        sec = build_kernels_for_bundle(cfg, meta, get_target("rpi5"), case_dir / "kernels", cache_dir=tmp_path / "c",
                                       activations=act, block=False)  # the TVM kernels (block: test_kernels_blocks)
        assert any(k["spec"]["act"] == act for k in sec["kernels"])
        # re-exported into the same directory on purpose: the first round's libraries are still loaded
        build_kernels_for_bundle(cfg, meta, get_target("host"), host_dir / scheme, cache_dir=tmp_path / "c",
                                 block=False)
        host = TvmKernels.from_dir(host_dir / scheme)  # float-activation kernels
        for o, i in {tuple(m["shape"]) for m in meta.values()}:
            w = make(scheme, 32, o, i, seed=o)
            for m in (1, 5):
                x = rng.standard_normal((m, i)).astype(np.float32)
                # q8 bundles use the sdot kernel for every row count: the numpy Q8_0 reference
                want = (q8_ref_x(x) @ decode_ref(w).T).astype(np.float32) if act == "q8" else \
                    host.linear(x, w)
                np.savez(case_dir / f"case_{o}x{i}_{m}.npz", data=w.data, scale=w.scale, x=x, host=want,
                         scheme=scheme, shape=np.array([o, i]), g=w.group_size)
        script = tmp_path / "rig_check.py"
        script.write_text(_RIG_SCRIPT)
        # through the CLI in a fresh process (the rig's launcher expects its sync pipe on fd 3)
        r = subprocess.run([sys.executable, "-m", "edgespool", "rig", "run", "--profile", "rpi5", "--arch", "arm64",
                            "--", "python3", str(script), str(case_dir)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
        if "No module named 'tvm_ffi'" in r.stderr:
            pytest.skip("the arm64 rig has no TVM runtime (edgespool rig arm64 setup with apache-tvm)")
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["fallbacks"] == {} and res["worst"] <= 1e-3, res


@pytest.mark.tvm
@pytest.mark.skipif(not _host_has_vnni(), reason="host CPU has no AVX-512 VNNI")
def test_q8_prep_kernel_matches_numpy(tmp_path):
    """The compiled activation rounding equals the numpy one (codes, offsets, scales), zeros included."""
    pytest.importorskip("tvm")
    from edgespool.kernels.tvm_backend import TvmKernels, quantize_activations_q8
    from edgespool.kernels.tvm_build import LinearSpec

    spec = LinearSpec("int4", 32, 256, 32, act="q8")
    kern = TvmKernels.for_host([spec], cache_dir=tmp_path)
    _, (_, prep) = kern._fns[("int4", 32, 256, 32, "gemv", "q8")]
    x = np.random.default_rng(6).standard_normal(256).astype(np.float32) * 3
    x[64:96] = 0.0
    outs = [np.empty(128, np.int8), np.empty(128, np.int8), np.empty(32, np.int32), np.empty(32, np.float32)]
    prep(x, *outs)
    for got, want in zip(outs, quantize_activations_q8(x)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.tvm
def test_table_kernels_fall_back_to_the_base_entry(tvm_kernels):
    """A TVM table's int8 entry falls back to its base table's kernel for a shape with no compiled kernel; the base
    (the numpy REFERENCE) is untouched, and the table is read-only."""
    from edgespool.kernels.table import REFERENCE

    w = make("int8", 0, 80, 512)  # no compiled kernel has this shape
    x = np.random.default_rng(7).standard_normal((2, 512)).astype(np.float32)
    ref_int8 = REFERENCE.linear_kernels["int8"]
    table = tvm_kernels.table()
    assert table.linear_kernels["int8"] is not ref_int8 and table.linear_kernels["int8"].fallback is ref_int8
    assert table.linear_kernels["f32"] is REFERENCE.linear_kernels["f32"] and table.backend is tvm_kernels
    calls = tvm_kernels.calls
    y = table.linear(x, w)
    assert tvm_kernels.calls == calls  # the numpy fallback ran
    assert REFERENCE.linear_kernels["int8"] is ref_int8
    with pytest.raises(TypeError):
        table.linear_kernels["int8"] = ref_int8  # type: ignore[index]
    np.testing.assert_allclose(y, x.astype(np.float64) @ decode_ref(w).T, rtol=1e-4, atol=1e-4)
    assert table.workspace_bytes() == REFERENCE.workspace_bytes()


@pytest.mark.tvm
@pytest.mark.skipif(not _host_has_vnni(), reason="host CPU has no AVX-512 VNNI")
@pytest.mark.parametrize("scheme", ["int4", "int8"])
def test_q8_decode_fast_path(scheme, tmp_path):
    """The one-row decode path of TvmKernels.linear (x [in], [1, in], [1, 1, in]; read-only memory-mapped
    weights; bias) equals Q8_0-rounded x times the stored weights; with prefer_q8 off the float-activation kernel
    runs instead and matches float x."""
    pytest.importorskip("tvm")
    from edgespool.kernels.tvm_backend import TvmKernels
    from edgespool.kernels.tvm_build import LinearSpec

    out, inn = 48, 256
    g = 32 if scheme == "int4" else 0
    kern = TvmKernels.for_host([LinearSpec(scheme, out, inn, g, act="q8"), LinearSpec(scheme, out, inn, g)],
                               cache_dir=tmp_path)
    w0 = make(scheme, g, out, inn, seed=5)
    np.save(tmp_path / "d.npy", w0.data)
    np.save(tmp_path / "s.npy", w0.scale)
    w = quant.QTensor(scheme, w0.shape, np.load(tmp_path / "d.npy", mmap_mode="r"),
                      np.load(tmp_path / "s.npy", mmap_mode="r"), w0.group_size)
    assert not w.data.flags.writeable
    rng = np.random.default_rng(6)
    x = rng.standard_normal(inn).astype(np.float32)
    bias = rng.standard_normal(out).astype(np.float32)
    want = q8_ref_x(x[None])[0] @ decode_ref(w0).T
    for xs in (x, x[None], x[None, None]):
        got = kern.linear(xs, w)
        assert got.shape == (*xs.shape[:-1], out)
        np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(kern.linear(x[None], w, bias)[0], want + bias, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())
    kern.prefer_q8 = False
    exact = x.astype(np.float64) @ decode_ref(w0).T
    np.testing.assert_allclose(kern.linear(x[None], w)[0], exact, rtol=1e-4, atol=1e-4 * np.abs(exact).max())
    assert np.abs(want - exact).max() > 1e-4 * np.abs(exact).max()  # the two modes really differ


@pytest.mark.tvm
@pytest.mark.skipif(not _host_has_vnni(), reason="host CPU has no AVX-512 VNNI")
def test_cli_export_kernel_activations_q8(tmp_path):
    """`edgespool export --kernel-activations q8` puts q8 GEMVs in the bundle; `edgespool.load` runs prompt and
    decode through them (no fallback), within Q8_0 rounding of transformers' float logits."""
    pytest.importorskip("tvm")
    pytest.importorskip("torch")
    from click.testing import CliRunner

    import edgespool
    from edgespool.apps.cli import cli

    sys.path.insert(0, str(Path(__file__).parent))
    import tiny_models

    hf = tiny_models.make_hf_model("llama", tmp_path / "hf", hidden_size=128, intermediate_size=256)
    out = tmp_path / "b"
    r = CliRunner().invoke(cli, ["export", str(hf), "--quant", "int8", "--kernel-activations", "q8", "--no-onnx",
                                 "-o", str(out)])
    assert r.exit_code == 0, r.output
    section = json.loads((out / "manifest.json").read_text())["kernels"]
    assert section["activations"] == "q8"
    # int8 linears are served by the C block kernels (Q8_0 activations: llama.cpp's numerics), not TVM GEMVs
    assert section["block"]["file"] == "blockdot.so" and not section["kernels"]
    ids = list(range(3, 23))
    want = tiny_models.hf_logits(hf, ids)
    with edgespool.load(out) as m:
        tk = m.kernels.backend
        assert tk is not None and "C block kernels" in m.kernels.description
        got = m.logits(ids)
        assert not tk.fallbacks and tk.calls > 0
    err = np.abs(got - want).max() / np.abs(want).max()
    assert 1e-4 < err < 5e-2, err  # int8 weights + Q8_0 activations, not the float path
