"""`edgespool bench` end to end on a tiny bundle: JSON fields, consistency with the stream stats, the plot, the
budget error, and (rig) the same inside the memory cgroup with no OOM and peak <= budget + baseline."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import offload_synth as syn

ES = [sys.executable, "-m", "edgespool"]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return syn.make_bundle(tmp_path_factory.mktemp("bench") / "dense", syn.dense_config(layers=6, hidden=128,
                                                                                         inter=256))


def _budget(path) -> int:
    """Minimum working set + one more layer slot (2 window slots < 6 layers: everything streams)."""
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.schedulers.memory_plan import minimum_budget

    b = Bundle(path)
    return minimum_budget(b, None, max_context=14, max_batch_tokens=8) + b.groups["layers.0"].nbytes + 4096


def _bench(*args):
    p = subprocess.run([*ES, "bench", *map(str, args)], capture_output=True, text=True, timeout=300)
    return p


def test_bench_json_and_plot(dense, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "t.png"
    budget = _budget(dense)
    p = _bench(dense, "--memory-budget", budget, "--prompt-tokens", 8, "-n", 6, "--json", "--plot", png)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["mode"] == "streaming" and r["plan"]["total_bytes"] <= budget
    assert r["plan"]["streamed_layers"], "the budget should force streaming"
    st = r["stream_stats"]
    # every decode step reads exactly the streamed layers (window slots < streamed layers, so no reuse)
    assert r["bytes_read_per_token"] == pytest.approx(r["plan"]["streamed_bytes_per_token"], rel=0.02, abs=8192)
    assert st["window"]["requests"] == 6 * len(r["plan"]["streamed_layers"])
    assert r["storage"]["bandwidth"] > 0 and 0 < r["storage_bound"]["fraction_reached"]
    assert r["peak_memory"]["process_rss"] >= r["baseline"]["process_rss"]
    assert png.stat().st_size > 10_000


def test_bench_resident_and_budget_error(dense):
    p = _bench(dense, "--prompt-tokens", 4, "-n", 3, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["mode"] == "resident"
    p = _bench(dense, "--memory-budget", "1MiB", "-n", 2)
    assert p.returncode == 1 and "minimum working set" in p.stderr and p.stderr.count("\n") == 1


@pytest.mark.rig
def test_bench_in_rig_stays_within_budget_plus_baseline(dense):
    if os.geteuid() != 0:
        pytest.skip("the rig needs root cgroups")
    budget = _budget(dense)
    p = _bench(dense, "--memory-budget", budget, "--rig", "rpi5", "--prompt-tokens", 8, "-n", 6, "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    rig = r["rig"]
    assert rig["exit_code"] == 0 and not rig["oom_kills"]
    mem = [l for l in rig["limits"] if l["name"] == "memory"][0]
    if mem["mode"] != "real":
        pytest.skip(f"memory limit not real here: {mem}")
    assert rig["peak_memory"] <= budget + rig["baseline_rss_parent"]
