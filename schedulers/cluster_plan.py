"""The pipeline-parallel assignment solver (issue 19): contiguous layer ranges per board, a pure function.

Cost model of one decode token (one sequence: the stages run one after another, so times ADD):

    board time  = max(compute, I/O)          the streaming window overlaps reads with compute
    compute     = bytes of its layers (+ head on the last stage) / the board's compute rate (bytes/s: decode is
                  memory-bound, so a measured GEMV rate in weight bytes per second)
    I/O         = 0 when those bytes fit the board's resident budget (its plan then keeps them all: no streaming
                  window or staging), else max(0, those bytes - the board's streaming budget for weights) / its
                  storage read rate
    link        = hops x (latency + message bytes / bandwidth); hops = stages (n - 1 hidden rows forward, the
                  token id back; none for one board)

:func:`plan_cluster` tries every order-preserving subset of the boards (so a board that slows the whole is
dropped) and, for each, the best contiguous cut by dynamic programming; it returns the fastest plan and its
predicted split. A simplification, stated: the budget is taken as bytes available for weights (the planner's
KV cache, workspace and window slots must be subtracted by the caller), streamed bytes = overflow.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from ..errors import OptionError


@dataclass(frozen=True)
class BoardSpec:
    name: str
    compute_bps: float  # weight bytes per second its decode kernels get through
    weight_budget: int  # bytes its memory plan can keep for weights while streaming the rest
    storage_bps: float  # cold read rate of its storage
    resident_budget: int | None = None  # bytes for weights when its whole share fits (None: weight_budget)


@dataclass(frozen=True)
class LinkSpec:
    latency_s: float  # one way
    bandwidth_bps: float  # bytes per second


@dataclass(frozen=True)
class StageCost:
    board: str
    start: int
    stop: int
    compute_s: float
    io_s: float

    @property
    def time_s(self) -> float:
        return max(self.compute_s, self.io_s)


@dataclass(frozen=True)
class ClusterPlan:
    stages: tuple[StageCost, ...]
    link_s: float

    @property
    def token_s(self) -> float:
        return sum(s.time_s for s in self.stages) + self.link_s

    def summary(self) -> str:
        lines = [f"predicted {1 / self.token_s:.2f} tok/s ({self.token_s * 1e3:.1f} ms/token: compute "
                 f"{sum(s.compute_s for s in self.stages) * 1e3:.1f} ms, I/O {sum(s.io_s for s in self.stages) * 1e3:.1f}"
                 f" ms, link {self.link_s * 1e3:.1f} ms)"]
        for s in self.stages:
            lines.append(f"  {s.board}: layers {s.start}..{s.stop - 1}  compute {s.compute_s * 1e3:.1f} ms  "
                         f"I/O {s.io_s * 1e3:.1f} ms")
        return "\n".join(lines)


def stage_cost(board: BoardSpec, layer_bytes: list[int], start: int, stop: int, head_bytes: int) -> StageCost:
    """The predicted decode-token cost of ``board`` running layers ``[start, stop)`` (+ the head when last)."""
    nbytes = sum(layer_bytes[start:stop]) + (head_bytes if stop == len(layer_bytes) else 0)
    fits = board.resident_budget if board.resident_budget is not None else board.weight_budget
    io = 0.0 if nbytes <= fits else max(0, nbytes - board.weight_budget) / board.storage_bps
    return StageCost(board.name, start, stop, nbytes / board.compute_bps, io)


def link_cost(n_stages: int, link: LinkSpec, hidden_bytes: int) -> float:
    """Per token: n - 1 hidden-row hops forward and one int64 token back (0 for one board)."""
    if n_stages <= 1:
        return 0.0
    return (n_stages - 1) * (link.latency_s + hidden_bytes / link.bandwidth_bps) + link.latency_s + 8 / link.bandwidth_bps


def _best_cut(boards: list[BoardSpec], layer_bytes: list[int], head_bytes: int) -> tuple[float, list[StageCost]]:
    """Min over contiguous cuts of L layers into len(boards) non-empty ranges (in board order) of the summed time."""
    L, k = len(layer_bytes), len(boards)
    INF = float("inf")
    best = [[(INF, [])] * (L + 1) for _ in range(k + 1)]
    best[0][0] = (0.0, [])
    for j in range(1, k + 1):
        for stop in range(j, L + 1):
            cand = (INF, [])
            for start in range(j - 1, stop):
                prev, stages = best[j - 1][start]
                if prev == INF:
                    continue
                s = stage_cost(boards[j - 1], layer_bytes, start, stop, head_bytes)
                if prev + s.time_s < cand[0]:
                    cand = (prev + s.time_s, stages + [s])
            best[j][stop] = cand
    return best[k][L]


def plan_on(boards: list[BoardSpec], layer_bytes: list[int], head_bytes: int, hidden_bytes: int,
            link: LinkSpec) -> ClusterPlan:
    """The best contiguous cut over exactly ``boards`` (every one used, in order)."""
    if not 1 <= len(boards) <= len(layer_bytes):
        raise OptionError(f"cluster plan: {len(boards)} boards for {len(layer_bytes)} layers")
    _, stages = _best_cut(list(boards), layer_bytes, head_bytes)
    return ClusterPlan(tuple(stages), link_cost(len(boards), link, hidden_bytes))


def plan_cluster(boards: list[BoardSpec], layer_bytes: list[int], head_bytes: int, hidden_bytes: int,
                 link: LinkSpec) -> ClusterPlan:
    """The fastest pipeline plan over any order-preserving subset of ``boards`` (see the module docstring)."""
    if not boards:
        raise OptionError("cluster plan: give at least one board")
    if not layer_bytes:
        raise OptionError("cluster plan: the model has no layers")
    for b in boards:
        if b.compute_bps <= 0 or b.storage_bps <= 0 or b.weight_budget < 0:
            raise OptionError(f"cluster plan: board {b.name!r} needs positive compute and storage rates")
    best: ClusterPlan | None = None
    for k in range(1, min(len(boards), len(layer_bytes)) + 1):
        for subset in combinations(boards, k):
            total, stages = _best_cut(list(subset), layer_bytes, head_bytes)
            plan = ClusterPlan(tuple(stages), link_cost(k, link, hidden_bytes))
            if best is None or plan.token_s < best.token_s - 1e-15:
                best = plan
    assert best is not None
    return best


# -- tensor parallel ------------------------------------------------------------------------------------------
# Every board runs every layer on its shard (its heads and FFN columns, its vocabulary rows of the head), so the
# boards work AT THE SAME TIME: a token costs the slowest board's max(compute, I/O) plus the allreduces (one for
# the embedding, one after each attention and each FFN block) and the greedy-token exchange. An allreduce of a
# hidden row of B bytes over n boards: ring = 2(n - 1) steps of (latency + B / n / bandwidth); star = 2 hops of
# (latency + (n - 1) B / bandwidth) (the root's link carries every board's buffer). Simplification, stated: the
# 2L + 1 synchronisation points a token make each segment wait for its slowest board; the model takes the slowest
# board's total (equal shards on equal boards: the same).


@dataclass(frozen=True)
class TensorPlan:
    boards: tuple[StageCost, ...]  # each board over all layers (start..stop = every layer)
    link_s: float
    allreduces: int  # per decode token
    algo: str

    @property
    def token_s(self) -> float:
        return max(s.time_s for s in self.boards) + self.link_s

    def summary(self) -> str:
        slow = max(self.boards, key=lambda s: s.time_s)
        lines = [f"predicted {1 / self.token_s:.2f} tok/s ({self.token_s * 1e3:.1f} ms/token, tensor parallel over "
                 f"{len(self.boards)} boards in parallel: slowest board compute {slow.compute_s * 1e3:.1f} ms, I/O "
                 f"{slow.io_s * 1e3:.1f} ms; link {self.link_s * 1e3:.1f} ms = {self.allreduces} {self.algo} "
                 f"allreduces + the token exchange)"]
        for s in self.boards:
            lines.append(f"  {s.board}: its shard of layers {s.start}..{s.stop - 1} + head rows  compute "
                         f"{s.compute_s * 1e3:.1f} ms  I/O {s.io_s * 1e3:.1f} ms")
        return "\n".join(lines)


def allreduce_cost(n: int, link: LinkSpec, nbytes: int, algo: str = "ring") -> float:
    """One allreduce of ``nbytes`` over ``n`` boards (see above); 0 for one board."""
    if n <= 1:
        return 0.0
    if algo == "ring":
        return 2 * (n - 1) * (link.latency_s + nbytes / n / link.bandwidth_bps)
    if algo == "star":
        return 2 * (link.latency_s + (n - 1) * nbytes / link.bandwidth_bps)
    raise OptionError(f"allreduce {algo!r}: star or ring")


def plan_tensor(boards: list[BoardSpec], shard_bytes: list[int], n_layers: int, hidden_bytes: int, link: LinkSpec,
                algo: str = "ring") -> TensorPlan:
    """The predicted decode token of a tensor-parallel run: board i streams its ``shard_bytes[i]`` (its layer
    slices + head rows read per token) under its weight budget; ``2 n_layers + 1`` allreduces of one hidden row,
    then each board's best (logit, id) to board 0 and the token back (2 hops)."""
    if not boards or len(boards) != len(shard_bytes):
        raise OptionError(f"cluster plan: {len(boards)} boards for {len(shard_bytes)} shards")
    for b in boards:
        if b.compute_bps <= 0 or b.storage_bps <= 0 or b.weight_budget < 0:
            raise OptionError(f"cluster plan: board {b.name!r} needs positive compute and storage rates")
    costs = tuple(StageCost(b.name, 0, n_layers, nb / b.compute_bps, max(0, nb - b.weight_budget) / b.storage_bps)
                  for b, nb in zip(boards, shard_bytes))
    n = len(boards)
    calls = 2 * n_layers + 1 if n > 1 else 0
    token = 2 * (link.latency_s + 16 / link.bandwidth_bps) if n > 1 else 0.0
    return TensorPlan(costs, calls * allreduce_cost(n, link, hidden_bytes, algo) + token, calls, algo)
