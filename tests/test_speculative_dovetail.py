"""Dovetail mode (issue 16 part 5): the draft model runs on the GPU through the CPU/GPU split executor
(``load(..., draft_gpu_memory=)`` / ``--draft-gpu-budget``), the target verifies on the CPU.

CI (no GPU): the stated one-line CPU fallback (CuPy/GPU reported missing through the executor's own probe), output
identical to plain greedy decoding, and the option errors. Marked ``gpu`` (run on the H200): the draft placed on the
GPU, its logits against the CPU draft's (<= 1e-3), speculative output = plain greedy, and a draft with the target's
weights accepted on every position the CPU draft is."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import offload_synth as syn
from gpu_common import cupy_or_skip
from edgespool.errors import OptionError
from edgespool.runtime.api import load

PROMPT = [1, 5, 9, 33, 5, 9, 33, 70, 5, 9]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("dovetail")
    t = syn.make_bundle(d / "target", syn.dense_config(layers=4, vocab=256, hidden=128), quant="f32", seed=0)
    s = syn.make_bundle(d / "draft", syn.dense_config(layers=2, vocab=256), quant="f32", seed=1)
    return t, s


def _no_gpu(monkeypatch):
    import edgespool.offload.gpu_split as gs

    monkeypatch.setattr(gs, "gpu_status", lambda: (None, "CuPy is not installed (pip install cupy-cuda12x or "
                                                          "cupy-cuda13x)"))


def test_no_gpu_falls_back_to_a_cpu_draft_in_one_line(pair, monkeypatch):
    _no_gpu(monkeypatch)
    t, s = pair
    with load(t, kernels=False) as plain:
        ref = list(plain.generate_ids(PROMPT, 16, stop=[]))
    with load(t, kernels=False, draft=s, draft_tokens=3, draft_gpu_memory="64MiB") as m:
        why = m.draft.gpu_fallback
        assert why and "\n" not in why and why.startswith("draft model draft runs on the CPU: CuPy is not installed")
        assert m.draft.placement is None
        assert list(m.generate_ids(PROMPT, 16, stop=[])) == ref
        assert m.stats.speculative["drafted"] > 0


def test_cli_says_where_the_draft_runs(pair, monkeypatch):
    from edgespool.apps.cli import cli

    _no_gpu(monkeypatch)
    t, s = pair
    r = CliRunner().invoke(cli, ["run", str(t), "--prompt", "ab", "-n", "4", "--draft", str(s),
                                  "--draft-gpu-budget", "64MiB"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("[gpu]")]
    assert lines == ["[gpu] draft model draft runs on the CPU: CuPy is not installed (pip install cupy-cuda12x or "
                     "cupy-cuda13x)"]


def test_draft_gpu_budget_errors(pair, monkeypatch):
    from edgespool.apps.cli import cli

    _no_gpu(monkeypatch)
    t, s = pair
    with pytest.raises(OptionError, match="draft_gpu_memory .* only applies with draft="):
        load(t, draft_gpu_memory="64MiB")
    with pytest.raises(OptionError, match="--draft-gpu-budget needs a draft model"):
        load(t, draft="ngram", draft_gpu_memory="64MiB")
    with pytest.raises(OptionError, match="--draft-gpu-budget"):
        load(t, draft=s, draft_gpu_memory="lots")
    r = CliRunner().invoke(cli, ["run", str(t), "--prompt", "ab", "-n", "2", "--draft-gpu-budget", "1GiB"])
    assert r.exit_code != 0 and "only apply with --draft" in r.output


# -- on a GPU -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_pair(tmp_path_factory):
    """An int8 target and two int8 drafts of the same demo tokenizer: one with the target's own weights (seed 0),
    one smaller random model."""
    cupy_or_skip()
    from edgespool.benchmarks.gpu_split_bench import export_synth

    d = tmp_path_factory.mktemp("dovetail-gpu")
    cfg = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
               head_dim=32, max_position_embeddings=512)
    t = export_synth(d / "t", "int8", seed=0, **cfg)
    same = export_synth(d / "same", "int8", seed=0, **cfg)
    small = export_synth(d / "small", "int8", seed=1, **{**cfg, "num_layers": 2})
    return t, same, small


def _all_gpu(monkeypatch):
    """Place every draft group on the GPU (the executor under test, not the planner's choice for a tiny model)."""
    import edgespool.offload.gpu_split as gs
    from edgespool.schedulers.placement_plan import GroupPlacement, LinkModel, Placement

    def plan(bundle, cp, ops, kernels, budget, ctx):
        names = [f"layers.{i}" for i in range(bundle.config.num_layers)] + ["head"]
        groups = tuple(GroupPlacement(n, "head" if n == "head" else "layer", "gpu", 0, 0, 0.0, 0.0, 0.0, "test")
                       for n in names)
        return Placement(budget, budget, 0, 0, 0, groups, 0, 0, 0.0, 0.0, LinkModel(50e9, 5e-6))

    monkeypatch.setattr(gs, "plan_split", plan)


@pytest.mark.gpu
def test_draft_on_the_gpu_matches_the_cpu_draft(gpu_pair, monkeypatch):
    _all_gpu(monkeypatch)
    t, same, small = gpu_pair
    with load(t, kernels=False) as plain:
        ref = list(plain.generate_ids(PROMPT, 24, stop=[]))
    with load(t, kernels=False, draft=small, draft_tokens=4) as cpu_m, \
            load(t, kernels=False, draft=small, draft_tokens=4, draft_gpu_memory="1GiB") as gpu_m:
        assert gpu_m.draft.gpu_fallback is None and gpu_m.draft.placement is not None
        # the draft's own logits on the GPU against the same draft on the CPU
        ce, ge = cpu_m.draft.drafter.engine, gpu_m.draft.drafter.engine
        a = ce.forward(PROMPT, ce.new_cache(64), last_only=False)
        b = ge.forward(PROMPT, ge.new_cache(64), last_only=False)
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-3
        assert list(gpu_m.generate_ids(PROMPT, 24, stop=[])) == ref
        assert list(cpu_m.generate_ids(PROMPT, 24, stop=[])) == ref
        sg, sc = gpu_m.stats.speculative, cpu_m.stats.speculative
        assert sg["drafted"] > 0 and sc["drafted"] > 0


@pytest.mark.gpu
def test_gpu_draft_with_the_targets_weights_is_accepted(gpu_pair, monkeypatch):
    _all_gpu(monkeypatch)
    t, same, _ = gpu_pair
    with load(t, kernels=False) as plain:
        ref = list(plain.generate_ids(PROMPT, 24, stop=[]))
    with load(t, kernels=False, draft=same, draft_tokens=4, draft_gpu_memory="1GiB") as m:
        assert list(m.generate_ids(PROMPT, 24, stop=[])) == ref
        sp = m.stats.speculative
        # the same weights draft the target's own greedy tokens (f32 GPU vs CPU rounding may flip a near-tie)
        assert sp["drafted"] > 0 and sp["accepted"] >= 0.9 * sp["drafted"], sp


@pytest.mark.gpu
def test_the_planner_places_or_states_why_not(gpu_pair):
    t, _, small = gpu_pair
    with load(t, kernels=False) as plain:
        ref = list(plain.generate_ids(PROMPT, 12, stop=[]))
    with load(t, kernels=False, draft=small, draft_gpu_memory="1GiB") as m:
        assert (m.draft.placement is None) == bool(m.draft.gpu_fallback)
        assert list(m.generate_ids(PROMPT, 12, stop=[])) == ref
