"""Tensor parallel (issue 19): heads and FFN columns split across boards, one allreduce after each attention and
FFN block. In one process (boards as threads summing through a barrier, numpy reference kernels) the split gives
the single board's logits (f32 accumulation tolerance) for 2 and 3 boards, synthetic and the real SmolLM2-135M;
under mpirun (star and ring allreduce over MPI messages, 2 and 3 ranks) the single board's greedy tokens; the
allreduce moves 2 buffers a layer; a model that does not split gives one clear error."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import offload_synth as syn
from edgespool.errors import OptionError
from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.cluster.tensor import ShardWeights, check_tensor_parallel
from edgespool.runtime.decoder.engine import Engine
from edgespool.runtime.decoder.weights import ResidentWeights
from cluster_common import ThreadSum, greedy_reference, mpirun_reason

PROMPT = [1, 17, 42, 99, 7, 3]


@pytest.fixture(scope="module")
def dense6(tmp_path_factory):
    # 6 query heads, 6 KV heads, 384 FFN columns: splits 2 and 3 ways (int8, per-row scales)
    cfg = syn.dense_config(layers=4, hidden=96, heads=6, kv_heads=6, inter=384)
    return syn.make_bundle(tmp_path_factory.mktemp("tp") / "d6", cfg)


def _assemble(parts, engines) -> np.ndarray:
    """Each board's logits hold only its vocabulary rows: put them side by side."""
    ranges = [e.source.vocab_range for e in engines]
    assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    return np.concatenate([p[:, a:b] for p, (a, b) in zip(parts, ranges)], axis=1)


def _split_logits(path, n: int, prompt, steps: int = 3):
    red = ThreadSum(n)
    engines = [Engine(ShardWeights(Bundle(path), r, n, red.of(r)), kv_dtype="f32") for r in range(n)]
    want, toks = greedy_reference(path, prompt, steps)
    got: list[list] = [[] for _ in range(n)]

    def board(r):
        c = engines[r].new_cache(64)
        for inp in [prompt] + [[t] for t in toks]:
            got[r].append(engines[r].forward(inp, c, last_only=True))
    ts = [threading.Thread(target=board, args=(r,)) for r in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    caches = engines[0].new_cache(4)
    return want, got, caches, engines


@pytest.mark.parametrize("n", [2, 3])
def test_split_logits_equal_single_board(dense6, n):
    want, got, cache, engines = _split_logits(dense6, n, PROMPT)
    cfg = Bundle(dense6).config
    for step, w in enumerate(want):  # the boards' vocabulary slices together = the single board's logits
        whole = _assemble([got[r][step] for r in range(n)], engines)
        np.testing.assert_allclose(whole, w, rtol=1e-5, atol=1e-5)
        assert int(np.argmax(whole[-1])) == int(np.argmax(w[-1]))
    # each board's KV cache holds only its KV heads; its layers hold about 1/n of the layer bytes
    assert cache.k.shape[1] == cfg.num_kv_heads // n
    full = sum(g.nbytes for name, g in Bundle(dense6).groups.items() if name.startswith("layers."))
    mine = sum(v.nbytes for name in Bundle(dense6).groups if name.startswith("layers.")
               for v in engines[0].source.get(name).values())
    assert mine < full / n + full * 0.1
    head = Bundle(dense6).tensors["lm_head"]["nbytes"]  # and 1/n of the head's rows
    assert next(engines[0].source.head_chunks())[1].nbytes <= head / n + 4096


def test_real_smollm2_split_three_ways_equals_single_board(tmp_path_factory):
    """SmolLM2-135M (int8 from its GGUF; 9 query / 3 KV heads, 1536 FFN columns) split over 3 boards."""
    from serving_common import smol_bundle

    path = smol_bundle(tmp_path_factory)
    want, got, _, engines = _split_logits(path, 3, [1, 504, 3458, 314, 260, 1345], steps=2)
    for step, w in enumerate(want):
        whole = _assemble([got[r][step] for r in range(3)], engines)
        np.testing.assert_allclose(whole, w, rtol=1e-4, atol=1e-4)
        assert int(np.argmax(whole[-1])) == int(np.argmax(w[-1]))


def test_models_that_do_not_split_are_refused(dense6):
    cfg = Bundle(dense6).config
    with pytest.raises(OptionError, match="the model's 6 query heads do not split 4 ways"):
        check_tensor_parallel(cfg, 4)
    with pytest.raises(OptionError, match="dense models only"):
        check_tensor_parallel(syn.moe_config(), 2)


_mpirun_reason = mpirun_reason


@pytest.mark.skipif(_mpirun_reason() is not None, reason=_mpirun_reason() or "")
@pytest.mark.parametrize("algo,n", [("ring", 2), ("star", 2), ("ring", 3), ("star", 3)])
def test_mpirun_tensor_parallel_equals_single_board_tokens(dense6, algo, n):
    from edgespool.apps.cluster.launch import rank_objects

    b = Bundle(dense6)
    ref = Engine(ResidentWeights(b), kv_dtype="f32")
    want = list(ref.generate(PROMPT, 6, stop_ids=b.config.eos_token_ids or ()))
    cmd = ["mpirun", "--oversubscribe", "-np", str(n), "--mca", "btl", "tcp,self", "--mca", "rtc", "^hwloc"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    cmd += [sys.executable, "-m", "edgespool.apps.cluster.tp_worker", str(dense6), "--allreduce", algo,
            "--prompt-ids", ",".join(map(str, PROMPT)), "-n", "6", "--no-kernels"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.returncode == 0, p.stderr[-2000:]
    objs = {o["rank"]: o for o in rank_objects(p.stdout)}
    assert objs[0]["tokens"] == want, json.dumps(objs[0])
    L, passes = b.config.num_layers, len(want) + (len(want) < 6)  # prompt pass + one per token after the first (+ the EOS one)
    for r in range(n):
        assert objs[r]["calls"] == 2 * L * passes  # one allreduce after attention, one after the FFN, per layer
    per_call = 2 * (n - 1)  # star: the root sends n-1 sums, receives n-1 parts; ring: 2(n-1) chunks per board
    ring_msgs = [objs[r]["sent_messages"] for r in range(n)]
    if algo == "ring":
        assert all(m >= per_call * objs[r]["calls"] for r, m in enumerate(ring_msgs))
    else:
        assert ring_msgs[0] >= (n - 1) * objs[0]["calls"] and all(m >= objs[r]["calls"]
                                                                    for r, m in enumerate(ring_msgs[1:], 1))
