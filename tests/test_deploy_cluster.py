"""`edgespool deploy BUNDLE --cluster b0,b1` and `edgespool run BUNDLE --cluster b0,b1` against real sshds (issue 19).

Two "boards": the deploy tests' :class:`edgespool.benchmarks.deploy_board.TestBoard` (a network namespace running
OpenSSH's sshd) plus a second sshd in the same namespace on a second address, each board with its own device root.
What each board holds is read by this process straight from the board's files (the share's manifest, the bytes of
every group compared with the source bundle's, every CRC); the run over the deployed shares is mpirun over ssh
(edgespool's rsh agent) and must give the single board's greedy tokens (tests/cluster_common.greedy_reference).
Bad input (unknown device, more boards than layers, a model that does not split) needs no sshd."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import offload_synth as syn
import pytest
from cluster_common import greedy_reference, mpirun_reason
from deploy_common import cli as _cli, isolated_registry
from edgespool.apps.deploy.registry import Device
from edgespool.runtime.bundle.reader import Bundle

PROMPT = "the cat sat on"


def _board_skip() -> str | None:
    from edgespool.benchmarks.deploy_board import skip_reason

    return skip_reason() or mpirun_reason()


needs_boards = pytest.mark.skipif(_board_skip() is not None, reason=str(_board_skip()))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return syn.make_bundle(tmp_path_factory.mktemp("dc") / "dense", syn.dense_config(layers=6, hidden=128, inter=512))


@pytest.fixture()
def cfg(tmp_path, monkeypatch):
    return isolated_registry(tmp_path, monkeypatch)


def _one_error_line(r, msg: str) -> None:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], r.stderr


# -- no sshd needed ----------------------------------------------------------------------------------------------
def test_bad_cluster_input_is_one_line(bundle, cfg):
    for i in range(7):
        cfg.add(Device(f"d{i}", "pi", f"192.0.2.{10 + i}"))
    _one_error_line(_cli("deploy", bundle, "--cluster", "d0,nope", check=False),
                    "--cluster 'd0,nope': no device named 'nope'")
    _one_error_line(_cli("deploy", bundle, "--cluster", ",".join(f"d{i}" for i in range(7)), check=False),
                    "7 boards for a model of 6 layers")
    _one_error_line(_cli("deploy", bundle, "--cluster", "d0,d1,d2", "--cluster-mode", "tensor", check=False),
                    "the model's 4 query heads do not split 3 ways")
    _one_error_line(_cli("deploy", bundle, "--cluster", "d0,d0", check=False), "device 'd0' is named twice")
    _one_error_line(_cli("deploy", bundle, "--cluster", "d0,d1", "--cluster-ranges", "0:2,3:6", check=False),
                    "must be contiguous")
    _one_error_line(_cli("deploy", bundle, check=False), "missing DEVICE")
    _one_error_line(_cli("deploy", bundle, "d0", "--cluster", "d0,d1", check=False), "not both")
    _one_error_line(_cli("deploy", bundle, "d0", "--cluster-mode", "tensor", check=False), "only apply with --cluster")
    _one_error_line(_cli("run", bundle, "-p", "a b", "--cluster", "d0,d1", check=False),
                    "these devices hold no pipeline share of dense")
    assert not (bundle.parent / "dense.cluster-shares").exists()  # refused before any share was written


def test_stage_share_opens_only_as_a_share_and_passes_the_budget_preflight(bundle, tmp_path):
    from edgespool.apps.deploy.preflight import check_fit
    from edgespool.errors import BundleError, DeployError
    from edgespool.runtime.cluster.stage_share import StageBundle, open_bundle, write_stage_share

    whole = Bundle(bundle)
    share = write_stage_share(whole, 2, 6, tmp_path / "s")
    sb = open_bundle(share)
    assert isinstance(sb, StageBundle) and (sb.stage.start, sb.stage.stop, sb.stage.head) == (2, 6, True)
    assert set(sb.groups) == {"head", "layers.2", "layers.3", "layers.4", "layers.5"}
    with pytest.raises(BundleError, match="tensor 'embed' of the model config is missing"):
        Bundle(share)
    facts = {"arch": os.uname().machine, "python": "3.11.2", "memory_usable": 8 << 30, "disk_free": 10 << 30,
             "edgespool": {"version": "0.1.0"}}
    fit = check_fit(sb, facts, "b1", bytes_to_send=1, bundle_bytes=1, memory_budget=12 << 20)
    assert 0 < fit.plan_bytes <= 12 << 20
    with pytest.raises(DeployError, match="cannot stream in --memory-budget 64.0 KiB"):
        check_fit(sb, facts, "b1", bytes_to_send=1, bundle_bytes=1, memory_budget=64 << 10)
    m = json.loads((share / "manifest.json").read_text())  # a share that lost one of its layers is refused
    m["groups"] = [g for g in m["groups"] if g["name"] != "layers.3"]
    m["tensors"] = {k: v for k, v in m["tensors"].items() if not k.startswith("layers.3.")}
    (share / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="is missing from the stage's share"):
        StageBundle(share)


# -- two real sshds ----------------------------------------------------------------------------------------------
class SecondSshd:
    """A second sshd in ``board``'s namespace at the next address (same host key and client key): a second board."""

    def __init__(self, board) -> None:
        self.board = board
        a, b, c, _ = board.board_ip.split(".")
        self.ip = f"{a}.{b}.{c}.3"
        subprocess.run(["ip", "-n", board.ns, "addr", "add", f"{self.ip}/24", "dev", board.veth_board], check=True)
        text = (board.work / "sshd_config").read_text()
        cfg = board.work / "sshd2_config"
        cfg.write_text(text.replace(f"ListenAddress {board.board_ip}", f"ListenAddress {self.ip}")
                       .replace(str(board.work / "sshd.pid"), str(board.work / "sshd2.pid")))
        self.log = open(board.work / "sshd2.log", "ab")
        self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{board.ns}", "/usr/sbin/sshd", "-D", "-e", "-f",
                                      str(cfg)], stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            r = subprocess.run(["ip", "netns", "exec", board.ns, "ss", "-ltn", f"src {self.ip}"], capture_output=True,
                               text=True)
            if f"{self.ip}:{board.port}" in r.stdout:
                return
            time.sleep(0.1)
        self.close()
        raise RuntimeError("the second sshd did not start listening")

    def url(self) -> str:
        return f"ssh://root@{self.ip}:{self.board.port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=15)
        self.log.close()


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    from edgespool.benchmarks.deploy_board import TestBoard

    b = TestBoard(tmp_path_factory.mktemp("cboard"), index=7)
    second = None
    try:
        second = SecondSshd(b)
        yield b, second
    finally:
        if second is not None:
            second.close()
        b.close()


def _add_boards(boards, tmp_path) -> list[Path]:
    b, second = boards
    roots = [tmp_path / "root0", tmp_path / "root1"]
    for name, url, root in (("b0", b.url(), roots[0]), ("b1", second.url(), roots[1])):
        _cli("device", "add", name, url, "--identity", b.client_key, "--root", root, "--python", sys.executable,
             "--accept-new")
    return roots


def _group_bytes(bundle: Bundle, group: str) -> bytes:
    g = bundle.groups[group]
    with open(bundle.weights_path, "rb") as f:
        f.seek(g.offset)
        return f.read(g.nbytes)


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _reference_tokens(bundle: Path, n: int) -> list[int]:
    from edgespool.runtime.decoder.tokenizer import BundleTokenizer

    b = Bundle(bundle)
    ids = BundleTokenizer.from_manifest(b.path, b.manifest["tokenizer"]).encode(PROMPT)
    _, toks = greedy_reference(bundle, ids, n)
    eos = set(b.config.eos_token_ids or ())
    cut = next((i for i, t in enumerate(toks) if t in eos), len(toks))
    return toks[:cut]


@pytest.fixture()
def mpi_env(boards, monkeypatch):
    net = boards[0].board_ip.rsplit(".", 1)[0] + ".0/24"
    monkeypatch.setenv("EDGESPOOL_MPIRUN_ARGS", f"--mca oob_tcp_if_include {net} --mca btl tcp,self "
                                                f"--mca btl_tcp_if_include {net}")


@needs_boards
def test_pipeline_shares_deployed_and_run_give_the_single_board_tokens(boards, cfg, bundle, tmp_path, mpi_env):
    from edgespool.runtime.cluster.stage_share import StageBundle

    roots = _add_boards(boards, tmp_path)
    whole = Bundle(bundle)
    L = whole.config.num_layers
    out = json.loads(_cli("deploy", bundle, "--cluster", "b0,b1", "--json", "--read-test-size", "0",
                          "--work", tmp_path / "shares").stdout)
    assert out["mode"] == "pipeline" and out["whole_bytes"] == _tree_bytes(bundle)
    (a0, b0), (a1, b1) = out["ranges"]
    assert a0 == 0 and b0 == a1 and b1 == L
    for r, (root, row) in enumerate(zip(roots, out["boards"])):
        share = StageBundle(root / "current")  # read from the board's disk, not through the deploy code
        share.verify()  # every tensor's CRC32 and the manifest checksum
        assert Path(row["path"]).resolve() == (root / "current").resolve()
        a, b = out["ranges"][r]
        want_groups = {f"layers.{i}" for i in range(a, b)} | ({"embed"} if a == 0 else set()) | (
            {"head"} if b == L else set())
        assert set(share.groups) == want_groups
        for g in want_groups:  # byte for byte the source bundle's groups
            assert _group_bytes(share, g) == _group_bytes(whole, g), g
        on_board = _tree_bytes(root / "current")
        assert on_board == row["share_bytes"] < 0.75 * out["whole_bytes"]
        assert 0 < row["bytes_sent"] <= row["share_bytes"]
    # each board holds only its share: the layers of the other board are absent from its weights
    assert _tree_bytes(roots[0] / "current") + _tree_bytes(roots[1] / "current") < out["whole_bytes"] * 1.1
    want = _reference_tokens(bundle, 6)
    one = json.loads(_cli("run", bundle, "-p", PROMPT, "-n", "6", "--json").stdout)
    assert one["tokens"] == want
    for budget in ([], ["--memory-budget", "12MiB"]):  # resident, then each board streaming its share
        got = json.loads(_cli("run", bundle, "-p", PROMPT, "-n", "6", "--cluster", "b0,b1", "--json", *budget).stdout)
        assert got["tokens"] == want and got["text"] == one["text"], got
        assert [r["rank"] for r in got["ranks"]] == [0, 1]
        if budget:
            assert all(0 < r["bytes_read"] and r["plan_bytes"] <= 12 << 20 for r in got["ranks"])
    # the same shares again: nothing to send
    again = json.loads(_cli("deploy", bundle, "--cluster", "b0,b1", "--json", "--read-test-size", "0",
                            "--work", tmp_path / "shares").stdout)
    assert [r["bytes_sent"] for r in again["boards"]] == [0, 0]
    text = _cli("deploy", bundle, "--cluster", "b0,b1", "--read-test-size", "0", "--work", tmp_path / "shares").stderr
    lines = text.strip().splitlines()
    assert lines[0].startswith(f"board 0 b0: layers 0..{b0 - 1} + embedding: share ") and "sent 0 B" in lines[0], text
    assert lines[1].startswith(f"board 1 b1: layers {a1}..{L - 1} + head: share ") and "of the whole bundle's" in \
        lines[1], text


@needs_boards
def test_tensor_shards_deployed_and_run_give_the_single_board_tokens(boards, cfg, bundle, tmp_path, mpi_env):
    from edgespool.runtime.cluster.tensor_stream import shard_info

    roots = _add_boards(boards, tmp_path)
    whole = Bundle(bundle)
    out = json.loads(_cli("deploy", bundle, "--cluster", "b0,b1", "--cluster-mode", "tensor", "--json",
                          "--read-test-size", "0", "--work", tmp_path / "shares").stdout)
    for r, (root, row) in enumerate(zip(roots, out["boards"])):
        shard = Bundle(root / "current")
        shard.verify()
        sec = shard_info(shard)
        assert (sec["rank"], sec["of"]) == (r, 2)
        cfg_ = shard.config
        assert (cfg_.num_heads, cfg_.num_kv_heads, cfg_.intermediate_size) == (
            whole.config.num_heads // 2, whole.config.num_kv_heads // 2, whole.config.intermediate_size // 2)
        assert shard.tensors["embed"]["shape"][0] == whole.config.vocab_size // 2
        assert _tree_bytes(root / "current") == row["share_bytes"] < 0.6 * out["whole_bytes"]
    want = _reference_tokens(bundle, 6)
    got = json.loads(_cli("run", bundle, "-p", PROMPT, "-n", "6", "--cluster", "b0,b1", "--cluster-mode", "tensor",
                          "--memory-budget", "12MiB", "--json").stdout)
    assert got["tokens"] == want, got
    assert all(r["bytes_read"] > 0 and r["calls"] > 0 for r in got["ranks"])
    # numpy's own check of the split: the two shards' head rows are the whole head's rows
    heads = [Bundle(root / "current").read_group("head")["lm_head"].dequantize() for root in roots]
    np.testing.assert_array_equal(np.concatenate(heads), whole.read_group("head")["lm_head"].dequantize())


@pytest.mark.slow
@needs_boards
def test_real_smollm2_stage_shares_keep_the_kernels(boards, cfg, tmp_path_factory, tmp_path, mpi_env):
    """The real SmolLM2-135M int8 bundle (with its compiled C kernels) deployed as 2 stage shares: each board's share
    carries the kernels, and the run over the shares gives the single board's greedy tokens with the same kernels.
    Its 3-way tensor shares (9 heads, 3 KV heads: it does not split 2 ways) carry the kernels too."""
    from edgespool.apps.deploy.cluster_deploy import write_shares
    from edgespool.runtime.api import resolve_kernels
    from edgespool.runtime.cluster.stage_share import StageBundle
    from serving_common import smol_bundle

    path = smol_bundle(tmp_path_factory)
    whole = Bundle(path)
    want_kernels = resolve_kernels(whole, True).description
    assert "reference" not in want_kernels, want_kernels
    roots = _add_boards(boards, tmp_path)
    out = json.loads(_cli("deploy", path, "--cluster", "b0,b1", "--json", "--read-test-size", "0",
                          "--work", tmp_path / "shares").stdout)
    for root, (a, b) in zip(roots, out["ranges"]):
        share = StageBundle(root / "current")
        assert resolve_kernels(share, True).description == want_kernels
        others = sum(whole.groups[f"layers.{i}"].nbytes for i in range(whole.config.num_layers) if not a <= i < b)
        assert _tree_bytes(root / "current") < out["whole_bytes"] - others + 64 * 4096  # + alignment padding
    prompt = ["-p", "def fibonacci(n):", "-n", "8", "--json"]
    one = json.loads(_cli("run", path, *prompt).stdout)
    got = json.loads(_cli("run", path, *prompt, "--cluster", "b0,b1").stdout)
    assert got["tokens"] == one["tokens"] and got["text"] == one["text"], (got, one)
    devs = [Device(f"t{i}", "pi", f"192.0.2.{20 + i}") for i in range(3)]
    for sh in write_shares(whole, devs, "tensor", work=str(tmp_path / "tp")):
        assert resolve_kernels(Bundle(sh.share), True).description == want_kernels
