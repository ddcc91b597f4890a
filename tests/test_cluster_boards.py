"""Emulated boards with their own rig cgroups (issue 19): each board's processes are in its own memory (page cache
included), blkio read-throttle and cpuset groups, as the kernel reports them (/proc/self/cgroup, the cgroup files,
sched_getaffinity, blkio byte counters); a streamed 2-board run under per-board budgets gives the single-board
greedy tokens. Needs root, iproute2, mpirun and mpi4py (skips otherwise)."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import offload_synth as syn
from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.decoder.engine import Engine
from edgespool.runtime.decoder.weights import ResidentWeights
from edgespool.schedulers.memory_plan import minimum_budget
from edgespool.schedulers.stage_role import StageRole
from cluster_common import netns_reason

MiB = 1 << 20
PROMPT = [1, 17, 42, 99, 7, 3, 150, 201]


def _reason() -> str | None:
    from edgespool.apps.rig.cgroups import discover

    why = netns_reason()
    if why:
        return why
    usable, missing = discover()
    if not all(c in usable for c in ("memory", "blkio", "cpuset")):
        return f"rig cgroups unavailable: {missing}"
    return None


pytestmark = pytest.mark.skipif(_reason() is not None, reason=_reason() or "")


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    # on a disk, not tmpfs: the boards' read throttle needs a block device
    base = Path(os.environ.get("EDGESPOOL_CLUSTER_TEST_DIR", "/var/tmp"))
    d = tmp_path_factory.mktemp("cb") if _on_disk(tmp_path_factory.getbasetemp()) else base / f"es-cb-{os.getpid()}"
    return Bundle(syn.make_bundle(d / "dense", syn.dense_config(layers=6, hidden=128, inter=512)))


def _on_disk(path) -> bool:
    from edgespool.apps.rig.blockdev import device_for_path

    return device_for_path(path) is not None


def _agent(boards, i: int, cmd: str) -> str:
    p = subprocess.run([str(boards.agent), boards.hosts[i], cmd], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_board_cgroups_hold_the_board_and_enforce_its_limits(dense):
    from edgespool.apps.cluster.boards import BoardLimits, EmulatedBoards

    ncpu = len(os.sched_getaffinity(0))
    blob = Path(dense.path).parent / "blob"  # beside the bundle: on a disk
    blob.write_bytes(os.urandom(2 * MiB))
    rate = 4 * MiB
    limits = BoardLimits(memory=256 * MiB, read_bps=rate, storage=(str(blob),), cpus=(0, ncpu - 1))
    with EmulatedBoards(2, limits=limits) as boards:
        assert any("read_bps_device" in m or "io.max" in m for m in boards.mechanisms), boards.mechanisms
        for i, cg in enumerate(boards.cgroups):
            out = _agent(boards, i, f"cat /proc/self/cgroup; {shlex.quote(sys.executable)} -c "
                                    "'import os; print(sorted(os.sched_getaffinity(0)))'")
            for c in ("memory", "blkio", "cpuset"):  # the board's shell is in each of its groups
                assert any(c in line and cg.name in line for line in out.splitlines()), (c, out)
            assert out.strip().splitlines()[-1] == str([(0, ncpu - 1)[i]])
            mem = cg.dirs["memory"] / ("memory.limit_in_bytes" if cg.hier["memory"].version == 1 else "memory.max")
            assert int(mem.read_text()) == 256 * MiB
        # the read throttle: 2 MiB of direct reads at 4 MiB/s take >= ~0.5 s on the board, far less outside it
        dd = f"dd if={shlex.quote(str(blob))} of=/dev/null bs=256k count=8 iflag=direct 2>/dev/null"
        t0 = time.perf_counter()
        _agent(boards, 0, dd)
        board_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", dd], check=True)
        host_s = time.perf_counter() - t0
        assert board_s >= 0.5 * (2 * MiB / rate) > 2 * host_s, (board_s, host_s)
        st = boards.board_stats()
        assert sum(st[0]["read_bytes"].values()) >= 2 * MiB and sum(st[1]["read_bytes"].values()) < 2 * MiB


def test_streamed_two_boards_with_budgets_equal_single_board(dense):
    from edgespool.apps.cluster.boards import BoardLimits, EmulatedBoards
    from edgespool.apps.cluster.launch import run_cluster, worker_command

    ref = Engine(ResidentWeights(dense), kv_dtype="f32")
    want = list(ref.generate(PROMPT, 6, stop_ids=dense.config.eos_token_ids or ()))
    kw = dict(max_context=64, kv_dtype="f32", max_batch_tokens=16)
    budgets = [minimum_budget(dense, None, stage=StageRole.of_range(a, z, 6), **kw) for a, z in ((0, 3), (3, 6))]
    ncpu = len(os.sched_getaffinity(0))
    limits = BoardLimits(memory=768 * MiB, read_bps=64 * MiB, storage=(str(dense.path),), cpus=(0, ncpu - 1))
    worker = worker_command(str(dense.path), [(0, 3), (3, 6)], PROMPT, 6, max_context=64, budgets=budgets,
                            prefill_chunk=16)
    with EmulatedBoards(2, rate_mbit=1000, limits=limits) as boards:
        run = run_cluster(boards.mpirun_args(), worker, timeout_s=120)
        st = boards.board_stats()
    by_rank = {o["rank"]: o for o in run.ranks}
    assert run.tokens == want
    for r in (0, 1):
        assert by_rank[r]["cpus"] == [(0, ncpu - 1)[r]]
        assert 0 < by_rank[r]["plan_bytes"] <= budgets[r]
        # the kernel's blkio counter of the board saw at least the bytes the board's streaming source read
        assert sum(st[r]["read_bytes"].values()) >= by_rank[r]["bytes_read"] > 0
        assert st[r]["oom_kills"] in (0, None) and st[r]["peak_memory"] <= 768 * MiB
