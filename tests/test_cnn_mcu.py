"""MCU C export: host-gcc build runs bit-exactly like the numpy int8 executor (itself checked against
onnxruntime); Cortex-M build sizes; flash / SRAM / budget errors with numbers; `edgespool plan` CLI."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgespool.errors import BudgetError
from edgespool.exporters.cnn.from_pth import mobilenet_v2_graph
from edgespool.exporters.cnn.mcu_c import compile_host, export_c_project, run_host
from edgespool.runtime.cnn.executor import CnnRunner
from edgespool.runtime.cnn.calibrate import calibrate_and_quantize
from edgespool.schedulers.patch_plan import cut_points, make_plan, plan_patches
from edgespool.targets import get_target

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                               reason="arm-none-eabi-gcc not installed (apt-get install gcc-arm-none-eabi)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    import cnn_torch_ref as ref
    from edgespool.exporters.cnn.from_onnx import load_onnx_cnn

    torch.manual_seed(0)
    p = ref.export_onnx(ref.TinyAllOps(), tmp_path_factory.mktemp("t") / "tiny.onnx", (1, 3, 32, 32))
    g = load_onnx_cnn(p)
    rng = np.random.default_rng(0)
    q = calibrate_and_quantize(g, [rng.standard_normal((3, 32, 32)).astype(np.float32) for _ in range(4)])
    x = rng.standard_normal((3, 32, 32)).astype(np.float32)
    s = ort.InferenceSession(str(p))
    return g, q, x, s.run(None, {s.get_inputs()[0].name: x[None]})[0][0]


@needs_gcc
@pytest.mark.parametrize("kernels", ["s8", "plain"])
def test_c_host_bit_exact_every_split(tiny, tmp_path, kernels):
    g, q, x, ort_out = tiny
    want = CnnRunner(g, q).run_layers(x).output
    assert np.abs(want - ort_out).max() < 0.1 * np.abs(ort_out).max()  # int8 close to the f32 ORT reference
    s, z = q.tensors[g.output]
    for split in [-1, *cut_points(g)]:
        plan = make_plan(g, split, (2, 2) if split >= 0 else (1, 1))
        d = tmp_path / f"p{split}"
        proj = export_c_project(g, q, plan, get_target("mcu-m4"), d, compile_arm=False, kernels=kernels)
        assert proj.arena_bytes >= plan.peak_bytes
        y = run_host(compile_host(d), q.quantize_input(x), d)
        np.testing.assert_array_equal((y.astype(np.float32) - z) * np.float32(s), want)


@needs_arm
def test_cortex_m_build_in_a_relative_folder(tiny, tmp_path, monkeypatch):
    """``export -o rel/dir``: the compilers run inside the project folder, so a relative project path used to be
    doubled (``cannot open output file rel/dir/model.elf``)."""
    g, q, x, _ = tiny
    monkeypatch.chdir(tmp_path)
    proj = export_c_project(g, q, plan_patches(g, max_overhead=1.0), get_target("mcu-m7"), Path("rel") / "m7")
    assert proj.arm_sizes[".text"] > 1000 and (tmp_path / "rel" / "m7" / "model.elf").is_file()
    exe = compile_host(Path("rel") / "m7")
    assert exe.is_absolute() and exe.is_file()


@needs_arm
def test_cortex_m_build_sizes(tiny, tmp_path):
    g, q, x, _ = tiny
    plan = plan_patches(g, max_overhead=1.0)
    proj = export_c_project(g, q, plan, get_target("mcu-m7"), tmp_path / "m7")
    sz = proj.arm_sizes
    assert sz[".text"] > 1000 and sz[".bss"] >= proj.arena_bytes
    assert sz[".rodata"] >= proj.flash_weights_bytes
    info = json.loads((tmp_path / "m7" / "model_info.json").read_text())
    assert info["arm_sizes"][".bss"] == sz[".bss"]


def test_flash_overflow_names_numbers(tmp_path):
    g = mobilenet_v2_graph(None, width=1.0, resolution=96)  # 3.5 M int8 weights > 1 MiB flash
    q = calibrate_and_quantize(g, [np.zeros((3, 96, 96), np.float32)])
    with pytest.raises(BudgetError, match=r"flash.*mcu-m7 has 1048576 B"):
        export_c_project(g, q, plan_patches(g), get_target("mcu-m7"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_sram_overflow_names_numbers(tiny, tmp_path):
    g, q, _, _ = tiny
    small = dataclasses.replace(get_target("mcu-m4"), ram=4096)
    with pytest.raises(BudgetError, match=r"arena needs \d+ B.*4096 B"):
        export_c_project(g, q, make_plan(g, -1, (1, 1)), small, tmp_path / "y", compile_arm=False)


@needs_arm
@pytest.mark.slow
def test_export_cnn_mcu_bundle(tmp_path):
    """A MobileNetV2 that fits an M7 (width 0.35, 96x96, 10 classes, random weights): bundle + C project."""
    from edgespool.exporters.cnn.export import export_cnn
    import torch

    g = mobilenet_v2_graph(None, width=0.35, resolution=96, num_classes=10)
    assert g.param_count() < 1_000_000
    sd = {}
    from edgespool.exporters.cnn.from_pth import _random_state

    for k, v in _random_state(0.35, 10, 0).items():
        sd[k] = torch.from_numpy(v)
    torch.save(sd, tmp_path / "mbv2_035.pth")
    b = export_cnn(tmp_path / "mbv2_035.pth", "mcu-m7", tmp_path / "bundle", width=0.35, resolution=96)
    m = json.loads((b / "manifest.json").read_text())
    mcu = m["cnn"]["mcu"]
    assert mcu["arena_bytes"] <= 320 * 1024 and mcu["arm_sizes"][".bss"] >= mcu["arena_bytes"]
    assert (b / "mcu" / "model.elf").exists()


def test_plan_cli(tmp_path):
    from edgespool.apps.cli import cli
    torch = pytest.importorskip("torch")
    from edgespool.exporters.cnn.from_pth import _random_state

    torch.save({k: torch.from_numpy(v) for k, v in _random_state(0.35, 1000, 0).items()}, tmp_path / "m.pth")
    r = CliRunner().invoke(cli, ["plan", str(tmp_path / "m.pth"), "--width", "0.35", "--resolution", "144",
                                 "--max-overhead", "15%", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["peak_bytes"] < d["layer_peak_bytes"] and d["extra_macs_pct"] <= 15
    r = CliRunner().invoke(cli, ["plan", str(tmp_path / "m.pth"), "--width", "0.35", "--resolution", "144",
                                 "--activation-budget", "1KiB"])
    assert r.exit_code == 1 and "too small" in r.output
    r = CliRunner().invoke(cli, ["plan", str(tmp_path / "m.pth"), "--width", "0.5"])
    assert r.exit_code == 1 and "wrong --width" in r.output
