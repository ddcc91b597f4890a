"""`edgespool cluster plan` and `edgespool run --cluster` (issue 19): the plan's figures follow from the bundle's
own group sizes and the given rates; a run on 2 emulated boards prints the single-board greedy text; every bad
option is one `error:` line, exit 1, no traceback."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

import offload_synth as syn
from edgespool.apps.cli import cli
from cluster_common import netns_reason


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return syn.make_bundle(tmp_path_factory.mktemp("cc") / "dense", syn.dense_config(layers=6, hidden=128, inter=512))


def _run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.output, r.stderr if hasattr(r, "stderr") else ""


def test_plan_json_follows_the_bundle_sizes(bundle):
    from edgespool.runtime.bundle.reader import Bundle

    code, out, _ = _run("cluster", "plan", bundle, "--boards", "a=rpi5@microsd,b=rpi5@microsd", "--budget", "16MiB",
                        "--compute-gbps", "2", "--link", "100:10", "--json", "--max-context", "64")
    assert code == 0, out
    d = json.loads(out)
    b = Bundle(bundle)
    L = b.config.num_layers
    stages = d["stages"]
    assert stages[0]["start"] == 0 and stages[-1]["stop"] == L
    assert all(x["stop"] == y["start"] for x, y in zip(stages, stages[1:]))
    for s in stages:  # compute = the stage's stored layer bytes (+ the head's on the last) / 2 GB/s
        nbytes = sum(info.nbytes for g, info in b.groups.items()
                     if g.startswith("layers.") and s["start"] <= int(g.split(".")[1]) < s["stop"])
        if s["stop"] == L:
            nbytes += b.groups["head"].nbytes
        assert s["compute_s"] == pytest.approx(nbytes / 2e9, rel=1e-9)
    # link: 2 stages = 1 hidden row forward (128 float32) + the token back, each 5 ms one way at 100 Mbit/s
    n = len(stages)
    want_link = 0.0 if n == 1 else (n - 1) * (5e-3 + 512 / 12.5e6) + 5e-3 + 8 / 12.5e6
    assert d["link_s"] == pytest.approx(want_link)
    assert d["token_s"] == pytest.approx(sum(max(s["compute_s"], s["io_s"]) for s in stages) + d["link_s"])
    code, out, _ = _run("cluster", "plan", bundle, "--boards", "a=rpi5,b=rpi4", "--budget", "16MiB",
                        "--compute-gbps", "2")
    assert code == 0 and "predicted" in out and "compute rate: given: 2 GB/s" in out


@pytest.mark.parametrize("args,msg", [
    (["--boards", "rpi9"], "unknown target 'rpi9'"),
    (["--boards", "rpi5,"], "--boards 'rpi5,': an empty board name"),
    (["--boards", "rpi5@floppy"], "no storage medium 'floppy'"),
    (["--boards", "rpi5", "--budget", "1/4,1/2"], "--budget: 2 values for 1 boards"),
    (["--boards", "rpi5", "--budget", "lots"], "cannot parse 'lots'"),
    (["--boards", "rpi5", "--link", "fast"], "--link 'fast': expected ethernet, wifi or MBIT:RTT_MS"),
    (["--boards", "rpi5", "--compute-gbps", "0"], "--compute-gbps 0: must be > 0"),
    (["--boards", "rpi5", "--max-context", "0"], "--max-context 0: must be in 1..512"),
])
def test_plan_bad_options_are_one_error_line(bundle, args, msg):
    code, out, _ = _run("cluster", "plan", bundle, *args, "--compute-gbps", "1") if "--compute-gbps" not in args \
        else _run("cluster", "plan", bundle, *args)
    assert code == 1
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], out


@pytest.mark.parametrize("args,msg", [
    (["--cluster", "emulated:0"], "--cluster 'emulated:0': at least 1 board"),
    (["--cluster", "emulated:two"], "expected emulated:N"),
    (["--cluster", "a,,b"], "expected emulated:N or a comma-separated list of host names"),
    (["--cluster", "emulated:99"], "99 boards for a model of 6 layers"),
    (["--cluster", "emulated:2", "--temperature", "0.7"], "--temperature is not supported with --cluster"),
    (["--cluster", "emulated:2", "--cluster-link", "slow"], "--cluster-link 'slow'"),
    (["--cluster-link", "wifi"], "--cluster-link only applies with --cluster"),
    (["--cluster", "emulated:2", "--memory-budget", "huge"], "cannot parse 'huge'"),
    (["--cluster", "emulated:3", "--cluster-mode", "tensor"], "the model's 4 query heads do not split 3 ways"),
    (["--cluster", "emulated:4", "--cluster-mode", "tensor"], "the model's 2 KV heads do not split 4 ways"),
    (["--cluster-mode", "tensor"], "--cluster-mode / --work only apply with --cluster"),
    (["--cluster", "emulated:2", "--work", "/tmp/x"], "--work only applies with --cluster-mode tensor"),
])
def test_run_cluster_bad_options_are_one_error_line(bundle, args, msg):
    code, out, _ = _run("run", bundle, "-p", "a b c", "-n", "3", *args)
    assert code == 1
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], out


_emulated_reason = netns_reason


@pytest.mark.skipif(_emulated_reason() is not None, reason=_emulated_reason() or "")
def test_run_on_two_emulated_boards_prints_the_single_board_text(bundle):
    code, one, _ = _run("run", bundle, "-p", "the cat sat on", "-n", "6", "--json")
    assert code == 0, one
    want = json.loads(one[one.index("{"):])
    code, out, _ = _run("run", bundle, "-p", "the cat sat on", "-n", "6", "--cluster", "emulated:2",
                        "--memory-budget", "12MiB", "--json")
    assert code == 0, out
    assert "EMULATED boards" in out and "solver's cut for 2 boards of 12MiB each" in out
    got = json.loads(out[out.index("{"):])
    assert got["tokens"] == want["tokens"] and got["text"] == want["text"]
    cut = got["ranges"]  # the solver's: contiguous, every layer once, both boards used
    assert cut[0][0] == 0 and cut[-1][1] == 6 and all(a[1] == b[0] and a[0] < a[1] for a, b in zip(cut, cut[1:]))
    assert [r["plan_bytes"] <= 12 << 20 for r in got["ranks"]] == [True, True]
    assert [r["cpus"] for r in got["ranks"]] == [[0], [min(1, len(os.sched_getaffinity(0)) - 1)]]


def test_plan_tensor_json_follows_the_shard_bundles(bundle, tmp_path):
    from edgespool.runtime.bundle.reader import Bundle

    code, out, _ = _run("cluster", "plan", bundle, "--boards", "a=rpi5,b=rpi5", "--budget", "16MiB",
                        "--compute-gbps", "2", "--link", "100:10", "--json", "--max-context", "64", "--mode",
                        "tensor", "--work", tmp_path / "sh")
    assert code == 0, out
    d = json.loads(out)
    L, H = Bundle(bundle).config.num_layers, Bundle(bundle).config.hidden_size
    for s, p in zip(d["boards"], d["shards"]):  # compute = the board's shard bundle's layer + head bytes / 2 GB/s
        sb = Bundle(p)
        nbytes = sum(i.nbytes for g, i in sb.groups.items() if g.startswith("layers.")) + sb.groups["head"].nbytes
        assert s["compute_s"] == pytest.approx(nbytes / 2e9, rel=1e-9)
        assert nbytes < 0.6 * (Bundle(bundle).weights_nbytes - Bundle(bundle).tensors["embed"]["nbytes"])
    # 2L + 1 ring allreduces of one hidden row (2 steps of 5 ms + half the row) + the token exchange (2 hops)
    assert d["allreduces_per_token"] == 2 * L + 1
    ring = 2 * (5e-3 + 4 * H / 2 / 12.5e6)
    assert d["link_s"] == pytest.approx((2 * L + 1) * ring + 2 * (5e-3 + 16 / 12.5e6))
    assert d["token_s"] == pytest.approx(max(max(s["compute_s"], s["io_s"]) for s in d["boards"]) + d["link_s"])
    code, out, _ = _run("cluster", "plan", bundle, "--boards", "a=rpi5,b=rpi5,c=rpi5", "--mode", "tensor",
                        "--compute-gbps", "2", "--work", tmp_path / "sh")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and "4 query heads do not split 3 ways" in lines[0], out


@pytest.mark.skipif(_emulated_reason() is not None, reason=_emulated_reason() or "")
def test_run_tensor_on_two_emulated_boards_prints_the_single_board_text(bundle, tmp_path):
    code, one, _ = _run("run", bundle, "-p", "the cat sat on", "-n", "6", "--json")
    assert code == 0, one
    want = json.loads(one[one.index("{"):])
    args = ["run", bundle, "-p", "the cat sat on", "-n", "6", "--cluster", "emulated:2", "--cluster-mode", "tensor",
            "--memory-budget", "12MiB", "--work", tmp_path / "sh", "--json"]
    code, out, _ = _run(*args)
    assert code == 0, out
    assert "TENSOR parallel" in out
    got = json.loads(out[out.index("{"):])
    assert got["tokens"] == want["tokens"] and got["text"] == want["text"]
    assert all(0 < r["plan_bytes"] <= 12 << 20 and r["bytes_read"] > 0 for r in got["ranks"])
    stamp = (tmp_path / "sh" / "shard-0-of-2" / "weights.bin").stat().st_mtime_ns
    code, out, _ = _run(*args)  # the shard bundles are reused
    assert code == 0 and json.loads(out[out.index("{"):])["tokens"] == want["tokens"]
    assert (tmp_path / "sh" / "shard-0-of-2" / "weights.bin").stat().st_mtime_ns == stamp
