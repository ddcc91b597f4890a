"""`edgespool bench` runs what `edgespool run` runs (the bundle's kernels), names them, splits a decode step per op,
and reports only memory figures it can attribute (issue 12, item 6)."""
from __future__ import annotations

import edgespool
import numpy as np
import pytest
from edgespool.runtime.bench import _cgroup_attributable, bench_bundle

SMALL = {"hidden": 128, "layers": 2, "experts": 4, "moe_intermediate": 160, "heads": 4, "kv_heads": 2}


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.synth import synth_demo_model

    return export_model(synth_demo_model(seed=4, **SMALL), tmp_path_factory.mktemp("bench") / "b",
                        policy=QuantPolicy(quant="int8"), onnx=False, kernels=True, progress=False).path


def test_bench_uses_runs_kernels_and_splits_the_step(int8_bundle):
    with edgespool.load(int8_bundle) as m:
        want = m.kernels.description
        ids = m.generate_ids(list(range(3, 11)), 6, stop=[])
        run_tokens = list(ids)
    assert "C block kernels" in want
    res = bench_bundle(int8_bundle, prompt_tokens=8, max_tokens=6, measure_storage=False, split_steps=5)
    k = res["kernels"]
    assert k["description"] == want and k["calls"] > 0 and k["threads"] >= 1
    # the decode tile form of each packed format (kernels/decode_form.py): this tiny model is too small to measure
    forms = k["decode_forms"]
    assert forms is not None and all(v["form"] in (1, 4) and v["how"] for v in forms.values()), forms
    split = res["op_split"]
    ops = split["ops"]
    assert {"lm_head", "linear int8", "attention", "other"} <= set(ops)
    assert sum(v["share"] for v in ops.values()) == pytest.approx(1.0)
    assert all(v["ms_per_step"] >= 0 for k_, v in ops.items() if k_ != "other")
    # per step: the head once, attention once per layer, every other linear (q, k, v, o, router, experts)
    assert ops["lm_head"]["calls_per_step"] == 1 and ops["attention"]["calls_per_step"] == SMALL["layers"]
    assert res["decode_tok_s"] > 0 and len(res["tokens"]) == 6 and len(run_tokens) == 6


def test_bench_drops_cgroup_figures_it_cannot_attribute(int8_bundle):
    res = bench_bundle(int8_bundle, prompt_tokens=4, max_tokens=3, measure_storage=False, split_steps=0)
    own, why = _cgroup_attributable()
    pm = res["peak_memory"]
    assert res["op_split"] is None
    if own:
        assert "cgroup" in pm
    else:
        assert "cgroup" not in pm and "cgroup_sampled" not in pm and pm["cgroup_omitted"] == why
        assert res["baseline"]["cgroup"] is None
        assert all(s[2] is None for s in res["_timeline"]["memory"])
    assert pm["process_rss"] >= res["baseline"]["process_rss"]


def test_bench_without_kernels_says_numpy(int8_bundle):
    res = bench_bundle(int8_bundle, prompt_tokens=4, max_tokens=2, measure_storage=False, split_steps=2,
                       kernels=False)
    assert res["kernels"]["description"].startswith("numpy reference kernels")
    assert np.isfinite(res["op_split"]["ms_per_step"])


def test_bench_threads_option_sets_the_kernels_threads(int8_bundle):
    import json
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "edgespool", "bench", str(int8_bundle), *args],
                              capture_output=True, text=True, timeout=300)

    r = cli("--threads", "1", "--json", "-n", "2", "--prompt-tokens", "4")
    assert r.returncode == 0, r.stderr
    k = json.loads(r.stdout)["kernels"]
    assert k["threads"] == 1 and "1 threads" in k["description"]
    bad = cli("--threads", "0", "-n", "2")
    assert bad.returncode == 1 and "--threads 0: must be >= 1" in bad.stderr
    assert "Traceback" not in bad.stderr and bad.stderr.strip().count("\n") == 0


def test_bad_decode_form_setting_is_named_at_load(int8_bundle, monkeypatch):
    """A bad $EDGESPOOL_DECODE_FORM is an OptionError naming it when the bundle loads, not a silent fall back
    from the C block kernels to slower ones."""
    from edgespool.errors import OptionError

    monkeypatch.setenv("EDGESPOOL_DECODE_FORM", "fast")
    with pytest.raises(OptionError, match="EDGESPOOL_DECODE_FORM='fast'"):
        edgespool.load(int8_bundle)
    monkeypatch.setenv("EDGESPOOL_DECODE_FORM", "4")
    with edgespool.load(int8_bundle) as m:
        assert "C block kernels" in m.kernels.description
        toks4 = list(m.generate_ids(list(range(3, 11)), 6, stop=[]))
        forms = m.kernels.backend.decode_forms
    monkeypatch.setenv("EDGESPOOL_DECODE_FORM", "1")
    with edgespool.load(int8_bundle) as m:
        toks1 = list(m.generate_ids(list(range(3, 11)), 6, stop=[]))
    assert toks4 == toks1  # the two forms are bit-identical, so the tokens are too
    if m.kernels.backend.has_decode_forms and forms:
        assert all(v == {"form": 4, "how": "forced ($EDGESPOOL_DECODE_FORM)"} for v in forms.values()), forms
