"""Patch-based inference planning (MCUNetV2): split point, patch grid, receptive-field halos, peak memory, arena.

Memory definition (MCUNetV2's): activations are int8 (1 byte/element unless ``itemsize`` says otherwise); while a
layer runs, the memory held is its input(s) + its output + every other activation still needed later (residual
branches). The peak over all layers is the *peak activation memory*. Weights (flash) and kernel scratch (im2col)
are not counted.

Patch-based execution: the graph is split after a *cut tensor* T (the only activation alive at that point). Stage 1
(everything up to T) runs once per patch of a ``gh x gw`` grid over T: each patch computes only the region of every
stage-1 tensor that its T patch needs (receptive field incl. halo, clipped at the image border, where the layer's
own padding applies), and writes its patch into the full T buffer. Stage 2 runs layer by layer. While stage 1 runs,
memory held = the T buffer + the network input (whole when ``input_resident``, the default: an image in SRAM) +
the per-patch live tensors. Extra MACs = the stage-1 MACs recomputed in overlapping halos.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from ..errors import BudgetError, OptionError
from ..runtime.bundle.cnn_graph import SPATIAL_OPS, CnnGraph, Node

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open) in the full tensor's coordinates


# -- receptive field / halo arithmetic ------------------------------------------------------------------------------
def input_range(a: int, b: int, k: int, s: int, p: int, d: int, size: int) -> tuple[int, int]:
    """Input rows [lo, hi) that output rows [a, b) of a conv/pool (kernel k, stride s, leading pad p, dilation d)
    read, clipped to [0, size) (rows outside are the layer's padding)."""
    lo = a * s - p
    hi = (b - 1) * s - p + (k - 1) * d + 1
    return max(lo, 0), min(hi, size)


def input_box(node: Node, out_box: Box, in_shape: Sequence[int], operand: int = 0) -> Box:
    """The box of input ``operand`` that ``node`` reads to produce ``out_box`` of its output."""
    y0, y1, x0, x1 = out_box
    if node.op in ("conv", "maxpool", "avgpool"):
        (kh, kw), (sh, sw), (pt, pl, _, _), (dh, dw) = (
            node.attrs["kernel"], node.attrs["stride"], node.attrs["pads"], node.attrs.get("dilation", (1, 1)))
        ya, yb = input_range(y0, y1, kh, sh, pt, dh, in_shape[1])
        xa, xb = input_range(x0, x1, kw, sw, pl, dw, in_shape[2])
        return (ya, yb, xa, xb)
    if node.op == "mul" and operand == 1 and tuple(in_shape[1:]) == (1, 1):
        return (0, 1, 0, 1)
    if node.op in ("add", "mul", "concat", "act"):
        return out_box
    raise OptionError(f"node {node.name!r} ({node.op}) cannot run on a patch")


def union(a: Box | None, b: Box) -> Box:
    """Bounding box of two boxes."""
    if a is None:
        return b
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def area(b: Box) -> int:
    return max(0, b[1] - b[0]) * max(0, b[3] - b[2])


def grid_boxes(h: int, w: int, gh: int, gw: int) -> list[Box]:
    """Row-major patches of a ``gh x gw`` grid over an ``h x w`` map (near-equal integer splits)."""
    ys = [round(i * h / gh) for i in range(gh + 1)]
    xs = [round(j * w / gw) for j in range(gw + 1)]
    return [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(gh) for j in range(gw)]


def cut_points(graph: CnnGraph) -> list[int]:
    """Indices i such that nodes[: i + 1] can be stage 1: only spatial ops, a 3-D output T, and no other tensor
    produced before (or the input) is read after node i."""
    last = graph.last_use()
    out: list[int] = []
    produced: list[str] = [graph.input]
    for i, n in enumerate(graph.nodes):
        if n.op not in SPATIAL_OPS or any(len(graph.shapes[t]) != 3 for t in n.inputs):
            break
        if n.op == "mul" and graph.shapes[n.inputs[1]][1:] == (1, 1) and graph.shapes[n.inputs[0]][1:] != (1, 1):
            break  # squeeze-excite: the scale depends on the whole map (GAP), stage 1 cannot contain it
        produced.append(n.output)
        if i == len(graph.nodes) - 1:
            break
        if all(last.get(t, -1) <= i for t in produced[:-1]) and len(graph.shapes[n.output]) == 3:
            out.append(i)
    return out


def patch_regions(graph: CnnGraph, split: int, grid: tuple[int, int]) -> list[dict[str, Box]]:
    """For each patch of ``grid`` over the cut tensor nodes[split].output: the box of every stage-1 tensor
    (incl. the graph input) that the patch computes."""
    nodes = graph.nodes[: split + 1]
    t = nodes[-1].output
    _, h, w = graph.shapes[t]
    out = []
    for pbox in grid_boxes(h, w, *grid):
        reg: dict[str, Box] = {t: pbox}
        for n in reversed(nodes):
            ob = reg.get(n.output)
            if ob is None:  # output not needed by this patch (cannot happen for a valid cut)
                continue
            for k, src in enumerate(n.inputs):
                reg[src] = union(reg.get(src), input_box(n, ob, graph.shapes[src], k))
        out.append(reg)
    return out


# -- memory ---------------------------------------------------------------------------------------------------------
def inplace_node(graph: CnnGraph, i: int, last: dict[str, int], out_bytes: int, in_bytes: int,
                 enabled: bool) -> bool:
    """Node ``i`` writes its output over its input (in-place depthwise; see CnnGraph.inplace_candidate)."""
    return enabled and out_bytes <= in_bytes and graph.inplace_candidate(i, last)


def layer_memory(graph: CnnGraph, itemsize: int = 1, start: int = 0,
                 first_live: Iterable[str] = (), inplace: bool = False) -> list[tuple[str, int]]:
    """Memory held while each node from ``start`` runs layer by layer: (node name, bytes). ``first_live`` are
    the tensors alive before node ``start`` (default: the graph input). ``inplace``: depthwise convs write over
    their dying input (TinyEngine), so their output adds nothing (its per-channel scratch is kernel scratch)."""
    last = graph.last_use()
    live = set(first_live) if start else {graph.input}
    out = []
    fused: set[str] = set()  # conv outputs that live inside their residual's buffer (size 0)
    for i in range(start, len(graph.nodes)):
        n = graph.nodes[i]
        ob = graph.nbytes(n.output, itemsize)
        r = graph.fused_residual(i, last) if inplace else None
        if r is not None and r in live and ob <= graph.nbytes(r, itemsize):
            fused.add(n.output)
            ob = 0
        elif any(t in fused for t in n.inputs) or inplace_node(graph, i, last, ob,
                                                                 graph.nbytes(n.inputs[0], itemsize), inplace):
            ob = 0
        held = sum(graph.nbytes(t, itemsize) for t in live if t not in fused) + ob
        out.append((n.name, held))
        live.add(n.output)
        live = {t for t in live if last.get(t, -1) > i}
    return out


def stage1_memory(graph: CnnGraph, split: int, regions: list[dict[str, Box]], itemsize: int = 1,
                  input_resident: bool = True, inplace: bool = False) -> list[tuple[str, int]]:
    """Per stage-1 node, the largest memory held over all patches (see module docstring)."""
    nodes = graph.nodes[: split + 1]
    t = nodes[-1].output
    last = graph.last_use()
    tbuf = graph.nbytes(t, itemsize)
    worst = [0] * len(nodes)

    def size(name: str, reg: dict[str, Box]) -> int:
        if name == t:
            return 0  # lives in the T buffer, counted once
        if name == graph.input and input_resident:
            return 0
        return graph.shapes[name][0] * area(reg[name]) * itemsize

    base = tbuf + (graph.nbytes(graph.input, itemsize) if input_resident else 0)
    for reg in regions:
        live = {graph.input}
        fused: set[str] = set()
        for i, n in enumerate(nodes):
            ob = size(n.output, reg)
            r = graph.fused_residual(i, last) if inplace and i + 1 < split else None
            if r is not None and ob <= size(r, reg):
                fused.add(n.output)
                ob = 0
            elif ob and (any(x in fused for x in n.inputs)
                         or inplace_node(graph, i, last, ob, size(n.inputs[0], reg), inplace)):
                ob = 0
            held = base + sum(size(x, reg) for x in live if x not in fused) + ob
            worst[i] = max(worst[i], held)
            live.add(n.output)
            live = {x for x in live if last.get(x, -1) > i}
    return [(n.name, b) for n, b in zip(nodes, worst)]


def stage1_macs(graph: CnnGraph, split: int, regions: list[dict[str, Box]]) -> int:
    """MACs of stage 1 run patch by patch (incl. the recomputed halos)."""
    return sum(graph.node_macs(n, area(reg[n.output])) for reg in regions for n in graph.nodes[: split + 1])


# -- plans ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One (split point, grid) option with its cost."""

    split_index: int  # -1 = no split (layer-by-layer)
    split_node: str
    split_tensor: str
    split_shape: tuple[int, ...]
    grid: tuple[int, int]
    peak_bytes: int
    stage1_peak_bytes: int
    stage2_peak_bytes: int
    extra_macs: int
    total_macs: int

    @property
    def extra_macs_pct(self) -> float:
        return 100.0 * self.extra_macs / max(self.total_macs, 1)

    def row(self) -> str:
        """One human-readable line."""
        if self.split_index < 0:
            return f"{'layer-by-layer':34s} {'-':>5s}  peak {self.peak_bytes / 1024:9.1f} KiB   extra MACs   0.0%"
        s = "x".join(map(str, self.split_shape))
        return (f"after {self.split_node[:18]:18s} [{s:>11s}] {self.grid[0]}x{self.grid[1]:<3d} peak "
                f"{self.peak_bytes / 1024:9.1f} KiB   extra MACs {self.extra_macs_pct:5.1f}%  "
                f"(stage1 {self.stage1_peak_bytes / 1024:.1f} / stage2 {self.stage2_peak_bytes / 1024:.1f} KiB)")


@dataclass(frozen=True)
class PatchPlan:
    """The chosen plan: split, grid, the per-patch regions, per-layer memory and costs. Printable, JSON-dumpable."""

    model: str
    itemsize: int
    input_resident: bool
    chosen: Candidate
    layer_peak_bytes: int  # layer-by-layer peak of the same graph, for reference
    per_layer: tuple[tuple[str, int], ...]  # memory held per node under this plan (stage 1 worst patch, stage 2)
    regions: tuple[tuple[tuple[str, Box], ...], ...] = field(default=())  # per patch: (tensor, box)
    candidates: tuple[Candidate, ...] = field(default=())
    inplace_depthwise: bool = False  # depthwise convs overwrite their dying input (TinyEngine); layer peak too

    @property
    def split_index(self) -> int:
        return self.chosen.split_index

    @property
    def grid(self) -> tuple[int, int]:
        return self.chosen.grid

    @property
    def peak_bytes(self) -> int:
        return self.chosen.peak_bytes

    @property
    def is_patched(self) -> bool:
        return self.chosen.split_index >= 0

    def patch_regions(self) -> list[dict[str, Box]]:
        return [dict(r) for r in self.regions]

    def to_dict(self, with_regions: bool = True) -> dict[str, Any]:
        d = {
            "model": self.model, "itemsize": self.itemsize, "input_resident": self.input_resident,
            "inplace_depthwise": self.inplace_depthwise,
            "split_index": self.chosen.split_index, "split_node": self.chosen.split_node,
            "split_tensor": self.chosen.split_tensor, "grid": list(self.chosen.grid),
            "peak_bytes": self.chosen.peak_bytes, "stage1_peak_bytes": self.chosen.stage1_peak_bytes,
            "stage2_peak_bytes": self.chosen.stage2_peak_bytes, "layer_peak_bytes": self.layer_peak_bytes,
            "reduction": round(self.layer_peak_bytes / max(self.chosen.peak_bytes, 1), 3),
            "extra_macs": self.chosen.extra_macs, "total_macs": self.chosen.total_macs,
            "extra_macs_pct": round(self.chosen.extra_macs_pct, 3),
            "per_layer": [[n, b] for n, b in self.per_layer],
            "candidates": [{**asdict(c), "extra_macs_pct": round(c.extra_macs_pct, 3)} for c in self.candidates],
        }
        if with_regions:
            d["regions"] = [[[t, list(b)] for t, b in r] for r in self.regions]
        return d

    def to_json(self, with_regions: bool = True) -> str:
        return json.dumps(self.to_dict(with_regions), indent=1)

    @staticmethod
    def from_dict(d: dict[str, Any], graph: CnnGraph) -> "PatchPlan":
        """Rebuild a plan saved with :meth:`to_dict` (recomputes regions from the graph)."""
        return make_plan(graph, int(d["split_index"]), tuple(d["grid"]), itemsize=int(d["itemsize"]),
                         input_resident=bool(d["input_resident"]),
                         inplace_depthwise=bool(d.get("inplace_depthwise", False)))

    def __str__(self) -> str:
        c = self.chosen
        head = (f"{self.model}: peak activation memory {c.peak_bytes / 1024:.1f} KiB "
                f"(layer-by-layer {self.layer_peak_bytes / 1024:.1f} KiB, "
                f"{self.layer_peak_bytes / max(c.peak_bytes, 1):.2f}x less), extra MACs {c.extra_macs_pct:.1f}%")
        if c.split_index < 0:
            return head + "; no patch split"
        return head + (f"; stage 1 = nodes 0..{c.split_index} up to {c.split_node!r} "
                       f"(output {'x'.join(map(str, c.split_shape))}), {c.grid[0]}x{c.grid[1]} patches")


def evaluate(graph: CnnGraph, split: int, grid: tuple[int, int], itemsize: int = 1, input_resident: bool = True,
             inplace: bool = False) -> tuple[Candidate, list[tuple[str, int]], list[dict[str, Box]]]:
    """Cost of one option: the candidate, per-layer memory and the regions (split -1 = layer-by-layer)."""
    total = graph.total_macs()
    if split < 0:
        mem = layer_memory(graph, itemsize, inplace=inplace)
        peak = max(b for _, b in mem)
        return Candidate(-1, "", "", (), (1, 1), peak, 0, peak, 0, total), mem, []
    t = graph.nodes[split].output
    regions = patch_regions(graph, split, grid)
    m1 = stage1_memory(graph, split, regions, itemsize, input_resident, inplace)
    m2 = layer_memory(graph, itemsize, start=split + 1, first_live=[t], inplace=inplace)
    p1 = max(b for _, b in m1)
    p2 = max((b for _, b in m2), default=0)
    full1 = sum(graph.node_macs(n) for n in graph.nodes[: split + 1])
    extra = stage1_macs(graph, split, regions) - full1
    cand = Candidate(split, graph.nodes[split].name, t, graph.shapes[t], tuple(grid), max(p1, p2), p1, p2, extra,
                     total)
    return cand, m1 + m2, regions


def make_plan(graph: CnnGraph, split: int, grid: tuple[int, int], *, itemsize: int = 1,
              input_resident: bool = True, candidates: Sequence[Candidate] = (),
              inplace_depthwise: bool = False) -> PatchPlan:
    """A PatchPlan for an explicit split/grid (split -1 = layer-by-layer)."""
    if split >= 0 and split not in cut_points(graph):
        raise OptionError(f"node {split} ({graph.nodes[split].name!r}) is not a valid split point of "
                          f"{graph.name}; valid: {cut_points(graph)}")
    cand, mem, regions = evaluate(graph, split, grid, itemsize, input_resident, inplace_depthwise)
    layer_peak = max(b for _, b in layer_memory(graph, itemsize, inplace=inplace_depthwise))
    return PatchPlan(graph.name, itemsize, input_resident, cand, layer_peak, tuple(mem),
                     tuple(tuple(sorted(r.items())) for r in regions), tuple(candidates), inplace_depthwise)


def all_candidates(graph: CnnGraph, grids: Iterable[int] = range(2, 9), itemsize: int = 1,
                   input_resident: bool = True, inplace_depthwise: bool = False) -> list[Candidate]:
    """Layer-by-layer plus every (cut point, n x n grid) whose grid fits the cut tensor."""
    out = [evaluate(graph, -1, (1, 1), itemsize, input_resident, inplace_depthwise)[0]]
    grids = list(grids)
    for i in cut_points(graph):
        _, h, w = graph.shapes[graph.nodes[i].output]
        for g in grids:
            if g <= h and g <= w:
                out.append(evaluate(graph, i, (g, g), itemsize, input_resident, inplace_depthwise)[0])
    return out


def plan_patches(graph: CnnGraph, *, activation_budget: int | None = None, max_overhead: float | None = None,
                 grids: Iterable[int] = range(2, 9), itemsize: int = 1, input_resident: bool = True,
                 inplace_depthwise: bool = False) -> PatchPlan:
    """Choose the split point and patch grid.

    * With ``activation_budget`` (bytes): the option with the fewest extra MACs whose peak fits the budget (and
      whose overhead is <= ``max_overhead`` if given); BudgetError with the smallest reachable peak otherwise.
    * Without: the option with the smallest peak whose extra MACs are <= ``max_overhead`` (default 0.15 = 15%).
    """
    if max_overhead is not None and max_overhead < 0:
        raise OptionError(f"--max-overhead {max_overhead}: must be >= 0")
    cands = all_candidates(graph, grids, itemsize, input_resident, inplace_depthwise)
    cap = max_overhead if max_overhead is not None else (None if activation_budget is not None else 0.15)
    ok = [c for c in cands if cap is None or c.extra_macs <= cap * c.total_macs]
    if activation_budget is not None:
        fit = [c for c in ok if c.peak_bytes <= activation_budget]
        if not fit:
            best = min(ok, key=lambda c: c.peak_bytes)
            best_any = min(cands, key=lambda c: c.peak_bytes)
            capmsg = f" with extra MACs <= {100 * cap:.0f}%" if cap is not None else ""
            raise BudgetError(
                f"{graph.name}: activation budget {activation_budget} B ({activation_budget / 1024:.1f} KiB) is too "
                f"small; the smallest peak{capmsg} is {best.peak_bytes} B ({best.peak_bytes / 1024:.1f} KiB, "
                f"{best.grid[0]}x{best.grid[1]} patches, {best.extra_macs_pct:.1f}% extra MACs); any overhead: "
                f"{best_any.peak_bytes} B at {best_any.extra_macs_pct:.1f}% extra MACs")
        chosen = min(fit, key=lambda c: (c.extra_macs, c.peak_bytes))
    else:
        chosen = min(ok, key=lambda c: (c.peak_bytes, c.extra_macs))
    ranked = sorted(ok, key=lambda c: (c.peak_bytes, c.extra_macs))
    return make_plan(graph, chosen.split_index, chosen.grid, itemsize=itemsize, input_resident=input_resident,
                     candidates=tuple(ranked), inplace_depthwise=inplace_depthwise)
