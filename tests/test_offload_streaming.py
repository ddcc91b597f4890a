"""StreamingWeights under a budget that forces eviction gives exactly the resident engine's logits and tokens (dense
and MoE), reads bypass the page cache, and faults (read error, stall, truncated / removed file) end in a clear
StorageError, never a hang or a wrong token."""
from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

import offload_synth as syn
from edgespool.errors import BudgetError, StorageError
from edgespool.offload.streaming_source import StreamingWeights, open_streaming
from edgespool.offload.weight_store import fault_from_env
from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.decoder.engine import Engine
from edgespool.runtime.decoder.weights import ResidentWeights
from edgespool.schedulers.memory_plan import minimum_budget, plan_memory

PLAN_KW = dict(max_context=64, max_batch_tokens=16, workspace=1 << 20, kv_dtype="f32")  # exactness at f32
PROMPT = [1, 17, 42, 99, 7, 3, 150, 201]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return Bundle(syn.make_bundle(tmp_path_factory.mktemp("b") / "dense", syn.dense_config(layers=6)))


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    return Bundle(syn.make_bundle(tmp_path_factory.mktemp("b") / "moe", syn.moe_config(layers=4), quant="int4"))


def _tight_plan(bundle, extra_layers=1, extra_experts=2):
    """A plan just above the minimum: few layer slots, few expert slots (forces eviction)."""
    lo = minimum_budget(bundle, None, **PLAN_KW)
    layer = max(g.nbytes for n, g in bundle.groups.items() if n.startswith("layers.") and ".experts." not in n)
    exp = max((g.nbytes for n, g in bundle.groups.items() if ".experts." in n), default=0)
    return plan_memory(bundle, None, lo + extra_layers * (layer + 4096) + extra_experts * (exp + 4096), **PLAN_KW)


def _run(source, n=10):
    eng = Engine(source)
    cache = eng.new_cache(64)
    logits = [eng.forward(PROMPT, cache)]
    toks = []
    for _ in range(n):
        toks.append(int(np.argmax(logits[-1][-1])))
        logits.append(eng.forward([toks[-1]], cache))
    return toks, logits


@pytest.mark.parametrize("which", ["dense", "moe"])
def test_streaming_matches_resident_exactly_under_eviction(which, request):
    bundle = request.getfixturevalue(which)
    plan = _tight_plan(bundle)  # MoE: top-k expert slots only, layers streamed
    assert plan.streamed_layers and plan.total_bytes <= plan.budget_bytes
    ref_toks, ref_logits = _run(ResidentWeights(bundle))
    sw = StreamingWeights(bundle, plan)
    try:
        toks, logits = _run(sw)
        st = sw.stats()
    finally:
        sw.close()
    assert toks == ref_toks
    for a, b in zip(logits, ref_logits):
        np.testing.assert_array_equal(a, b)  # bit-identical: same bytes, same kernels
    # eviction really happened: the streamed layers were read once per forward pass (11 passes)
    n_chunks = -(-bundle.config.vocab_size // plan.head_chunk_rows) if plan.head_streamed else 0
    n_streamed = len(plan.streamed_layers) + n_chunks  # layers and head chunks share the window
    assert plan.layer_slots < n_streamed + 1
    assert st["window"]["requests"] == 11 * n_streamed
    assert st["window"]["misses"] + st["window"]["ready_hits"] + st["window"]["inflight_hits"] == 11 * n_streamed
    assert st["bytes_read"] > bundle.weights_nbytes
    if which == "moe":
        c = st["expert_cache"]
        assert c["capacity"] < bundle.config.num_experts * bundle.config.num_layers
        assert c["requests"] > 0 and c["prefetch_wasted"] >= 0
        assert c["hits"] + c["predicted_hits"] + c["lookahead_misses"] + c["demand_misses"] + c["pinned_hits"] \
            == c["requests"]


def test_moe_with_prediction_room_is_exact_and_scores_predictions(moe):
    plan = _tight_plan(moe, extra_layers=0, extra_experts=12)
    assert plan.expert_cache_slots < moe.config.num_experts * moe.config.num_layers
    ref_toks, ref_logits = _run(ResidentWeights(moe))
    sw = StreamingWeights(moe, plan)
    try:
        toks, logits = _run(sw)
        st = sw.stats()
    finally:
        sw.close()
    assert toks == ref_toks
    for a, b in zip(logits, ref_logits):
        np.testing.assert_array_equal(a, b)
    assert st["predictor"]["scored_experts"] > 0 and 0 <= st["predictor"]["accuracy"] <= 1
    assert st["expert_cache"]["prefetch_issued"] > 0


def test_streaming_without_prediction_or_lookahead_is_exact(moe):
    plan = _tight_plan(moe, extra_experts=0)
    ref_toks, _ = _run(ResidentWeights(moe), n=6)
    sw = StreamingWeights(moe, plan, predict=False, lookahead=False, cache_policy="lru", io_threads=1)
    try:
        toks, _ = _run(sw, n=6)
        assert sw.stats()["expert_cache"]["demand_misses"] > 0
    finally:
        sw.close()
    assert toks == ref_toks


def test_open_streaming_and_generous_budget_pins_everything(dense):
    sw = open_streaming(dense, "64MiB", **PLAN_KW)
    try:
        assert sw.plan.is_resident
        toks, _ = _run(sw, n=4)
        assert sw.stats()["window"]["requests"] == 0
        assert sw.store.bytes_read == sum(-(-g.nbytes // 4096) * 4096 for g in dense.groups.values())
    finally:
        sw.close()
    assert toks == _run(ResidentWeights(dense), n=4)[0]


def test_reads_bypass_the_page_cache(dense):
    pc = pytest.importorskip("edgespool.apps.rig.pagecache")
    plan = _tight_plan(dense)
    pc.evict(dense.weights_path)
    sw = StreamingWeights(dense, plan)
    try:
        _run(sw, n=3)
        mode = sw.store.mode
    finally:
        sw.close()
    cached, total = pc.resident_bytes(dense.weights_path)
    assert mode in ("O_DIRECT", "buffered+fadvise(DONTNEED)")
    assert cached <= 0.05 * total, f"{cached} of {total} bytes left in the page cache ({mode})"


def test_buffered_fallback_is_exact(dense):
    plan = _tight_plan(dense)
    sw = StreamingWeights(dense, plan, direct=False)
    try:
        assert sw.store.mode.startswith("buffered")
        toks, _ = _run(sw, n=4)
    finally:
        sw.close()
    assert toks == _run(ResidentWeights(dense), n=4)[0]


def test_budget_below_minimum_names_the_minimum(moe):
    lo = minimum_budget(moe, None, **PLAN_KW)
    plan_memory(moe, None, lo, **PLAN_KW)  # exactly the minimum works
    with pytest.raises(BudgetError, match=rf"minimum working set .*{lo} bytes"):
        plan_memory(moe, None, lo - 1, **PLAN_KW)


# -- faults -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,match", [("eio", "read error in group 'layers.3'"),
                                        ("short", "truncated while reading group 'layers.3'")])
def test_injected_read_fault_is_a_storage_error(dense, kind, match):
    sw = StreamingWeights(dense, _tight_plan(dense), fault=fault_from_env(f"{kind}:layers.3"))
    try:
        with pytest.raises(StorageError, match=match) as ei:
            _run(sw, n=2)
        assert str(dense.weights_path) in str(ei.value)
    finally:
        sw.close()


def test_stalled_read_times_out(dense):
    sw = StreamingWeights(dense, _tight_plan(dense), fault=fault_from_env("hang:layers.2"), read_timeout_s=1.0)
    t0 = time.perf_counter()
    try:
        with pytest.raises(StorageError, match="did not finish in 1 s"):
            _run(sw, n=2)
    finally:
        sw.close()
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("how", ["truncate", "remove"])
def test_weights_file_truncated_or_removed_while_running(dense, tmp_path, how):
    copy = tmp_path / "bundle"
    shutil.copytree(dense.path, copy)
    b = Bundle(copy)
    sw = StreamingWeights(b, _tight_plan(b))
    try:
        eng = Engine(sw)
        cache = eng.new_cache(64)
        eng.forward(PROMPT, cache)
        if how == "truncate":
            os.truncate(b.weights_path, b.groups["layers.2"].offset + 100)
            match = "truncated"
        else:
            os.unlink(b.weights_path)
            match = "removed while running"
        with pytest.raises(StorageError, match=match):
            for _ in range(3):
                eng.forward([5], cache)
    finally:
        sw.close()
