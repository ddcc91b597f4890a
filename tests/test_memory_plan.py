"""plan_memory: every byte accounted for and within the budget, the minimum working set refused with its size,
sensible priorities (pinned layers for dense, attention before experts for MoE), printable and JSON-able."""
from __future__ import annotations

import json

import pytest

import offload_synth as syn
from edgespool.errors import BudgetError, OptionError
from edgespool.offload.buffer_pool import BufferPool, PoolExhausted
from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.bundle.constants import align_up
from edgespool.schedulers.memory_plan import minimum_budget, plan_memory
from edgespool.schedulers.row_geometry import row_geometry
from edgespool.units import parse_bytes as parse_size
from edgespool.targets import get_target

KW = dict(max_context=64, max_batch_tokens=16, workspace=1 << 20)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return Bundle(syn.make_bundle(tmp_path_factory.mktemp("p") / "dense", syn.dense_config(layers=8)))


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    return Bundle(syn.make_bundle(tmp_path_factory.mktemp("p") / "moe", syn.moe_config(layers=4), quant="int4"))


def _covered(plan, bundle):
    return (set(plan.pinned_groups) | {f"layers.{i}" for i in plan.streamed_layers}
            | ({"embed"} if plan.embed_streamed else set()) | ({"head"} if plan.head_streamed else set()))


@pytest.mark.parametrize("which", ["dense", "moe"])
def test_every_budget_from_minimum_to_resident_fits_and_covers_the_model(which, request):
    b = request.getfixturevalue(which)
    lo = minimum_budget(b, None, **KW)
    gs = {g: align_up(i.nbytes) for g, i in b.groups.items()}
    prev_streamed = None
    for budget in range(lo, lo + sum(gs.values()) + 2 * 4096, 8192):
        p = plan_memory(b, None, budget, **KW)
        assert p.total_bytes <= budget
        assert p.pool_bytes == (p.pinned_group_bytes + p.pinned_tensor_bytes + p.layer_slots * p.layer_slot_bytes
                                + p.expert_cache_slots * p.expert_slot_bytes + p.io_staging_bytes)
        assert p.pinned_group_bytes == sum(gs[g] for g in p.pinned_groups)
        non_expert = {g for g in b.groups if ".experts." not in g}
        assert non_expert <= _covered(p, b)
        assert not set(p.pinned_groups) & {f"layers.{i}" for i in p.streamed_layers}
        if p.streamed_layers:
            assert p.layer_slots >= 1 and p.layer_slot_bytes >= max(gs[f"layers.{i}"] for i in p.streamed_layers)
        if b.config.is_moe and not p.is_resident:
            experts = [g for g in b.groups if ".experts." in g]
            assert p.expert_cache_slots + len(p.hot_experts) >= b.config.num_experts_per_tok or \
                set(experts) <= set(p.pinned_groups)
            assert p.expert_slot_bytes >= max(gs[g] for g in experts)
        # more memory never streams more dense bytes per token
        if prev_streamed is not None:
            assert p.streamed_bytes_per_token <= prev_streamed
        prev_streamed = p.streamed_bytes_per_token
    assert plan_memory(b, None, lo + sum(gs.values()) + (1 << 20), **KW).is_resident


def test_minimum_is_exact_and_named(dense):
    lo = minimum_budget(dense, None, **KW)
    assert plan_memory(dense, None, lo, **KW).layer_slots == 1
    with pytest.raises(BudgetError, match=f"minimum working set .*= {lo} bytes"):
        plan_memory(dense, None, lo - 1, **KW)


def test_dense_pins_layers_spread_over_the_depth(dense):
    lo = minimum_budget(dense, None, **KW)
    layer = align_up(dense.groups["layers.0"].nbytes)
    p = plan_memory(dense, None, lo + 4 * layer, **KW)  # 1 slot + 4 more layers of memory
    pinned = sorted(int(g.split(".")[1]) for g in p.pinned_groups if g.startswith("layers."))
    # a second slot first, then the (small, whole-size-per-token) head, then pinned layers
    assert p.window_depth == 1 and not p.head_streamed and len(pinned) == 2
    assert min(b - a for a, b in zip(pinned, pinned[1:])) >= 2  # not bunched together
    row = row_geometry(dense, "embed").read_bytes(0, 1)  # one embedding row's aligned read (each part a page)
    assert row == 4096 * len(dense.tensors["embed"]["parts"])
    assert p.embed_streamed
    assert p.streamed_bytes_per_token == sum(dense.groups[f"layers.{i}"].nbytes for i in p.streamed_layers) + row


def test_moe_pins_attention_layers_before_caching_experts(moe):
    lo = minimum_budget(moe, None, **KW)
    layers = sum(align_up(moe.groups[f"layers.{i}"].nbytes) for i in range(4))
    p = plan_memory(moe, None, lo + layers + 5 * align_up(moe.groups["layers.0.experts.0"].nbytes), **KW)
    assert not p.streamed_layers and p.window_depth == 0
    assert p.expert_cache_slots >= moe.config.num_experts_per_tok + 5
    assert len([t for t in p.pinned_tensors if t != "norm"]) == 2 * 4  # router + ffn_norm copies of every MoE layer


def test_hot_experts_are_pinned(moe):
    lo = minimum_budget(moe, None, **KW)
    hot = ["layers.1.experts.3", "layers.2.experts.0"]
    p = plan_memory(moe, None, lo + 300_000, hot_experts=hot, **KW)
    assert set(hot) <= set(p.pinned_groups) and p.hot_experts == tuple(hot)
    with pytest.raises(BudgetError, match="not an expert group"):
        plan_memory(moe, None, lo + 300_000, hot_experts=["layers.9.experts.0"], **KW)


def test_plan_prints_and_serialises(moe):
    p = plan_memory(moe, get_target("rpi5"), "3MiB", **KW)
    text = p.summary()
    for word in ("pinned weights", "layer window", "expert cache", "KV cache", "activation workspace", "total",
                 "rpi5"):
        assert word in text
    d = json.loads(json.dumps(p.to_dict()))
    assert d["total_bytes"] == p.total_bytes and d["budget_bytes"] == 3 << 20


@pytest.mark.parametrize("text,n", [("512MiB", 512 << 20), ("1.5GiB", int(1.5 * (1 << 30))), ("300MB", 300_000_000),
                                    ("4096", 4096), (" 2 gib ", 2 << 30)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "lots", "12 parsecs", "-5MiB", "0"])
def test_parse_size_rejects(text):
    with pytest.raises(OptionError, match="--memory-budget"):
        parse_size(text, "--memory-budget")


def test_buffer_pool_never_exceeds_the_plan():
    pool = BufferPool(10_000, {"layer": (5000, 2), "expert": (3000, 3)})
    assert pool.capacity == 12288 + 2 * 8192 + 3 * 4096
    a = pool.alloc_pinned(6000)
    assert a.ctypes.data % 4096 == 0
    with pytest.raises(PoolExhausted):
        pool.alloc_pinned(6000)  # 4 KiB-aligned start at 8192: past the 12288-byte region
    b = pool.alloc_pinned(6000, align=64)
    assert b.ctypes.data % 64 == 0 and b.ctypes.data - a.ctypes.data == 6016
    with pytest.raises(PoolExhausted):
        pool.alloc_pinned(1)
    s = [pool.alloc("layer"), pool.alloc("layer")]
    assert all(x.buf.ctypes.data % 4096 == 0 for x in s)
    assert len({x.buf.ctypes.data for x in s}) == 2
    with pytest.raises(PoolExhausted, match="no free 'layer' slot"):
        pool.alloc("layer")
    pool.free(s[0])
    with pytest.raises(PoolExhausted, match="double free"):
        pool.free(s[0])
    assert pool.alloc("layer").index == s[0].index
    with pytest.raises(PoolExhausted):
        pool.alloc("nonexistent")
