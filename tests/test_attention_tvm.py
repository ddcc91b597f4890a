"""TVM-compiled GQA attention (kernels/tvm_attention.py, run through tvm_backend.TvmAttention) against the numpy
reference (kernels/attention.py) and against a float64 softmax written here from the definition: decode and
prefill, GQA ratios 1/2/4, sliding windows, context lengths 1..~300 (non-multiples of the 16-key block and of the
vector width), K/V as strided views of a larger KV cache; engine logits with the kernel in its table; aarch64 builds
(and a run in the arm64 rig when it is set up)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")

from edgespool.kernels import attention as attention_mod  # noqa: E402
from edgespool.kernels.attention import attention  # noqa: E402
from edgespool.kernels.table import REFERENCE  # noqa: E402
from edgespool.kernels.tvm_attention import AttentionSpec  # noqa: E402

# (head_dim, n_heads, n_kv_heads): GQA ratio 1, 2, 4; head_dim 40: not a multiple of 16 lanes (8-lane dots)
SPECS = [(32, 4, 4), (64, 8, 4), (64, 16, 4), (40, 4, 1)]
CACHE = 320  # rows of the fake KV cache: K/V passed as [nkv, S, D] views of [nkv, CACHE, D]


@pytest.fixture(scope="module")
def attn(tmp_path_factory):
    from edgespool.kernels.tvm_backend import TvmAttention

    return TvmAttention.for_host([AttentionSpec(*s) for s in SPECS], cache_dir=tmp_path_factory.mktemp("kc"))


def ref64(q, k, v, q_pos, k_pos, window=None):
    """float64 causal GQA from the definition, one query row and head at a time."""
    T, nh, D = q.shape
    nkv = k.shape[0]
    out = np.zeros((T, nh, D))
    for t in range(T):
        for h in range(nh):
            kv = h // (nh // nkv)
            vis = (k_pos <= q_pos[t]) & ((k_pos > q_pos[t] - window) if window else True)
            s = (k[kv][vis].astype(np.float64) @ q[t, h].astype(np.float64)) / np.sqrt(D)
            p = np.exp(s - s.max())
            out[t, h] = p @ v[kv][vis].astype(np.float64) / p.sum()
    return out


def kv_views(nkv, D, S, seed):
    rng = np.random.default_rng(seed)
    kc = rng.standard_normal((nkv, CACHE, D)).astype(np.float32) * 2
    vc = rng.standard_normal((nkv, CACHE, D)).astype(np.float32)
    return kc[:, :S], vc[:, :S], rng


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("S", [1, 2, 15, 16, 17, 100, 301])
def test_decode_matches_numpy(attn, spec, S):
    D, nh, nkv = spec
    k, v, rng = kv_views(nkv, D, S, S)
    q = rng.standard_normal((1, nh, D)).astype(np.float32)
    qp, kp = np.array([S - 1]), np.arange(S)
    calls = attn.calls
    got = attn(q, k, v, qp, kp)
    assert attn.calls == calls + 1 and got.shape == (1, nh, D)
    np.testing.assert_allclose(got, attention(q, k, v, qp, kp), rtol=1e-5, atol=3e-6)
    np.testing.assert_allclose(got, ref64(q, k, v, qp, kp), rtol=1e-5, atol=3e-6)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("T,past", [(2, 0), (7, 0), (33, 0), (5, 60), (40, 261)])
@pytest.mark.parametrize("window", [None, 4, 17])
def test_prefill_matches_numpy(attn, spec, T, past, window):
    D, nh, nkv = spec
    S = past + T
    k, v, rng = kv_views(nkv, D, S, T * 1000 + past)
    q = rng.standard_normal((T, nh, D)).astype(np.float32)
    qp, kp = np.arange(past, S), np.arange(S)
    got = attn(q, k, v, qp, kp, window)
    assert got is not None
    np.testing.assert_allclose(got, attention(q, k, v, qp, kp, window), rtol=1e-5, atol=3e-6)
    np.testing.assert_allclose(got, ref64(q, k, v, qp, kp, window), rtol=1e-5, atol=3e-6)


@pytest.mark.parametrize("start", [0, 37])
@pytest.mark.parametrize("window", [1, 5, 16, 50, 1000])
def test_decode_sliding_window_and_offset_positions(attn, start, window):
    """Decode with more keys than the window (the kernel gets the visible range as a view), and keys that start at
    a later position than 0 (the engine's window view of the cache)."""
    D, nh, nkv = 64, 8, 4
    S = 90
    k, v, rng = kv_views(nkv, D, S, window)
    q = rng.standard_normal((1, nh, D)).astype(np.float32)
    kp = np.arange(start, start + S)
    qp = np.array([start + S - 1])
    got = attn(q, k, v, qp, kp, window)
    np.testing.assert_allclose(got, ref64(q, k, v, qp, kp, window), rtol=1e-5, atol=3e-6)


def test_softmax_is_stable_for_large_scores(attn):
    """Scores of +-1e4 (exp overflows without the running maximum) and one dominant key."""
    D, nh, nkv = 32, 4, 4
    k, v, rng = kv_views(nkv, D, 50, 9)
    k = k * 300
    q = rng.standard_normal((3, nh, D)).astype(np.float32) * 30
    qp, kp = np.arange(47, 50), np.arange(50)
    got = attn(q, k, v, qp, kp)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref64(q, k, v, qp, kp), rtol=0, atol=1e-5)


def test_unfit_calls_return_none(attn):
    D, nh, nkv = 64, 8, 4
    k, v, rng = kv_views(nkv, D, 10, 1)
    q = rng.standard_normal((1, nh, D)).astype(np.float32)
    assert attn(q[:, :4], k[:2], v[:2], np.array([9]), np.arange(10)) is None  # (64, 4, 2) not compiled
    assert attn(q, k[:, ::2], v[:, ::2], np.array([9]), np.arange(5)) is None  # key rows not contiguous
    assert attn(q, k, v, np.array([9]), np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 30])) is None  # not consecutive
    assert attn(q, k.astype(np.float64), v, np.array([9]), np.arange(10)) is None
    assert any("no attention kernel" in r for r in attn.fallbacks)


def test_table_routes_attention(attn):
    """TvmAttention.table() gives a kernel table whose attention (the engine's entry point) uses the kernel; a call
    it cannot take runs the numpy reference; the REFERENCE table and kernels.attention.attention stay numpy-only."""
    assert not hasattr(attention_mod, "ATTENTION") and REFERENCE.attention_kernel is None
    D, nh, nkv = 64, 16, 4
    k, v, rng = kv_views(nkv, D, 40, 2)
    q = rng.standard_normal((1, nh, D)).astype(np.float32)
    want = attention(q, k, v, np.array([39]), np.arange(40))
    table = attn.table()
    assert table.attention_kernel is attn and table.linear_kernels == REFERENCE.linear_kernels
    n = attn.calls
    got = table.attention(q, k, v, np.array([39]), np.arange(40))
    assert attn.calls == n + 1
    np.testing.assert_allclose(got, want, atol=2e-6)
    q2 = rng.standard_normal((1, 2, D)).astype(np.float32)  # (64, 2, 1): no kernel -> numpy
    k2, v2 = k[:1], v[:1]
    np.testing.assert_allclose(table.attention(q2, k2, v2, np.array([39]), np.arange(40)),
                               ref64(q2, k2, v2, np.array([39]), np.arange(40)), atol=2e-6)
    assert attn.calls == n + 1
    REFERENCE.attention(q, k, v, np.array([39]), np.arange(40))
    attention(q, k, v, np.array([39]), np.arange(40))
    assert attn.calls == n + 1 and REFERENCE.attention_kernel is None


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_engine_logits_with_tvm_attention(tmp_path, arch):
    """A whole tiny model (GQA; mistral with a sliding window shorter than the sequence): prefill + decode logits
    with the compiled attention equal the numpy engine's, and the kernel took every attention call."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import tiny_models
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.hf import open_hf
    from edgespool.kernels.tvm_backend import TvmAttention
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.runtime.decoder.engine import Engine
    from edgespool.runtime.decoder.weights import ResidentWeights

    kw = {"sliding_window": 6} if arch == "mistral" else {}
    hf = tiny_models.make_hf_model(arch, tmp_path / "hf", tokenizer="bpe", **kw)
    out = export_model(open_hf(hf), tmp_path / "b", policy=QuantPolicy(quant="f32"), onnx=False, kernels=False,
                       progress=False).path
    src = ResidentWeights(Bundle(out))
    eng = Engine(src)
    c = eng.config
    assert c.num_heads > c.num_kv_heads and (arch != "mistral" or c.sliding_window == 6)
    ids = list(range(3, 20))

    def run(e):
        full = e.forward(ids, e.new_cache(len(ids)))
        cache = e.new_cache(len(ids))
        e.forward(ids[:-3], cache)
        return full, [e.forward([t], cache)[-1] for t in ids[-3:]]

    want, want_dec = run(eng)
    ta = TvmAttention.for_host([AttentionSpec(c.head_dim, c.num_heads, c.num_kv_heads)], cache_dir=tmp_path / "kc")
    got, got_dec = run(Engine(src, ta.table()))
    again, _ = run(eng)  # the numpy engine is unaffected by the other engine's table
    np.testing.assert_array_equal(again, want)
    assert ta.calls == 5 * c.num_layers and not ta.fallbacks
    tol = 1e-4 * np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=tol)
    np.testing.assert_allclose(np.array(got_dec), np.array(want_dec), atol=tol)
    np.testing.assert_allclose(np.array(got_dec), want[-3:], atol=tol)



def test_load_uses_bundle_attention_against_transformers(tmp_path):
    """edgespool.load of a bundle exported with kernels routes attention through the bundle's library (in the model's
    own kernel table; loading with kernels=False in the same process gives numpy attention); the logits of a GQA
    mistral with a sliding window shorter than the prompt match transformers."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import tiny_models
    import edgespool
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.hf import open_hf

    hf = tiny_models.make_hf_model("mistral", tmp_path / "hf", tokenizer="bpe", sliding_window=5)
    out = export_model(open_hf(hf), tmp_path / "b", policy=QuantPolicy(quant="f16"), onnx=False, kernels=True,
                       kernel_activations="f32", progress=False).path
    ids = list(range(3, 21))
    with edgespool.load(out) as m, edgespool.load(out, kernels=False) as plain:
        ta = m.kernels.backend.attention
        assert ta is not None and m.kernels.attention_kernel is ta and m.engine.kernels is m.kernels
        assert plain.kernels.attention_kernel is None and "disabled" in plain.kernels.description
        got = m.logits(ids)
        assert ta.calls == m.config.num_layers and not ta.fallbacks
        plain.logits(ids)
        assert ta.calls == m.config.num_layers
    want = tiny_models.hf_logits(hf, ids)
    assert np.abs(got - want).max() / np.abs(want).max() < 2e-3  # f16 weights

def test_bundle_kernels_carry_attention(tmp_path):
    """The kernels exporter compiles the attention library into the bundle's kernels/ (listed under "attention"),
    from_dir loads it, table() routes both linear and attention (the REFERENCE table stays numpy-only)."""
    from edgespool.exporters.kernels_export import build_kernels_for_bundle
    from edgespool.kernels.tvm_backend import TvmKernels
    from edgespool.runtime.bundle.config import ModelConfig
    from edgespool.targets import get_target

    cfg = ModelConfig(arch="llama", vocab_size=64, hidden_size=128, intermediate_size=256, num_layers=1,
                      num_heads=8, num_kv_heads=2, head_dim=16)
    meta = {n: {"scheme": "int8", "shape": list(s)} for n, s in cfg.tensor_shapes().items()
            if len(s) == 2 and n != "embed"}
    sec = build_kernels_for_bundle(cfg, meta, get_target("host"), tmp_path / "k", cache_dir=tmp_path / "c")
    assert [e["spec"] for e in sec["attention"]] == [AttentionSpec(16, 8, 2).to_dict()]
    assert (tmp_path / "k" / sec["attention"][0]["file"]).exists()
    assert all("act" in e["spec"] for e in sec["kernels"])  # linear entries unchanged
    again = build_kernels_for_bundle(cfg, meta, get_target("host"), tmp_path / "k2", cache_dir=tmp_path / "c")
    assert again["attention"][0]["cached"] and again["compile_seconds"] == 0
    tk = TvmKernels.from_dir(tmp_path / "k")
    assert tk.attention is not None and tk.attention.specs == [AttentionSpec(16, 8, 2)]
    lin = dict(REFERENCE.linear_kernels)
    table = tk.table()
    assert table.attention_kernel is tk.attention and table.backend is tk
    assert all(table.linear_kernels[s].fallback is lin[s] for s in ("int8", "int4", "f16"))
    k, v, rng = kv_views(2, 16, 20, 3)
    q = rng.standard_normal((4, 8, 16)).astype(np.float32)
    got = table.attention(q, k, v, np.arange(16, 20), np.arange(20))
    assert tk.attention.calls == 1
    np.testing.assert_allclose(got, ref64(q, k, v, np.arange(16, 20), np.arange(20)), atol=2e-6)
    assert REFERENCE.attention_kernel is None and dict(REFERENCE.linear_kernels) == lin


def _elf_machine(path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


@pytest.mark.parametrize("target", ["rpi4", "rpi5"])
def test_aarch64_attention_compiles(tmp_path, target):
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed (apt-get install gcc-aarch64-linux-gnu)")
    from edgespool.kernels.tvm_cache import compile_kernel
    from edgespool.targets import get_target

    t = get_target(target)
    k = compile_kernel(AttentionSpec(64, 8, 2), t.tvm_target, cc=t.cross_cc, cache_dir=tmp_path)
    assert _elf_machine(k.path) == 183  # EM_AARCH64


def test_cuda_attention_source_and_fatbin(tmp_path):
    """sm_87 (Orin): CUDA C with both kernels, a fatbin when nvcc is here, and a launch record per kernel (not run:
    no GPU in CI)."""
    from edgespool.kernels.tvm_cache import compile_kernel
    from edgespool.targets import get_target

    g = get_target("jetson-orin-nano").gpu
    k = compile_kernel(AttentionSpec(64, 8, 2), g.tvm_target, cache_dir=tmp_path)
    src = (k.directory / "kernel.cu").read_text()
    assert set(k.launch["kernels"]) == {"decode", "prefill"}
    assert all(f"__global__ void {e['kernel']}(" in re.sub(r"__launch_bounds__\(\d+\) ", "", src)
               for e in k.launch["kernels"].values())
    names = {p["name"] for p in k.launch["kernels"]["prefill"]["params"]}
    assert {"q", "K", "V", "o", "scale", "past", "window"} <= names
    if shutil.which("nvcc"):
        assert "kernel.fatbin" in k.files and (k.directory / "kernel.fatbin").stat().st_size > 0


_RIG_SCRIPT = r'''
import json, sys
from pathlib import Path
import numpy as np
from edgespool.kernels.tvm_backend import TvmKernels
d = Path(sys.argv[1])
tk = TvmKernels.from_dir(d / "kernels")
worst = 0.0
n = 0
for f in sorted(d.glob("case_*.npz")):
    c = np.load(f)
    w = int(c["window"])
    got = tk.attention(c["q"], c["k"], c["v"], c["qp"], c["kp"], w or None)
    worst = max(worst, float(np.abs(got - c["want"]).max()))
    n += 1
print(json.dumps({"cases": n, "calls": tk.attention.calls, "fallbacks": tk.attention.fallbacks, "worst": worst}))
'''


@pytest.mark.arm64
@pytest.mark.slow
def test_rpi5_attention_in_arm64_rig(tmp_path):
    """The rpi5 export's attention library runs under qemu (cortex-a76, NEON 4-lane dots) and matches float64."""
    from edgespool.exporters.kernels_export import build_kernels_for_bundle
    from edgespool.runtime.bundle.config import ModelConfig
    from edgespool.targets import get_target

    from conftest import require_arm64_rig

    require_arm64_rig()  # builds the rig once (cached), or skips saying why it cannot be built here
    cfg = ModelConfig(arch="llama", vocab_size=64, hidden_size=128, intermediate_size=256, num_layers=1,
                      num_heads=8, num_kv_heads=2, head_dim=16)
    meta = {n: {"scheme": "int8", "shape": list(s)} for n, s in cfg.tensor_shapes().items()
            if len(s) == 2 and n != "embed"}
    case = tmp_path / "case"
    build_kernels_for_bundle(cfg, meta, get_target("rpi5"), case / "kernels", cache_dir=tmp_path / "c")
    for S, T, window in ((1, 1, 0), (37, 1, 0), (37, 1, 9), (50, 13, 0), (50, 13, 5)):
        k, v, rng = kv_views(2, 16, S, S + T)
        q = rng.standard_normal((T, 8, 16)).astype(np.float32)
        qp, kp = np.arange(S - T, S), np.arange(S)
        np.savez(case / f"case_{S}_{T}_{window}.npz", q=q, k=np.ascontiguousarray(k), v=np.ascontiguousarray(v),
                 qp=qp, kp=kp, window=window, want=ref64(q, k, v, qp, kp, window or None).astype(np.float32))
    (tmp_path / "check.py").write_text(_RIG_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "edgespool", "rig", "run", "--profile", "rpi5", "--arch", "arm64",
                        "--", "python3", str(tmp_path / "check.py"), str(case)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    if "No module named 'tvm_ffi'" in r.stderr:
        pytest.skip("the arm64 rig has no TVM runtime (edgespool rig arm64 setup with apache-tvm)")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["cases"] == 5 and res["calls"] == 5 and not res["fallbacks"] and res["worst"] <= 2e-6, res


@pytest.mark.gpu
def test_cuda_attention_on_gpu(tmp_path):
    """The CUDA kernels (NVRTC from the source for this GPU) vs the numpy reference; skipped without a GPU."""
    cp = pytest.importorskip("cupy")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - no driver / no device
        pytest.skip("no CUDA device")
    from edgespool.kernels.cuda_attention import check_entry
    from edgespool.kernels.tvm_cache import compile_kernel

    k = compile_kernel(AttentionSpec(64, 8, 2), {"kind": "cuda", "arch": "sm_87"}, cache_dir=tmp_path)
    rows = check_entry(k.directory, iters=1)
    assert len(rows) == 7 and all(r["max_abs_err"] < 1e-5 for r in rows), rows
