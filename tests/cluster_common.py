"""Shared by the cluster tests: why an MPI / emulated-board test cannot run here, and the check that a chain of
pipeline stages follows a single board's logits step by step."""
from __future__ import annotations

import shutil
from typing import Sequence

import numpy as np


def mpirun_reason() -> str | None:
    """Why mpirun-launched tests cannot run here (None: they can)."""
    if shutil.which("mpirun") is None:
        return "mpirun not installed (apt openmpi-bin)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py not installed (pip install edgespool[cluster])"
    return None


def netns_reason() -> str | None:
    """Why tests with emulated boards (mpirun across network namespaces) cannot run here (None: they can)."""
    from edgespool.apps.cluster.boards import netns_reason as why_not

    return mpirun_reason() or why_not()


def assert_stages_follow(stages: Sequence, caches: Sequence, inputs: Sequence[Sequence[int]],
                         want: Sequence[np.ndarray], tol: float, *, last_only: bool = True) -> None:
    """Feed each input (the prompt, then one token per step) through the stages in turn and compare the last
    stage's logits with the single board's ``want`` (rtol = atol = ``tol``) and their greedy token;
    ``last_only=False`` keeps every position's logits on the last stage too."""
    for inp, w in zip(inputs, want):
        x = np.asarray(inp, np.int64)
        for s, c in zip(stages, caches):
            x = s.step(x, c, last_only=last_only and s.last)
        np.testing.assert_allclose(x, w, rtol=tol, atol=tol)
        assert int(np.argmax(x[-1])) == int(np.argmax(w[-1]))
