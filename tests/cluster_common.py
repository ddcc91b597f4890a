"""Shared by the cluster tests: why an MPI / emulated-board test cannot run here, the single board's greedy
reference, boards-as-threads allreduce, and the check that a chain of pipeline stages follows a single board's
logits step by step."""
from __future__ import annotations

import shutil
import threading
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


def greedy_reference(path, prompt: Sequence[int], steps: int) -> tuple[list[np.ndarray], list[int]]:
    """The single resident board (numpy reference kernels, f32 KV): the prompt's last logits, then ``steps``
    greedy tokens and the logits after each."""
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.runtime.decoder.engine import Engine
    from edgespool.runtime.decoder.weights import ResidentWeights

    ref = Engine(ResidentWeights(Bundle(path)), kv_dtype="f32")
    cache = ref.new_cache(64)
    want, toks = [ref.forward(prompt, cache, last_only=True)], []
    for _ in range(steps):
        toks.append(int(np.argmax(want[-1][-1])))
        want.append(ref.forward([toks[-1]], cache, last_only=True))
    return want, toks


class ThreadSum:
    """n boards in n threads: each allreduce sums the boards' arrays in rank order (barriers); ``calls`` counts
    the allreduces."""

    def __init__(self, n: int) -> None:
        self.bar, self.parts, self.out, self.calls = threading.Barrier(n), [None] * n, None, 0

    def of(self, r: int):
        """Board ``r``'s reduce function."""
        def reduce(x):
            self.parts[r] = np.array(x, np.float32)
            if self.bar.wait() == 0:
                self.out = sum(self.parts[1:], self.parts[0].copy())
                self.calls += 1
            self.bar.wait()
            o = self.out.copy()
            self.bar.wait()
            return o
        return reduce
