"""The static activation arena of a patch plan (the C project's one buffer): every activation buffer placed at an
offset so that buffers alive at the same step never overlap (greedy placement, best of three orders)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import OptionError
from ..runtime.bundle.cnn_graph import CnnGraph
from .patch_plan import PatchPlan, area


# -- static arena ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArenaBuffer:
    """One activation buffer in the static arena: live over steps [first, last] (inclusive)."""

    name: str
    size: int
    first: int
    last: int
    offset: int


def arena_layout(graph: CnnGraph, plan: PatchPlan, itemsize: int = 1,
                 alias: dict[str, str] | None = None) -> tuple[int, list[ArenaBuffer]]:
    """Place every activation buffer of ``plan`` in one arena (greedy: largest first, lowest non-overlapping
    offset among buffers whose lifetimes intersect). Stage-1 buffers are sized for the largest patch region.
    ``alias`` maps tensors that share their source's storage (reshape). Returns (arena bytes, buffers)."""
    if plan.inplace_depthwise:
        raise OptionError(f"{graph.name}: the static C arena does not implement in-place depthwise yet; plan with "
                          f"inplace_depthwise=False for the C project")
    alias = alias or {}
    last = graph.last_use()
    split = plan.split_index
    regions = plan.patch_regions()
    sizes: dict[str, int] = {}
    first: dict[str, int] = {graph.input: 0}
    end: dict[str, int] = {}
    t = graph.nodes[split].output if split >= 0 else None
    for i, n in enumerate(graph.nodes):
        first.setdefault(n.output, i)
    for name, shp in graph.shapes.items():
        root = alias.get(name, name)
        if root != name:
            continue
        full = int(1 if not shp else math.prod(shp)) * itemsize
        if split >= 0 and name != t and name in regions[0] and not (name == graph.input and plan.input_resident):
            full = max(shp[0] * area(r[name]) * itemsize for r in regions)
        sizes[name] = full
    for name in sizes:
        users = [k for k, v in alias.items() if v == name] + [name]
        e = max(last.get(u, first.get(u, 0)) for u in users)
        if split >= 0 and (name == t or (name == graph.input and plan.input_resident)):
            e = max(e, split)  # held through all of stage 1
        end[name] = e
    if split >= 0:  # the T buffer is written by every patch: live from the first stage-1 step
        first[t] = 0
    orders = [sorted(sizes, key=lambda n: (-sizes[n], first[n])),  # greedy by size (TFLite Micro)
              sorted(sizes, key=lambda n: (first[n], -sizes[n])),  # by first use
              sorted(sizes, key=lambda n: (-(end[n] - first[n]) * sizes[n], first[n]))]  # by size x lifetime
    best: tuple[int, list[ArenaBuffer]] | None = None
    for order in orders:
        placed = _place(order, sizes, first, end)
        total = max((b.offset + b.size for b in placed), default=0)
        if best is None or total < best[0]:
            best = (total, sorted(placed, key=lambda b: b.offset))
    assert best is not None
    return best


def _place(order: list[str], sizes: dict[str, int], first: dict[str, int], end: dict[str, int]) -> list[ArenaBuffer]:
    """Lowest 16-byte aligned offset for each buffer (in ``order``) not overlapping lifetime-overlapping ones."""
    placed: list[ArenaBuffer] = []
    for name in order:
        lo, hi, size = first[name], end[name], sizes[name]
        clashes = sorted((b.offset, b.offset + b.size) for b in placed if not (b.last < lo or b.first > hi))
        off = 0
        for a, b in clashes:
            if off + size <= a:
                break
            off = max(off, b)
        off = (off + 15) // 16 * 16
        # re-check after alignment
        while any(not (off + size <= a or off >= b) for a, b in clashes):
            off = (max(b for a, b in clashes if not (off + size <= a or off >= b)) + 15) // 16 * 16
        placed.append(ArenaBuffer(name, size, lo, hi, off))
    return placed
