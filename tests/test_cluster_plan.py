"""The pipeline assignment solver against brute-force enumeration of every subset and every cut."""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from edgespool.errors import OptionError
from edgespool.schedulers.cluster_plan import (BoardSpec, LinkSpec, link_cost, plan_cluster, stage_cost)


def _brute(boards, lb, head, hid, link):
    L, best = len(lb), float("inf")
    for k in range(1, min(len(boards), L) + 1):
        for sub in combinations(boards, k):
            for cuts in combinations(range(1, L), k - 1):
                edges = [0, *cuts, L]
                t = sum(stage_cost(b, lb, edges[i], edges[i + 1], head).time_s for i, b in enumerate(sub))
                best = min(best, t + link_cost(k, link, hid))
    return best


@pytest.mark.parametrize("seed", range(25))
def test_solver_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(1, 7))
    lb = [int(x) for x in rng.integers(1, 100, L) * 1_000_000]
    boards = []
    for i in range(int(rng.integers(1, 5))):
        wb = int(rng.integers(0, 300) * 1_000_000)
        rb = wb + int(rng.integers(0, 150)) * 1_000_000 if seed % 2 else None  # odd seeds: resident budgets too
        boards.append(BoardSpec(f"b{i}", float(rng.uniform(0.5, 4) * 1e9), wb, float(rng.uniform(0.05, 1) * 1e9), rb))
    link = LinkSpec(float(rng.choice([0.0003, 0.005, 0.05])), float(rng.choice([12.5e6, 125e6])))
    plan = plan_cluster(boards, lb, 20_000_000, 4 * 896, link)
    assert plan.token_s == pytest.approx(_brute(boards, lb, 20_000_000, 4 * 896, link), rel=1e-12)
    assert plan.stages[0].start == 0 and plan.stages[-1].stop == L
    assert all(a.stop == b.start for a, b in zip(plan.stages, plan.stages[1:]))


def test_slow_board_is_dropped_and_streaming_boards_split():
    lb = [10_000_000] * 8
    fast = [BoardSpec(n, 2e9, 25_000_000, 100e6) for n in ("a", "b")]
    slow = BoardSpec("slow", 1e7, 10**9, 1e9)  # 100x slower compute
    link = LinkSpec(0.0003, 125e6)
    plan = plan_cluster(fast + [slow], lb, 0, 3584, link)
    assert [s.board for s in plan.stages] == ["a", "b"]  # each streams half as much
    one = plan_cluster(fast[:1], lb, 0, 3584, link)
    assert one.token_s > 1.6 * plan.token_s
    assert "I/O" in plan.summary() and "link" in plan.summary()


def test_bad_board_is_a_clear_error():
    with pytest.raises(OptionError, match="board 'x'"):
        plan_cluster([BoardSpec("x", 0, 1, 1)], [1], 0, 4, LinkSpec(0, 1))


def test_a_share_that_fits_the_resident_budget_streams_nothing():
    """A board whose whole share fits its resident budget (no window needed) has no I/O; one byte more and it
    streams everything above its (smaller) streaming budget."""
    from edgespool.schedulers.cluster_plan import stage_cost

    layers = [100, 100, 100]
    b = BoardSpec("b", 1e3, weight_budget=150, storage_bps=10.0, resident_budget=300)
    assert stage_cost(b, layers, 0, 3, 0).io_s == 0.0
    assert stage_cost(b, layers, 0, 3, 1).io_s == pytest.approx((301 - 150) / 10.0)
    legacy = BoardSpec("b", 1e3, weight_budget=150, storage_bps=10.0)  # no resident budget: the streaming one
    assert stage_cost(legacy, layers, 0, 3, 0).io_s == pytest.approx(15.0)
