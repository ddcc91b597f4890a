"""Streamed tensor parallel (issue 19): each board's share written as a real shard bundle
(edgespool.exporters.tensor_shard) and opened with the ordinary streaming machinery under its own budget. 2- and
3-way streamed shard runs (boards as threads, the allreduce a thread barrier sum) give the single board's logits
(f32 accumulation tolerance) and greedy tokens, synthetic (untied and tied head) and the real SmolLM2-135M; each
board reads only its shard bundle's file, whose bytes are about 1/n of the model's."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import offload_synth as syn
from edgespool.errors import BundleError, OptionError
from edgespool.exporters.tensor_shard import shard_bundles, write_shard_bundle
from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.cluster.tensor_stream import open_shard, shard_plan_options
from edgespool.runtime.decoder.engine import Engine
from edgespool.runtime.decoder.weights import ResidentWeights
from edgespool.schedulers.memory_plan import minimum_budget
from cluster_common import ThreadSum, greedy_reference

PROMPT = [1, 17, 42, 99, 7, 3, 150, 201]
KW = dict(max_context=64, max_batch_tokens=16, kv_dtype="f32")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("tps")
    return {"dense": syn.make_bundle(d / "dense", syn.dense_config(layers=4, hidden=96, heads=6, kv_heads=6,
                                                                    inter=384)),
            "tied": syn.make_bundle(d / "tied", syn.dense_config(layers=4, hidden=96, heads=6, kv_heads=6,
                                                                  inter=384, tie=True))}


def _run_split(paths, prompt, toks, budget_of, kernels=None):
    n = len(paths)
    red = ThreadSum(n)
    engines = [open_shard(p, red.of(r), budget=budget_of(p), kernels=kernels, **KW) for r, p in enumerate(paths)]
    got: list[list] = [[] for _ in range(n)]
    errs: list[BaseException] = []

    def board(r):
        try:
            c = engines[r].new_cache(64)
            for inp in [prompt] + [[t] for t in toks]:
                got[r].append(engines[r].forward(inp, c, last_only=True))
        except BaseException as e:  # noqa: BLE001 -- reported below
            errs.append(e)
            red.bar.abort()
    ts = [threading.Thread(target=board, args=(r,)) for r in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=600)
    assert not errs, errs
    return engines, got, red


def _assemble(parts, engines) -> np.ndarray:
    ranges = [e.source.vocab_range for e in engines]
    assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    return np.concatenate([p[:, a:b] for p, (a, b) in zip(parts, ranges)], axis=1)


def _check(want, got, engines, tol):
    for step, w in enumerate(want):
        whole = _assemble([g[step] for g in got], engines)
        assert whole.shape == w.shape
        np.testing.assert_allclose(whole, w, rtol=tol, atol=tol)
        assert int(np.argmax(whole[-1])) == int(np.argmax(w[-1]))


def _min_budget(p):
    return minimum_budget(Bundle(p), None, **shard_plan_options(Bundle(p), **KW))


@pytest.mark.parametrize("which", ["dense", "tied"])
@pytest.mark.parametrize("n", [2, 3])
def test_streamed_shards_equal_single_board(models, tmp_path, which, n):
    path = models[which]
    b = Bundle(path)
    want, toks = greedy_reference(path, PROMPT, 3)
    paths = shard_bundles(b, n, tmp_path / "shards")
    engines, got, red = _run_split(paths, PROMPT, toks, _min_budget)
    try:
        _check(want, got, engines, 1e-5)
        L = b.config.num_layers
        assert red.calls == (1 + 2 * L) * (1 + len(toks))  # embedding + 2 a layer, each forward pass
        for r, (p, e) in enumerate(zip(paths, engines)):
            src = e.source.inner
            assert not src.plan.is_resident  # streamed at the shard's minimum budget
            assert src.store.path == Bundle(p).weights_path  # reads only its shard bundle's file
            assert src.stats()["bytes_read"] > 0
            sb = Bundle(p)
            assert sb.config.num_kv_heads == b.config.num_kv_heads // n
            assert sb.weights_nbytes < b.weights_nbytes / n + b.weights_nbytes * 0.1
            c = e.new_cache(4)
            assert c.k.shape[1] == b.config.num_kv_heads // n
    finally:
        for e in engines:
            e.source.inner.close()


def test_shard_bundles_are_reused_and_refuse_bad_input(models, tmp_path):
    b = Bundle(models["dense"])
    paths = shard_bundles(b, 2, tmp_path / "s")
    stamp = [(p / "weights.bin").stat().st_mtime_ns for p in paths]
    assert shard_bundles(b, 2, tmp_path / "s") == paths
    assert [(p / "weights.bin").stat().st_mtime_ns for p in paths] == stamp  # written once
    with pytest.raises(OptionError, match="the model's 6 query heads do not split 4 ways"):
        write_shard_bundle(b, 0, 4, tmp_path / "x")
    with pytest.raises(BundleError, match="not a tensor-parallel shard bundle"):
        open_shard(models["dense"], lambda x: x)


def test_real_smollm2_streamed_shards_equal_single_board(tmp_path_factory, tmp_path):
    """SmolLM2-135M (int8 from its GGUF, tied head; 9 query / 3 KV heads, 1536 FFN columns): 3 streamed shards,
    each under a quarter of its shard bundle's weights, = the resident single board."""
    from serving_common import smol_bundle

    path = smol_bundle(tmp_path_factory)
    prompt = [1, 504, 3458, 314, 260, 1345]
    want, toks = greedy_reference(path, prompt, 2)
    paths = shard_bundles(Bundle(path), 3, tmp_path / "shards")
    engines, got, _ = _run_split(paths, prompt, toks,
                                 lambda p: max(_min_budget(p), Bundle(p).weights_nbytes // 4))
    try:
        _check(want, got, engines, 1e-4)
        for e in engines:
            assert not e.source.inner.plan.is_resident
    finally:
        for e in engines:
            e.source.inner.close()


def test_mpirun_streamed_shards_equal_single_board_tokens(models, tmp_path):
    """Under mpirun (ring allreduce over MPI messages, 2 ranks), each rank streaming its shard bundle at its
    minimum budget with a prompt in 4-token chunks: the single board's greedy tokens."""
    import json
    import os
    import subprocess
    import sys

    from cluster_common import mpirun_reason

    if mpirun_reason():
        pytest.skip(mpirun_reason())
    from edgespool.apps.cluster.launch import rank_objects

    b = Bundle(models["dense"])
    want = list(Engine(ResidentWeights(b), kv_dtype="f32").generate(PROMPT, 6, stop_ids=b.config.eos_token_ids or ()))
    paths = shard_bundles(b, 2, tmp_path / "shards")
    budget = max(minimum_budget(Bundle(p), None, **shard_plan_options(Bundle(p), max_context=32, max_batch_tokens=4,
                                                                      kv_dtype="f32")) for p in paths)
    cmd = ["mpirun", "--oversubscribe", "-np", "2", "--mca", "btl", "tcp,self", "--mca", "rtc", "^hwloc"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    cmd += [sys.executable, "-m", "edgespool.apps.cluster.tp_worker", str(models["dense"]), "--allreduce", "ring",
            "--prompt-ids", ",".join(map(str, PROMPT)), "-n", "6", "--no-kernels", "--shards",
            ",".join(map(str, paths)), "--budget", str(budget), "--max-context", "32", "--prefill-chunk", "4"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.returncode == 0, p.stderr[-2000:]
    objs = {o["rank"]: o for o in rank_objects(p.stdout)}
    assert objs[0]["tokens"] == want, json.dumps(objs[0])
    for r in range(2):
        assert objs[r]["bytes_read"] > 0 and objs[r]["streamed_per_token"] > 0
