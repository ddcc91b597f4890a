"""Shared fixtures: small synthetic bundles (no torch needed)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `python -m pytest` from the repo root puts the root on sys.path, and the root IS the package: its folders
# (kernels/, runtime/, ...) would import as top-level modules, and transformers would take kernels/ for the
# `kernels` hub package (test_attention_tvm failed so). The installed `edgespool` does not need the root there.
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]

from edgespool.exporters.compress import QuantPolicy
from edgespool.exporters.export import export_model
from edgespool.exporters.synth import synth_demo_model

SMALL = dict(hidden=64, layers=2, experts=4, top_k=2, moe_intermediate=64, heads=4, kv_heads=2)


def make_synth_bundle(path, quant="f32", seed=0, onnx=False, **policy):
    src = synth_demo_model(seed=seed, **SMALL)
    return export_model(src, path, policy=QuantPolicy(quant=quant, **policy), onnx=onnx, kernels=False,
                        progress=False)


@pytest.fixture(scope="session")
def synth_bundle(tmp_path_factory):
    """A tiny Mixtral-style f32 bundle (2 layers, 4 experts) shared by read-only tests."""
    return make_synth_bundle(tmp_path_factory.mktemp("b") / "bundle").path


def arm64_skip_reason() -> str | None:
    """Why the arm64 qemu rig cannot be built here (None when it can)."""
    import os
    import shutil

    from edgespool.apps.rig import arm64

    if os.geteuid() != 0:
        return "needs root"
    for tool in ("debootstrap", "unshare", "chroot", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install qemu-user-static debootstrap)"
    if not os.path.exists(arm64.QEMU):
        return f"{arm64.QEMU} missing (apt-get install qemu-user-static)"
    return None


def require_arm64_rig(extras: tuple[str, ...] = ("apache-tvm",)):
    """Build (once, cached in ~/.cache/edgespool/arm64) the arm64 rig with ``extras`` for a test that runs
    cross-compiled kernels in it, or skip with the reason it cannot be built here."""
    import shutil

    from edgespool.apps.rig import arm64

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed (apt-get install gcc-aarch64-linux-gnu)")
    why = arm64_skip_reason()
    if why:
        pytest.skip(why)
    return arm64.setup(extras=extras)
