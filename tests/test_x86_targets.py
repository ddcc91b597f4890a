"""x86 edge targets (issue 12: the AVX2 kernels end to end): the ``x86-avx2`` and ``intel-n100`` profiles, and the
rule that kernels compiled for an x86 mcpu run on any CPU with that mcpu's instruction sets (an AVX2 export on an
AVX-512 machine), refused with a one-line reason naming the missing flag otherwise.

The end-to-end check exports a small model for ``x86-avx2`` and runs its C kernels here (every x86 CI machine has
AVX2), against the numpy reference of the same bundle."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from edgespool.exporters.compress import QuantPolicy
from edgespool.exporters.export import export_model
from edgespool.exporters.synth import synth_demo_model
from edgespool.runtime import api
from edgespool.targets import get_target
from edgespool.targets import host as host_mod

X86 = {"mtriple": "x86_64-linux-gnu"}


def _fake_host(monkeypatch, cpu: str, features: tuple[str, ...]) -> None:
    real = get_target("host")
    fake = dataclasses.replace(real, isa="x86_64", cpu=cpu, features=features)
    monkeypatch.setattr(host_mod, "detect_host", lambda: fake)


@pytest.mark.parametrize("mcpu,cpu,features,fits", [
    ("x86-64-v3", "znver4", ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni"), True),
    ("alderlake", "znver4", ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni"), True),
    ("znver3", "cascadelake", ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"), True),
    ("x86-64-v3", "znver3", ("avx2", "fma"), True),
    ("znver4", "znver3", ("avx2", "fma"), False),  # AVX-512 kernels on an AVX2-only CPU: illegal instructions
    ("alderlake", "znver3", ("avx2", "fma"), False),  # AVX-VNNI missing
    ("x86-64-v3", "x86-64", (), False),
    ("tigerlake", "znver4", ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"), False),  # untabled
])
def test_x86_kernels_fit_by_instruction_sets(monkeypatch, mcpu, cpu, features, fits):
    _fake_host(monkeypatch, cpu, features)
    why = api.kernels_misfit({**X86, "mcpu": mcpu})
    if fits:
        assert why is None
    else:
        assert why and mcpu in why and "\n" not in why and "--target host" in why
        if mcpu == "alderlake":
            assert "avx_vnni" in why


def test_x86_profiles_listed_with_their_features():
    for name, mcpu, feats in (("x86-avx2", "x86-64-v3", {"avx2", "fma"}),
                              ("intel-n100", "alderlake", {"avx2", "fma", "avx_vnni"})):
        p = get_target(name)
        assert p.isa == "x86_64" and p.cpu == mcpu and p.tvm_target["mcpu"] == mcpu and set(p.features) == feats
        assert "avx512f" not in p.features


def test_avx2_export_runs_its_kernels_here(tmp_path):
    host = get_target("host")
    if host.isa != "x86_64" or not {"avx2", "fma"} <= set(host.features):
        pytest.skip("needs an x86-64 CPU with AVX2 and FMA")
    src = synth_demo_model(seed=3, hidden=64, layers=2, experts=4, top_k=2, moe_intermediate=64, heads=4,
                           kv_heads=2)
    b = export_model(src, tmp_path / "b", target="x86-avx2", policy=QuantPolicy(quant="int8", group_size=32),
                     onnx=False, kernels=True, progress=False)
    m = api.load(b.path, n_threads=2)
    ref = api.load(b.path, kernels=False)
    try:
        d = m.kernels.description
        assert "avx2+x16" in d and "for x86-avx2" in d, d  # the bundle's AVX2 build ran, not the numpy fallback
        ids = [5, 9, 11, 3, 200, 17, 42]
        got, want = m.logits(ids), ref.logits(ids)
        scale = float(np.abs(want).max())
        assert float(np.abs(got - want).max()) <= 2e-2 * scale  # q8-rounded activations vs float (int8 weights)
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.7
    finally:
        m.close()
        ref.close()
