"""Pipeline-parallel stages (issue 19): chained stages give the single-board logits; a real 2-rank mpirun run
gives the single-board greedy tokens; a board killed mid-generation ends the job with an error, never a hang."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.cluster.stage import Stage
from edgespool.runtime.decoder.engine import Engine
from edgespool.runtime.decoder.weights import ResidentWeights
from cluster_common import assert_stages_follow, mpirun_reason, netns_reason

PROMPT = [1, 17, 42, 99, 5, 23, 7]


@pytest.fixture(scope="module")
def bundle4(tmp_path_factory):
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.synth import synth_demo_model

    src = synth_demo_model(seed=3, hidden=64, layers=4, experts=4, top_k=2, moe_intermediate=64, heads=4,
                           kv_heads=2)
    return export_model(src, tmp_path_factory.mktemp("c") / "b", policy=QuantPolicy(quant="f32"), onnx=False,
                        kernels=False, progress=False).path


def _engine(path):
    return Engine(ResidentWeights(Bundle(path)), kv_dtype="f32")


@pytest.mark.parametrize("ranges", [[(0, 2), (2, 4)], [(0, 1), (1, 3), (3, 4)]])
def test_chained_stages_equal_single_board_logits(bundle4, ranges):
    ref = _engine(bundle4)
    cache = ref.new_cache(32)
    want = [ref.forward(PROMPT, cache)] + [ref.forward([t], cache) for t in (3, 8)]
    stages = [Stage(_engine(bundle4), a, b) for a, b in ranges]
    caches = [s.new_cache(32) for s in stages]
    for inp, w in zip([PROMPT, [3], [8]], want):
        x = np.asarray(inp, np.int64)
        for s, c in zip(stages, caches):
            x = s.step(x, c, last_only=False)
        np.testing.assert_allclose(x, w, rtol=1e-5, atol=1e-5)
    # each stage's cache holds only its own layers
    assert [c.k.shape[0] for c in caches] == [b - a for a, b in ranges]


_mpirun_reason = mpirun_reason


def _tokens_line(stdout: str) -> dict:
    """Rank 0's result object. mpirun forwards each rank's stdout on its own, so another rank's line can land on
    the same output line: decode the one object that starts at ``{"tokens"`` and ignore what follows it."""
    i = stdout.find('{"tokens"')
    assert i >= 0, stdout
    return json.JSONDecoder().raw_decode(stdout, i)[0]


def _mpirun(path, ranges, extra=(), timeout=120):
    n = len(ranges)
    cmd = ["mpirun", "--oversubscribe", "-np", str(n), "--mca", "btl", "tcp,self"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    cmd += [sys.executable, "-m", "edgespool.apps.cluster.worker", str(path),
            "--ranges", ",".join(f"{a}:{b}" for a, b in ranges), "--prompt-ids", ",".join(map(str, PROMPT)),
            "-n", "6", "--max-context", "64", "--prefill-chunk", "3", "--no-kernels", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(_mpirun_reason() is not None, reason=_mpirun_reason() or "")
def test_mpirun_two_ranks_equal_single_board_tokens(bundle4):
    ref = _engine(bundle4)
    want = list(ref.generate(PROMPT, 6, stop_ids=Bundle(bundle4).config.eos_token_ids or ()))
    p = _mpirun(bundle4, [(0, 2), (2, 4)])
    assert p.returncode == 0, p.stderr[-2000:]
    out = _tokens_line(p.stdout)
    assert out["tokens"] == want
    # per decode token: one [1, H] float32 message forward, one int64 back
    assert out["link"]["sent_messages"] >= 1 + len(want)


@pytest.mark.skipif(_mpirun_reason() is not None, reason=_mpirun_reason() or "")
def test_killed_board_ends_the_job_not_a_hang(bundle4):
    p = _mpirun(bundle4, [(0, 2), (2, 4)], ["--die-rank", "1", "--die-after", "3", "--timeout", "5"], timeout=60)
    assert p.returncode != 0
    assert '{"tokens"' not in p.stdout


_netns_reason = netns_reason


@pytest.mark.skipif(_netns_reason() is not None, reason=_netns_reason() or "")
def test_emulated_boards_in_netns_equal_single_board_and_cut_link_errors(bundle4):
    from edgespool.apps.cluster.boards import EmulatedBoards

    ref = _engine(bundle4)
    want = list(ref.generate(PROMPT, 6, stop_ids=Bundle(bundle4).config.eos_token_ids or ()))
    worker = [sys.executable, "-m", "edgespool.apps.cluster.worker", str(bundle4), "--ranges", "0:1,1:3,3:4",
              "--prompt-ids", ",".join(map(str, PROMPT)), "-n", "6", "--max-context", "64", "--no-kernels"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with EmulatedBoards(3, rate_mbit=1000) as boards:
        p = subprocess.run(boards.mpirun_args() + worker, capture_output=True, text=True, timeout=120, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
        out = _tokens_line(p.stdout)
        assert out["tokens"] == want, p.stdout
        # a cut link mid-run: the first board gives one clean error within the timeout
        q = subprocess.Popen(boards.mpirun_args() + worker + ["-n", "40", "--timeout", "4",
                             "--simulated-latency-ms", "50"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
        import time
        time.sleep(6)
        boards.cut(2)
        t_cut, line = time.monotonic(), ""
        try:  # the error line must come within the 4 s receive timeout (+ slack), not a hang
            while "edgespool cluster: error" not in line and time.monotonic() - t_cut < 30:
                line = q.stderr.readline()
                if not line and q.poll() is not None:
                    break
        finally:
            boards.restore(2)  # let Open MPI's daemons tear down, then end the launcher we started
            try:
                q.wait(timeout=15)
            except subprocess.TimeoutExpired:
                q.kill()
                q.wait()
        assert "edgespool cluster: error" in line and "sent nothing" in line, line
        assert time.monotonic() - t_cut < 30


def test_real_smollm2_split_in_two_equals_single_board(tmp_path_factory):
    """The real SmolLM2-135M (int8 from its GGUF, C kernels): 2 stages 0..14 / 15..29 give the single board's
    logits (f32 KV) and greedy tokens."""
    from serving_common import smol_bundle

    from edgespool.runtime.api import resolve_kernels

    path = smol_bundle(tmp_path_factory)
    b = Bundle(path)
    kern = resolve_kernels(b, True)
    ref = Engine(ResidentWeights(b), kern, kv_dtype="f32")
    prompt = [1, 504, 3458, 314, 260, 1345]
    cache = ref.new_cache(32)
    want = [ref.forward(prompt, cache, last_only=True)]
    toks = []
    for _ in range(5):
        toks.append(int(np.argmax(want[-1][-1])))
        want.append(ref.forward([toks[-1]], cache, last_only=True))
    stages = [Stage(Engine(ResidentWeights(Bundle(path)), kern, kv_dtype="f32"), a, z) for a, z in ((0, 15), (15, 30))]
    caches = [s.new_cache(32) for s in stages]
    assert_stages_follow(stages, caches, [prompt] + [[t] for t in toks], want, 1e-4)
