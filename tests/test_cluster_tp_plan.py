"""The memory plan of a tensor-parallel shard bundle counts the logits row the engine really allocates: the shard's
own config has its vocabulary slice, but the engine over ShardSource (the whole model's config) fills a row of the
WHOLE vocabulary, so the plan reserves the difference (runtime/cluster/tensor_stream.py logits_reserve) and the
cluster planner's weight budget (apps/cluster/solve.py weight_budget) takes it off too."""
from __future__ import annotations

import numpy as np
import offload_synth as syn
import pytest
from edgespool.apps.cluster.solve import weight_budget
from edgespool.errors import BudgetError
from edgespool.exporters.tensor_shard import shard_bundles
from edgespool.runtime.bundle.constants import align_up
from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.cluster.tensor_stream import (
    logits_reserve,
    open_shard,
    shard_plan_options,
)
from edgespool.schedulers.memory_plan import minimum_budget, plan_memory

KW = {"max_context": 64, "max_batch_tokens": 16, "kv_dtype": "f32"}
VOCAB = 4096  # big enough that a missing logits row is far more than the plan's alignment


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("tpplan")
    out = {}
    for tie in (False, True):
        src = syn.make_bundle(d / f"m{int(tie)}", syn.dense_config(vocab=VOCAB, layers=3, hidden=64, heads=4,
                                                                   kv_heads=2, inter=128, tie=tie))
        out[tie] = (Bundle(src), shard_bundles(Bundle(src), 2, d / f"s{int(tie)}"))
    return out


@pytest.mark.parametrize("tie", [False, True])
def test_shard_plan_reserves_the_whole_vocabulary_logits_row(shards, tie):
    whole, paths = shards[tie]
    V = whole.config.vocab_size
    for rank, p in enumerate(paths):
        sb = Bundle(p)
        Vs = sb.config.vocab_size
        assert Vs < V
        extra = logits_reserve(sb)
        assert extra == align_up(4 * (V - Vs), 64) > 0
        assert logits_reserve(whole) == 0  # not a shard: nothing added
        old_min = minimum_budget(sb, None, **KW)  # the shard's plan as it was (slice-sized logits)
        new_min = minimum_budget(sb, None, **shard_plan_options(sb, **KW))
        assert new_min == old_min + extra
        with pytest.raises(BudgetError):  # the old minimum no longer fits the logits the run allocates
            open_shard(p, lambda x: x, budget=old_min, **KW)
        eng = open_shard(p, lambda x: x, budget=new_min, **KW)
        try:
            plan = eng.source.inner.plan
            assert plan.reserved_bytes == extra and "logits" in plan.reserved_for
            assert not plan.is_resident and plan.total_bytes <= new_min
            # what the run allocates: one float32 row of the WHOLE vocabulary; the plan counts 4 * Vs of it in
            # its workspace estimate and the rest in the reservation
            out = eng.forward([1, 2, 3], eng.new_cache(8), last_only=True)
            assert out.shape == (1, V) and out.dtype == np.float32
            assert out.nbytes - 4 * Vs <= plan.reserved_bytes < out.nbytes - 4 * Vs + 64
        finally:
            eng.source.inner.close()


@pytest.mark.parametrize("tie", [False, True])
def test_cluster_weight_budget_takes_the_logits_reservation_off(shards, tie):
    _, paths = shards[tie]
    sb = Bundle(paths[0])
    extra = logits_reserve(sb)
    budget = minimum_budget(sb, None, **shard_plan_options(sb, **KW)) + 64 * 1024
    # a plan reserving r bytes of B is the plan of B - r without the reservation: the weights get what that leaves
    p = plan_memory(sb, None, budget - extra, max_context=64, kv_dtype="f32")
    want = budget - extra - (p.kv_cache_bytes + p.workspace_bytes + p.io_staging_bytes + p.window_bytes)
    assert weight_budget(sb, budget, 64) == want
