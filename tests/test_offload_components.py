"""Pieces of the streaming source checked on their own: the expert predictor against the engine's routing kernel,
the cache replacement policies on hand-worked sequences, the window's depth adaptation, the weight store's
bytes against the bundle reader and its bandwidth limiter."""
from __future__ import annotations

import time

import numpy as np
import pytest

import offload_synth as syn
from edgespool.errors import StorageError
from edgespool.kernels.linear import linear
from edgespool.kernels.moe import route
from edgespool.kernels.rmsnorm import rmsnorm
from edgespool.offload.buffer_pool import BufferPool
from edgespool.offload.expert_cache import ExpertCache
from edgespool.offload.expert_predictor import ExpertPredictor
from edgespool.offload.layer_window import LayerWindow
from edgespool.offload.weight_store import WeightStore
from edgespool.runtime.bundle.reader import Bundle


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    return Bundle(syn.make_bundle(tmp_path_factory.mktemp("c") / "moe", syn.moe_config(layers=4), quant="int8"))


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return Bundle(syn.make_bundle(tmp_path_factory.mktemp("c") / "dense", syn.dense_config(layers=6)))


def test_predictor_route_matches_engine_routing_kernel(moe):
    cfg = moe.config
    groups = {i: moe.read_group(f"layers.{i}") for i in range(cfg.num_layers)}
    routers = {i: (g[f"layers.{i}.router"].dequantize(), g[f"layers.{i}.ffn_norm"].dequantize())
               for i, g in groups.items()}
    pred = ExpertPredictor(cfg, routers)
    rng = np.random.default_rng(0)
    for i in range(cfg.num_layers):
        for T in (1, 5):
            x = rng.standard_normal((T, cfg.hidden_size)).astype(np.float32)
            h = rmsnorm(x, groups[i][f"layers.{i}.ffn_norm"].dequantize(), cfg.rms_norm_eps)
            _, idx = route(linear(h, groups[i][f"layers.{i}.router"]), cfg.num_experts_per_tok, cfg.norm_topk_prob)
            assert set(pred.route(i, x)) == set(np.unique(idx).tolist())


def test_predictor_scores_top_k_recall(moe):
    cfg = moe.config
    routers = {i: (moe.read_group(f"layers.{i}")[f"layers.{i}.router"].dequantize(),
                   np.ones(cfg.hidden_size, np.float32)) for i in range(cfg.num_layers)}
    pred = ExpertPredictor(cfg, routers)
    x = np.random.default_rng(1).standard_normal((1, cfg.hidden_size)).astype(np.float32)
    assert pred.next_layer(0) == 1 and pred.next_layer(3) is None
    p = pred.predict(1, x, limit=2)
    used = pred.route(1, x)  # same hidden state: the prediction is exactly right
    assert set(p) == set(used) and pred.accuracy == 1.0
    pred.predict(2, x, limit=1)  # one of two
    pred.route(2, x)
    assert pred.accuracy == pytest.approx(3 / 4)


def _cache(moe, capacity, policy, **kw):
    store = WeightStore(moe)
    size = max(g.nbytes for n, g in moe.groups.items() if ".experts." in n)
    pool = BufferPool(0, {"expert": (size, capacity)})
    t = {"now": 0.0}
    return ExpertCache(store, pool, policy=policy, clock=lambda: t["now"], **kw), t, store


def _use(cache, t, seq):
    for step, e in enumerate(seq):
        t["now"] = float(step)
        g = f"layers.0.experts.{e}"
        cache.get(g)
        cache.release(g)


def test_lru_evicts_least_recent(moe):
    cache, t, store = _cache(moe, 2, "lru")
    try:
        _use(cache, t, [0, 1, 0, 2])  # 1 is least recent when 2 arrives
        assert set(cache.entries) == {"layers.0.experts.0", "layers.0.experts.2"}
        assert (cache.hits, cache.misses) == (1, 3)
    finally:
        store.close()


def test_lrfu_keeps_the_frequent_expert(moe):
    cache, t, store = _cache(moe, 2, "lrfu", lam=0.1)
    try:
        _use(cache, t, [0, 0, 0, 1, 2])  # LRU would evict 0 (least recent); LRFU keeps the thrice-used 0
        assert set(cache.entries) == {"layers.0.experts.0", "layers.0.experts.2"}
    finally:
        store.close()
    cache, t, store = _cache(moe, 2, "lru")
    try:
        _use(cache, t, [0, 0, 0, 1, 2])
        assert set(cache.entries) == {"layers.0.experts.1", "layers.0.experts.2"}
    finally:
        store.close()


def test_prefetch_never_evicts_protected_experts(moe):
    cache, t, store = _cache(moe, 2, "lru")
    try:
        _use(cache, t, [0, 1])
        cache.protected = {"layers.0.experts.0", "layers.0.experts.1"}
        assert cache.prefetch(["layers.0.experts.5"], 0.0, predicted=True) == 0
        cache.protected = {"layers.0.experts.1"}
        assert cache.prefetch(["layers.0.experts.5"], 0.0, predicted=True) == 1
        assert set(cache.entries) == {"layers.0.experts.1", "layers.0.experts.5"}
        cache.get("layers.0.experts.5")
        assert cache.predicted_hits == 1 and cache.prefetch_used == 1
    finally:
        store.close()


class _SlowLimiter:
    def __init__(self, bps):
        self.bps = bps

    def acquire(self, n):
        time.sleep(n / self.bps)


@pytest.mark.parametrize("compute_s,slow_reads,want", [(0.02, False, 1), (0.0, True, 3)])
def test_window_depth_adapts_to_read_vs_compute_time(dense, compute_s, slow_reads, want):
    layer = dense.groups["layers.0"].nbytes
    store = WeightStore(dense, rate_limiter=_SlowLimiter(layer / 0.03) if slow_reads else None, io_threads=1)
    pool = BufferPool(0, {"layer": (layer, 4)})
    win = LayerWindow(store, pool, tuple(range(6)), 6)
    try:
        for _ in range(3):
            for i in range(6):
                win.get(i)
                time.sleep(compute_s)
                win.release(i)
        assert win.depth == want
        assert win.stats()["requests"] == 18
    finally:
        store.close()


def test_store_reads_the_bundles_bytes(dense):
    store = WeightStore(dense, chunk_bytes=4096)  # many chunks per group, out of order across threads
    pool = BufferPool(0, {"layer": (dense.groups["layers.1"].nbytes, 1)})
    try:
        got = store.read("layers.1", pool.alloc("layer").buf)
        ref = dense.read_group("layers.1")
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(got[k].data, ref[k].data)
            if ref[k].scale is not None:
                np.testing.assert_array_equal(got[k].scale, ref[k].scale)
        with pytest.raises(StorageError, match="no group"):
            store.submit("layers.99", pool.alloc_pinned(0) if False else np.empty(0, np.uint8))
    finally:
        store.close()


def test_rate_limiter_from_env_throttles_reads(dense, monkeypatch):
    pytest.importorskip("edgespool.runtime.bundle.ratelimit")
    monkeypatch.setenv("EDGESPOOL_IO_BANDWIDTH", "2MB/s")
    store = WeightStore(dense)
    pool = BufferPool(0, {"layer": (dense.groups["layers.0"].nbytes, 6)})
    try:
        assert store.rate_limiter is not None
        t0 = time.perf_counter()
        futs = [store.submit(f"layers.{i}", pool.alloc("layer").buf) for i in range(6)]
        for i, f in enumerate(futs):
            store.wait(f"layers.{i}", f)
        dt = time.perf_counter() - t0
    finally:
        store.close()
    expect = store.bytes_read / 2e6
    assert 0.8 * expect < dt < 1.5 * expect + 0.1


def test_lrfu_evicts_experts_passed_over_at_their_layer_first_and_predictions_evict_only_those(moe):
    # two layers visited cyclically; capacity 3. Token 1: layer0 uses e0, layer1 uses e1. Token 2: layer0 uses
    # e2 -> e0 was passed over at layer 0 (stale) while e1 (layer 1 not yet revisited) is hot.
    cache, t, store = _cache(moe, 3, "lrfu", lam=0.1)
    try:
        for now, g in ((0.0, "layers.0.experts.0"), (0.5, "layers.1.experts.1"), (1.0, "layers.0.experts.2")):
            t["now"] = now
            cache.get(g)
            cache.release(g)
        # a predicted read may only evict the stale e0, never the hot e1 or e2 ...
        assert cache.prefetch(["layers.1.experts.3"], 1.0, predicted=True) == 1
        assert "layers.0.experts.0" not in cache.entries and "layers.1.experts.1" in cache.entries
        # ... and with nothing stale left it is skipped instead of evicting a hot expert
        assert cache.prefetch(["layers.1.experts.4"], 1.0, predicted=True) == 0 and cache.prefetch_skipped == 1
        # a demand miss still gets a slot (from the hot ones, lowest CRF)
        t["now"] = 1.5
        cache.get("layers.1.experts.5")
        assert len(cache.entries) == 3
    finally:
        store.close()


def test_lrfu_evicts_the_hot_expert_whose_layer_comes_round_last(moe):
    # 4 layers, 1 expert each per token, cache of 3 < 4 (a token's working set): at layer 3 of token 1 every cached
    # expert is hot; LRU would evict layer 0's (needed next), Belady for the cyclic order evicts layer 2's.
    for policy, gone in (("lrfu", "layers.2.experts.0"), ("lru", "layers.0.experts.0")):
        cache, t, store = _cache(moe, 3, policy, working_set=4, num_layers=4)
        try:
            for layer in range(4):
                t["now"] = layer / 4
                g = f"layers.{layer}.experts.0"
                cache.visit(layer)
                cache.get(g)
                cache.release(g)
            assert gone not in cache.entries and len(cache.entries) == 3
        finally:
            store.close()


def test_predictor_keeps_only_confident_second_predictions(moe):
    cfg = moe.config
    routers = {i: (moe.read_group(f"layers.{i}")[f"layers.{i}.router"].dequantize(),
                   np.ones(cfg.hidden_size, np.float32)) for i in range(cfg.num_layers)}
    x = np.random.default_rng(1).standard_normal((1, cfg.hidden_size)).astype(np.float32)
    assert len(ExpertPredictor(cfg, routers).predict(1, x, limit=8)) == cfg.num_experts_per_tok
    strict = ExpertPredictor(cfg, routers, min_prob=0.999)
    assert len(strict.predict(1, x, limit=8)) == 1  # the first prediction is always kept
    xs = np.repeat(x, 3, axis=0)  # prompts (T > 1) are not filtered
    assert len(strict.predict(1, xs, limit=8)) == cfg.num_experts_per_tok
