"""Kernels are per model (edgespool.kernels.table.KernelTable), not process-global: two models with different
kernels live in one process, generate interleaved and close in any order, and each one's greedy tokens and logits
are bit-identical to that model running alone; the memory plan reserves the model's own kernels' workspace."""
from __future__ import annotations

import numpy as np
import pytest

import edgespool
from edgespool.kernels import linear as linear_mod
from edgespool.kernels import quant
from edgespool.kernels.table import REFERENCE, KernelTable
from edgespool.runtime.bundle.reader import Bundle

from conftest import SMALL, make_synth_bundle

PROMPT = [1, 5, 9, 14, 3, 22, 7, 11, 30, 2, 17, 8]
LOGIT_IDS = [1, 4, 19, 6, 25, 13, 2, 40]
N = 10


class CountingKernels:
    """A kernel table made here: the product in float64 from the whole dequantised matrix, rounded to float32 (not
    the reference's float32 BLAS result) for int8/int4/f16, counting its calls, declaring ``workspace``."""

    def __init__(self, workspace: int = 0) -> None:
        self.calls = 0
        self.workspace_bytes = workspace

    def __call__(self, x: np.ndarray, w: quant.QTensor) -> np.ndarray:
        self.calls += 1
        return (np.asarray(x, np.float64) @ w.dequantize().astype(np.float64).T).astype(np.float32)

    def table(self) -> KernelTable:
        lin = dict(REFERENCE.linear_kernels)
        lin.update({s: self for s in ("int8", "int4", "f16")})
        return KernelTable(lin, None, "counting test kernels", backend=self)


def run_alone(path, kernels) -> tuple[list[int], np.ndarray, str]:
    with edgespool.load(path, kernels=kernels) as m:
        toks = list(m.generate_ids(PROMPT, N, stop=[]))
        return toks, m.logits(LOGIT_IDS), m.kernels.description


def check_pair(path_a, kern_a, path_b, kern_b) -> None:
    """Models A and B (own kernels each) against their solo runs: generation interleaved token by token, the other
    model's logits computed in between, and every close order (A first, B first, A closed while B is
    mid-generation)."""
    want_a = run_alone(path_a, kern_a)
    want_b = run_alone(path_b, kern_b)

    def check(m, want, toks):
        assert toks == want[0] and m.kernels.description == want[2]
        np.testing.assert_array_equal(m.logits(LOGIT_IDS), want[1])

    for order in ("a_first", "b_first", "a_mid"):
        a = edgespool.load(path_a, kernels=kern_a)
        b = edgespool.load(path_b, kernels=kern_b)
        try:
            assert a.kernels is not b.kernels and a.engine.kernels is a.kernels and b.engine.kernels is b.kernels
            ga, gb = a.generate_ids(PROMPT, N, stop=[]), b.generate_ids(PROMPT, N, stop=[])
            ta, tb = [], []
            for step in range(N):
                ta.append(next(ga))
                tb.append(next(gb))
                if step == 2:  # a whole forward pass of each model while both are mid-generation
                    np.testing.assert_array_equal(b.logits(LOGIT_IDS), want_b[1])
                    np.testing.assert_array_equal(a.logits(LOGIT_IDS), want_a[1])
                if order == "a_mid" and step == N // 2:
                    ta += list(ga)
                    check(a, want_a, ta)
                    a.close()  # B is mid-generation: it goes on with its own kernels
                    tb += list(gb)
                    check(b, want_b, tb)
                    break
            if order == "a_first":
                check(a, want_a, ta)
                a.close()
                check(b, want_b, tb)  # B still runs its own kernels after A closed
            elif order == "b_first":
                check(b, want_b, tb)
                b.close()
                check(a, want_a, ta)
        finally:
            a.close()
            b.close()


def test_no_process_global_kernel_registry():
    import edgespool.kernels as kernels_pkg
    from edgespool.kernels import attention as attention_mod

    for mod in (kernels_pkg, linear_mod, attention_mod):
        assert not hasattr(mod, "KERNELS") and not hasattr(mod, "ATTENTION"), mod.__name__
    assert not hasattr(linear_mod, "kernel_workspace_bytes")
    import edgespool.runtime.api as api

    assert not hasattr(api, "KernelRoute") and not hasattr(api, "install_bundle_kernels")
    with pytest.raises(TypeError):
        REFERENCE.linear_kernels["int8"] = None  # type: ignore[index]


def test_two_models_with_different_kernels_interleave_and_close_in_any_order(tmp_path):
    """int8 bundle with the numpy reference vs an int4 bundle with the counting kernels (no TVM needed)."""
    a = make_synth_bundle(tmp_path / "a", quant="int8").path
    b = make_synth_bundle(tmp_path / "b", quant="int4", seed=1).path
    ck = CountingKernels()
    table = ck.table()
    check_pair(a, False, b, table)
    check_pair(b, table, a, False)
    # the same bundle with two kernel tables: the tables really compute differently, each stays its own
    with edgespool.load(a, kernels=False) as ref, edgespool.load(a, kernels=table) as other:
        n = ck.calls
        lr = ref.logits(LOGIT_IDS)
        assert ck.calls == n  # the reference model never calls the other model's kernel
        lo = other.logits(LOGIT_IDS)
        assert ck.calls > n
        assert not np.array_equal(lr, lo) and np.allclose(lr, lo, atol=1e-3)
    assert "compiled kernels disabled" in run_alone(a, False)[2]


def test_plan_reserves_the_models_own_kernel_workspace(tmp_path):
    """The streaming plan is built after the kernels are resolved: a table whose kernels declare a larger scratch
    gets a larger workspace in its model's plan, and the other model's plan is unchanged."""
    from edgespool.schedulers.memory_plan import minimum_budget, plan_memory, workspace_bytes
    from edgespool.targets import get_target

    path = make_synth_bundle(tmp_path / "s", quant="int8").path
    bundle = Bundle(path)
    big = 24 << 20
    table = CountingKernels(workspace=big).table()
    assert table.workspace_bytes() == big and REFERENCE.workspace_bytes() == linear_mod.reference_workspace_bytes()
    cfg = bundle.config
    extra = workspace_bytes(cfg, bundle, 8, 64, kernels=table) - workspace_bytes(cfg, bundle, 8, 64)
    assert extra == big - REFERENCE.workspace_bytes()
    assert workspace_bytes(cfg, bundle, 8, 64, kernel_workspace=big) == workspace_bytes(cfg, bundle, 8, 64,
                                                                                         kernels=table)
    kw = dict(max_context=32, max_batch_tokens=8)
    budget = minimum_budget(bundle, get_target("host"), kernels=table, **kw) + (4 << 20)
    with edgespool.load(path, memory_budget=budget, kernels=table, **kw) as m, \
            edgespool.load(path, memory_budget=budget, kernels=False, **kw) as r:
        assert m.source.plan.workspace_bytes - r.source.plan.workspace_bytes == extra
        assert m.source.plan.workspace_bytes == plan_memory(bundle, get_target("host"), budget, kernels=table,
                                                            **kw).workspace_bytes
        assert m.source.kernels is m.kernels and r.source.kernels.description == r.kernels.description
        n = table.backend.calls
        toks = list(m.generate_ids(PROMPT[:4], 3, stop=[]))
        assert table.backend.calls > n
        n = table.backend.calls
        assert list(r.generate_ids(PROMPT[:4], 3, stop=[])) and table.backend.calls == n
    assert len(toks) == 3
    with pytest.raises(edgespool.BudgetError):
        # the reference model's minimum does not fit the bigger scratch
        plan_memory(bundle, None, minimum_budget(bundle, None, **kw), kernels=table, **kw)


# -- compiled TVM kernels -------------------------------------------------------------------------------------------
def _export_with_kernels(path, quant_scheme: str, activations: str, seed: int = 0, group_size: int = 32):
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.synth import synth_demo_model

    return export_model(synth_demo_model(seed=seed, **SMALL), path,
                        policy=QuantPolicy(quant=quant_scheme, group_size=group_size),
                        onnx=False, kernels=True, kernel_activations=activations, progress=False).path


@pytest.fixture(scope="module")
def tvm_bundles(tmp_path_factory):
    pytest.importorskip("tvm", reason="apache-tvm not installed")
    d = tmp_path_factory.mktemp("tvm_tables")
    # int8: the C block kernels (+ TVM attention); int4 g64: TVM linear kernels (no g64 block kernel)
    out = {"int8": _export_with_kernels(d / "int8", "int8", "f32"),
           "int4": _export_with_kernels(d / "int4", "int4", "q8", seed=1, group_size=64)}
    for q, p in out.items():
        with edgespool.load(p) as m:
            if m.kernels.backend is None:
                pytest.skip(f"the {q} bundle's compiled kernels do not load here: {m.kernels.description}")
    return out


@pytest.mark.tvm
def test_tvm_model_and_numpy_model_side_by_side(tvm_bundles):
    """The same int8 bundle loaded with its TVM kernels and with kernels=False, interleaved, every close order:
    the TVM model keeps its compiled kernels whatever happens to the other (the old LIFO bug: load A, load B,
    close A -> B lost its kernels)."""
    path = tvm_bundles["int8"]
    from edgespool.kernels.c_blocks import BlockKernels, PrefillFirst
    from edgespool.kernels.tvm_backend import TvmAttention

    with edgespool.load(path) as m:
        tk = m.kernels.backend
        assert isinstance(tk, BlockKernels) and "C block kernels from the bundle" in m.kernels.description
        attn = m.kernels.attention_kernel  # the block kernels' threaded prefill attention first, TVM's after it
        assert isinstance(attn, PrefillFirst) and isinstance(attn.then, TvmAttention)
    check_pair(path, True, path, False)
    check_pair(path, False, path, True)
    a, b = edgespool.load(path), edgespool.load(path, kernels=False)
    try:
        ta, tb = a.kernels.backend, b.kernels.backend
        assert ta is not None and tb is None and b.kernels.attention_kernel is None
        n = ta.calls
        b.logits(LOGIT_IDS)
        assert ta.calls == n  # the numpy model does not run the TVM model's kernels
        a.logits(LOGIT_IDS)
        assert ta.calls > n
    finally:
        a.close()
        b.close()


@pytest.mark.tvm
def test_two_models_with_different_compiled_kernels(tvm_bundles):
    """An int8 export (C block kernels) and an int4 g64 export (TVM linear kernels), each with its own compiled
    linear + attention libraries, interleaved and closed in every order; loading B after A and closing A leaves
    B's compiled kernels running."""
    a_path, b_path = tvm_bundles["int8"], tvm_bundles["int4"]
    check_pair(a_path, True, b_path, True)
    a, b = edgespool.load(a_path), edgespool.load(b_path)
    ka, kb = a.kernels.backend, b.kernels.backend
    assert ka is not kb and ka.isa and {s.scheme for s in kb.specs} == {"int4"}
    a.close()
    n = kb.calls
    b.logits(LOGIT_IDS)
    assert kb.calls > n and b.engine.kernels.backend is kb
    b.close()
