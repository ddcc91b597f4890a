"""Shared helpers of the API / serving tests: the real SmolLM2-135M-Instruct GGUF exported once per session
(int8, C block kernels for this CPU; ~15 s), skipped when the asset is unavailable offline."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def fetched(name: str) -> Path:
    from edgespool.apps.assets import fetch

    try:
        return fetch(name)
    except Exception as e:  # offline and not cached
        if os.environ.get("CI"):
            raise
        pytest.skip(f"asset {name} unavailable: {e}")


def smol_bundle(tmp_path_factory) -> Path:
    """The int8 bundle of SmolLM2-135M-Instruct, exported once into this session's base temp folder."""
    out = tmp_path_factory.getbasetemp() / "smollm2-int8"
    if not (out / "manifest.json").exists():
        from edgespool.exporters.compress import QuantPolicy
        from edgespool.exporters.export import export_model, open_source

        src = open_source(str(fetched("smollm2-135m")))
        try:
            export_model(src, out, policy=QuantPolicy(quant="int8"), onnx=False, progress=False)
        finally:
            src.close()
    return out
