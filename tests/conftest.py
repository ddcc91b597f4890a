"""Shared fixtures: small synthetic bundles (no torch needed)."""
from __future__ import annotations

import pytest

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
