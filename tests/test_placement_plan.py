"""The CPU/GPU placement planner (schedulers/placement_plan.py), no GPU needed.

Inputs: CPU times MEASURED here (one decode token's products of a Qwen2.5-Coder-1.5B-shaped int8 layer, through
the numpy reference table); GPU and link figures MEASURED on the H200 GPU machine on 2026-12-02 (benchmarks/
gpu_split_bench.py, docs/GPU.md) and recorded here as inputs, not as expected outputs: 0.33 ms per GPU layer,
0.17 ms for the GPU head, 54 GB/s pinned host-to-device, 17 us per call. The Jetson Orin Nano's GPU times are
derived from its 68 GB/s LPDDR5 (NVIDIA's datasheet figure): bytes / bandwidth."""
from __future__ import annotations

import numpy as np
import pytest

from edgespool.errors import BudgetError
from edgespool.schedulers.placement_plan import (CPU, GPU, STREAM, GroupCost, LinkModel, link_for_profile,
                                                 plan_placement)

H200_LAYER_S, H200_HEAD_S, H200_BW, H200_CALL_S = 0.33e-3, 0.17e-3, 54e9, 17e-6
L, H, I, V = 28, 1536, 8960, 151936
KV = 2 * 2 * 4096 * 128 * 4  # f32 K and V of one layer, 4096 positions


@pytest.fixture(scope="module")
def cpu_times():
    """(layer seconds, layer bytes, head seconds per 16384 rows) measured here with the numpy reference."""
    from edgespool.kernels.quant import quantize
    from edgespool.kernels.table import REFERENCE
    from edgespool.offload.gpu_split import cpu_group_seconds

    rng = np.random.default_rng(0)
    shapes = {"wq": (H, H), "wk": (256, H), "wv": (256, H), "wo": (H, H), "gate": (I, H), "up": (I, H),
              "down": (H, I)}
    layer = {n: quantize(rng.standard_normal(s, dtype=np.float32), "int8") for n, s in shapes.items()}
    nbytes = sum(t.nbytes for t in layer.values())
    head = {"w": quantize(rng.standard_normal((16384, H), dtype=np.float32), "int8")}
    return cpu_group_seconds(layer, REFERENCE, 3), nbytes, cpu_group_seconds(head, REFERENCE, 3)


def _groups(cpu_times, gpu_layer_s=H200_LAYER_S, gpu_head_s=H200_HEAD_S, moe_layers=()):
    layer_s, lbytes, head_s_16k = cpu_times
    gs = [GroupCost(f"layers.{i}", "layer", lbytes, lbytes + KV, layer_s, gpu_layer_s, KV,
                    gpu_ok=i not in moe_layers, why_not="MoE layer" if i in moe_layers else "")
          for i in range(L)]
    hb = V * (H + 4)
    gs.append(GroupCost("head", "head", hb, hb, head_s_16k * V / 16384, gpu_head_s, streamable=False))
    return gs


LINK = LinkModel(H200_BW, H200_CALL_S, False, "H200 2026-12-02 (recorded)")
WS = 280 << 20


def test_whole_model_fits_everything_on_gpu(cpu_times):
    gs = _groups(cpu_times)
    total = sum(g.gpu_bytes for g in gs) + WS + (1 << 20)
    p = plan_placement(gs, LINK, total, workspace_bytes=WS, boundary_bytes=4 * H)
    assert all(g.where == GPU for g in p.groups)
    assert p.arena_bytes <= total and p.boundaries == 2  # embedding row in, logits out
    assert p.predicted_token_s < p.cpu_only_token_s
    assert p.h2d_bytes_per_token == 4 * H  # one hidden state crosses; weights never


@pytest.mark.parametrize("frac", [0.25, 0.5])
def test_partial_budget_bounded_contiguous_and_head_first(cpu_times, frac):
    gs = _groups(cpu_times)
    budget = int(sum(g.gpu_bytes for g in gs) * frac)
    p = plan_placement(gs, LINK, budget, workspace_bytes=WS, boundary_bytes=4 * H)
    assert p.arena_bytes <= budget
    assert p.resident_bytes + p.staging_bytes + p.workspace_bytes == p.arena_bytes
    on = [i for i in range(L) if p.where(f"layers.{i}") != CPU]
    assert on and on == list(range(on[0], on[-1] + 1))  # one run of GPU layers: two boundaries, not one per layer
    # the head saves the most time per byte (CPU head ~ 10x a layer's time for ~5x its bytes): placed first
    # once it fits beside the workspace (at 25% the staging slots and workspace leave less than its 233 MB)
    if frac == 0.5:
        assert p.where("head") != CPU
    assert "cost model" in p.summary() and "GB/s" in p.summary()


def test_streaming_when_link_beats_cpu(cpu_times):
    gs = _groups(cpu_times)
    layer_s, lbytes, _ = cpu_times
    assert LINK.copy_s(lbytes) < layer_s  # on this 2-core machine a 47 MB int8 layer computes slower than it copies
    budget = int(sum(g.gpu_bytes for g in gs) * 0.25)
    p = plan_placement(gs, LINK, budget, workspace_bytes=WS, boundary_bytes=4 * H, stream_kv_bytes=KV)
    assert any(g.where == STREAM for g in p.groups) and p.staging_bytes >= 2 * lbytes, p.summary()
    assert p.arena_bytes <= budget
    assert p.h2d_bytes_per_token >= sum(1 for g in p.groups if g.where == STREAM) * lbytes


def test_slow_link_keeps_cpu_and_gpu_only(cpu_times):
    gs = _groups(cpu_times)
    slow = LinkModel(1e6, 1e-3, False, "1 MB/s")
    p = plan_placement(gs, slow, int(sum(g.gpu_bytes for g in gs) * 0.25), workspace_bytes=WS,
                       boundary_bytes=4 * H)
    assert not any(g.where == STREAM for g in p.groups) and p.staging_bytes == 0


def test_below_gpu_minimum_is_one_line_budget_error(cpu_times):
    gs = _groups(cpu_times)
    with pytest.raises(BudgetError, match="below the GPU minimum") as e:
        plan_placement(gs, LINK, WS, workspace_bytes=WS, boundary_bytes=4 * H)
    assert "\n" not in str(e.value)


def test_gpu_incapable_groups_stay_on_cpu_with_reason(cpu_times):
    gs = _groups(cpu_times, moe_layers=(3, 4))
    p = plan_placement(gs, LINK, 1 << 40, workspace_bytes=WS, boundary_bytes=4 * H)
    assert p.where("layers.3") == CPU and p.where("layers.4") == CPU and p.where("layers.5") == GPU
    assert "cpu: MoE layer" in p.summary()
    assert p.boundaries == 4


def test_gpu_slower_than_cpu_keeps_cpu(cpu_times):
    layer_s = cpu_times[0]
    gs = _groups(cpu_times, gpu_layer_s=layer_s * 3, gpu_head_s=1.0)
    p = plan_placement(gs, LINK, 1 << 40, workspace_bytes=WS, boundary_bytes=4 * H)
    assert all(g.where == CPU for g in p.groups) and p.arena_bytes == p.workspace_bytes


def test_jetson_unified_memory_places_once_and_copies_nothing(cpu_times):
    from edgespool.targets import get_target

    orin = get_target("jetson-orin-nano")
    link = link_for_profile(orin, H200_BW, H200_CALL_S, "unused")
    assert link.unified and link.copy_s(1 << 30) == 0.0
    bw = 68e9  # Orin Nano 8GB LPDDR5, NVIDIA datasheet
    layer_s, lbytes, _ = cpu_times
    gs = _groups(cpu_times, gpu_layer_s=lbytes / bw, gpu_head_s=V * H / bw)
    p = plan_placement(gs, link, 3 << 30, workspace_bytes=WS, boundary_bytes=4 * H)
    assert not any(g.where == STREAM for g in p.groups)
    assert p.h2d_bytes_per_token == 0 and all(g.h2d_bytes == 0 for g in p.groups)
    assert p.arena_bytes <= 3 << 30 and any(g.where == GPU for g in p.groups)
    assert "shared DRAM" in p.summary()
    assert not link_for_profile(get_target("rpi5"), 1e9, 1e-5, "x").unified


def test_experts_follow_their_moe_layer():
    """plan_with_parents: an expert is worth the GPU only with its MoE layer (a CPU layer computes its experts).
    Here an expert saves more per byte than its big layer, and the budget holds the expert but not the layer:
    plain plan_placement puts the orphan expert on the GPU; plan_with_parents moves it to the CPU and says why;
    with room for both, both go to the GPU."""
    from edgespool.schedulers.placement_plan import GroupCost, plan_with_parents

    MB = 1 << 20
    layer = GroupCost("layers.0", "layer", 40 * MB, 40 * MB, 2e-3, 1e-4, streamable=False)
    experts = [GroupCost(f"layers.0.experts.{e}", "expert", 4 * MB, 4 * MB, 4e-3, 1e-4, calls=0.5,
                         streamable=False) for e in range(2)]
    head = GroupCost("head", "head", 8 * MB, 8 * MB, 1e-4, 1e-4, streamable=False)
    gs = [layer, *experts, head]
    parents = {g.name: "layers.0" for g in experts}
    kw = dict(workspace_bytes=1 * MB, boundary_bytes=4 * 64)
    small = 12 * MB
    assert plan_placement(gs, LINK, small, **kw).where("layers.0.experts.0") == "gpu"  # the orphan
    p = plan_with_parents(gs, LINK, small, parents, **kw)
    assert p.where("layers.0") == CPU and all(p.where(g.name) == CPU for g in experts)
    assert "its MoE layer layers.0 runs on the CPU" in p.summary()
    big = plan_with_parents(gs, LINK, 64 * MB, parents, **kw)
    assert big.where("layers.0") == "gpu" and all(big.where(g.name) == "gpu" for g in experts)
    assert big.arena_bytes <= 64 * MB


def test_tight_cap_takes_the_shorter_prompt_chunk():
    """Under a cap where the 256-token chunk's workspace leaves room for the head only, the 64-token chunk's leaves
    room for layers too and predicts faster decode: the planner takes it (and says so); a roomy cap keeps 256; a cap
    below the 256 chunk's GPU minimum still plans with 64 instead of refusing."""
    from edgespool.schedulers.placement_plan import plan_prefill_chunk
    from edgespool.units import fmt_bytes

    gs = _groups((0.9e-3, 47_000_000, 1.0e-3))  # an int8 1.5B layer on a fast CPU (no streaming pays off)
    ws = {256: 180 << 20, 64: 60 << 20}
    head = next(g for g in gs if g.kind == "head").gpu_bytes
    kw = dict(boundary_bytes=4 * H, stream_kv_bytes=KV)
    cap = ws[256] + head + (40 << 20)
    tight = plan_prefill_chunk(gs, LINK, cap, {}, (256, 64), ws.__getitem__, **kw)
    only256 = plan_prefill_chunk(gs, LINK, cap, {}, (256,), ws.__getitem__, **kw)
    layers = lambda p: sum(g.where == GPU and g.kind == "layer" for g in p.groups)  # noqa: E731
    assert tight.prefill_chunk == 64 and tight.workspace_bytes <= ws[64] + (1 << 20)
    assert layers(tight) > layers(only256)
    assert tight.predicted_token_s < only256.predicted_token_s
    assert "64-token prompt chunks" in tight.summary()
    big = sum(g.gpu_bytes for g in gs) + ws[256] + (64 << 20)
    assert plan_prefill_chunk(gs, LINK, big, {}, (256, 64), ws.__getitem__, **kw).prefill_chunk == 256
    small = min(g.gpu_bytes for g in gs) + ws[64] + (8 << 20)
    assert small < ws[256]
    assert plan_prefill_chunk(gs, LINK, small, {}, (256, 64), ws.__getitem__, **kw).prefill_chunk == 64
    with pytest.raises(BudgetError, match="below the GPU minimum") as e:
        plan_prefill_chunk(gs, LINK, 1 << 20, {}, (256, 64), ws.__getitem__, **kw)
    assert f"workspace {fmt_bytes(ws[64])}" in str(e.value)  # the smallest chunk's minimum, the one that counts


def test_prefill_graph_runs_and_padding():
    """Which GPU layers a prefill CUDA graph records (offload/gpu_prefill_graph.py, no GPU needed here): runs of
    resident dense layers, cut at CPU / streamed layers, at MoE layers and where the RoPE changes; prompt chunks
    padded to a multiple of 32 rows only within the planned chunk and the KV cache."""
    from edgespool.offload.gpu_layers import prefill_runs
    from edgespool.offload.gpu_prefill_graph import padded_rows
    from edgespool.runtime.bundle.config import ModelConfig

    base = dict(arch="llama", vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=6, num_heads=4,
                num_kv_heads=2, head_dim=32, max_position_embeddings=512)
    cfg = ModelConfig(**base)
    assert prefill_runs(cfg, [True] * 6) == {0: 6}
    assert prefill_runs(cfg, [False, True, True, False, True, True]) == {1: 3, 4: 6}
    assert prefill_runs(cfg, [False] * 6) == {}
    moe = ModelConfig(**base, num_experts=4, num_experts_per_tok=2, moe_layers=(1, 3, 5), moe_intermediate_size=64)
    assert prefill_runs(moe, [True] * 6) == {0: 1, 2: 3, 4: 5}
    nope = ModelConfig(**base, nope_layers=(3,))  # a layer without RoPE: its own run
    assert prefill_runs(nope, [True] * 6) == {0: 3, 3: 4, 4: 6}
    assert padded_rows(21, 0, 256, 4096) == 32 and padded_rows(64, 0, 256, 4096) == 64
    assert padded_rows(250, 0, 256, 4096) == 256 and padded_rows(250, 0, 64, 4096) == 250
    assert padded_rows(21, 4080, 256, 4096) == 21  # the padded rows would pass the KV cache
    assert padded_rows(300, 0, 256, 4096) == 300
