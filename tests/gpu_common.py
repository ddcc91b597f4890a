"""Shared by the GPU tests: CuPy and a CUDA device, or a skip that says which is missing."""
from __future__ import annotations

import pytest


def cupy_or_skip():
    """The ``cupy`` module when CuPy and a CUDA device are usable (``offload.gpu_ops.gpu_status``); else skip."""
    from edgespool.offload.gpu_ops import gpu_status

    cp, why = gpu_status()
    if cp is None:
        pytest.skip(why)
    return cp
