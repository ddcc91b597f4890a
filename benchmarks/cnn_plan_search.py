"""Which patch plan of MobileNetV2 w1.0 @224 is fastest on the onnxruntime path among those that keep MCUNetV2's
memory cut: peak activation memory <= layer-by-layer / 8 (int8, in-place depthwise + fused residual adds, input
streamed: the accounting of docs/CNN.md "Figures: memory") and <= 15% extra MACs.

Searched: every cut point x every rectangular ``gh x gw`` grid (1..8 each), and at the cut points that have a
feasible uniform grid, non-uniform grids (row / column cuts with every part >= 1/7 of the map) with 3x3, 3x4,
4x3 and (same cuts on both axes) 4x4 patches.
Then every feasible uniform plan is timed (one fused onnxruntime session, :class:`OrtCnnRunner`, 1 thread,
interleaved rounds, medians) in int8 exact (the default lowering) and int8 with int8 weights (``-s8w``, the
peer's kernels; only on x86 without VNNI, where the default differs); outputs checked against the numpy int8
executor. Predicted cost = patches and extra MACs; measured = the medians.

    python benchmarks/cnn_plan_search.py [--rounds 11] [--no-nonuniform] [--no-timing] [--out DIR]

(``--no-timing``: the search only, no lock needed; the timing part needs ``flock /tmp/bench.lock``.)
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def regions_for_cuts(g, split: int, ys: list[int], xs: list[int]) -> list[dict]:
    """Per patch of the grid with row cuts ``ys`` and column cuts ``xs`` over the cut tensor: every stage-1
    tensor's box (as :func:`schedulers.patch_plan.patch_regions`, for any cuts)."""
    from edgespool.schedulers.patch_plan import input_box, union

    nodes = g.nodes[: split + 1]
    t = nodes[-1].output
    out = []
    for i, j in itertools.product(range(len(ys) - 1), range(len(xs) - 1)):
        reg = {t: (ys[i], ys[i + 1], xs[j], xs[j + 1])}
        for n in reversed(nodes):
            for k, src in enumerate(n.inputs):
                reg[src] = union(reg.get(src), input_box(n, reg[n.output], g.shapes[src], k))
        out.append(reg)
    return out


def nonuniform(g, split: int, goal: float, cap: float) -> dict[str, tuple]:
    """Best feasible (fewest extra MACs) non-uniform grid per patch count shape; None where none is feasible."""
    from edgespool.schedulers.patch_plan import stage1_macs, stage1_memory

    _, h, w = g.shapes[g.nodes[split].output]
    full1 = sum(g.node_macs(n) for n in g.nodes[: split + 1])
    total = g.total_macs()

    def cuts(size: int, parts: int) -> list[list[int]]:  # parts of >= size // 7 rows (4 of 28): keeps it ~10 min
        lo = max(1, size // 7)
        return [[0, *c, size] for c in itertools.combinations(range(1, size), parts - 1)
                if min(np.diff([0, *c, size])) >= lo]

    def ev(ys, xs):
        r = regions_for_cuts(g, split, ys, xs)
        peak1 = max(b for _, b in stage1_memory(g, split, r, 1, False, True))
        return peak1, (stage1_macs(g, split, r) - full1) / total

    out: dict[str, tuple] = {}
    for gh, gw, sym in ((3, 3, False), (3, 4, False), (4, 3, False), (4, 4, True)):
        best = None
        pairs = ((c, c) for c in cuts(h, gh)) if sym else itertools.product(cuts(h, gh), cuts(w, gw))
        for ys, xs in pairs:
            peak1, ex = ev(ys, xs)
            if peak1 <= goal and ex <= cap and (best is None or ex < best[0]):
                best = (ex, peak1, ys, xs)
        out[f"{gh}x{gw}{' (same cuts both axes)' if sym else ''}"] = best
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--no-nonuniform", action="store_true", help="skip the non-uniform search (~5 min)")
    ap.add_argument("--no-timing", action="store_true", help="the plan search only (no latency rounds)")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "tests"))
    import cnn_speed
    import cnn_torch_ref as ref
    from edgespool.exporters.cnn.from_pth import load_torch_cnn
    from edgespool.runtime.cnn.calibrate import calibrate_and_quantize
    from edgespool.runtime.cnn.executor import CnnRunner
    from edgespool.runtime.cnn.onnx_lower import cpu_has_vnni
    from edgespool.runtime.cnn.ort_runner import OrtCnnRunner
    from edgespool.schedulers.patch_plan import cut_points, evaluate, layer_memory, make_plan

    g = load_torch_cnn(ref.MBV2_PTH)
    layer_peak = max(b for _, b in layer_memory(g, 1, inplace=True))
    goal, cap = layer_peak / 8, 0.15
    feasible = []
    for i in cut_points(g):
        _, h, w = g.shapes[g.nodes[i].output]
        for gh, gw in itertools.product(range(1, 9), range(1, 9)):
            if gh * gw > 1 and gh <= h and gw <= w:
                c = evaluate(g, i, (gh, gw), 1, False, True)[0]
                if c.peak_bytes <= goal and c.extra_macs <= cap * c.total_macs:
                    feasible.append(c)
    res: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "layer_peak_bytes": layer_peak,
                 "goal_bytes": goal, "feasible_uniform": [
                     {"split": c.split_node, "grid": list(c.grid), "patches": c.grid[0] * c.grid[1],
                      "peak_bytes": c.peak_bytes, "stage1_peak_bytes": c.stage1_peak_bytes,
                      "extra_macs_pct": round(c.extra_macs_pct, 2)} for c in feasible]}
    print(f"layer-by-layer peak {layer_peak} B, goal <= {goal:.0f} B (8x), extra MACs <= 15%: "
          f"{len(feasible)} uniform plans")
    for c in sorted(feasible, key=lambda c: (c.grid[0] * c.grid[1], c.extra_macs)):
        print(f"  {c.split_node} {c.grid[0]}x{c.grid[1]}: {c.grid[0] * c.grid[1]} patches, +{c.extra_macs_pct:.2f}% "
              f"MACs, peak {c.peak_bytes} B (stage 1 {c.stage1_peak_bytes} B)")
    if not a.no_nonuniform:
        res["nonuniform_best"] = {}
        for split in sorted({c.split_index for c in feasible}):
            nu = nonuniform(g, split, goal, cap)
            res["nonuniform_best"][g.nodes[split].name] = {
                k: (None if v is None else {"extra_macs_pct": round(100 * v[0], 2), "stage1_peak_bytes": v[1],
                                            "row_cuts": v[2], "col_cuts": v[3]}) for k, v in nu.items()}
            for k, v in nu.items():
                print(f"  non-uniform {g.nodes[split].name} {k}: " + ("none meets the goal" if v is None else
                      f"best +{100 * v[0]:.2f}% MACs, stage 1 {v[1]} B, rows {v[2]} cols {v[3]}"))
    if a.no_timing:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "cnn_plan_search_plans.json").write_text(json.dumps(res, indent=1))
        return
    x, cal = cnn_speed._inputs("mobilenet_v2")
    q = calibrate_and_quantize(g, cal)
    want = CnnRunner(g, q).run_layers(x).output
    kinds = [("exact", None)] + ([] if cpu_has_vnni() else [("s8w", False)])
    cfg, identical = {}, {}
    for c in feasible:
        plan = make_plan(g, c.split_index, c.grid, itemsize=1)
        for tag, wu8 in kinds:
            r = OrtCnnRunner(g, q, plan, weights_u8=wu8)
            name = f"{tag} {c.grid[0]}x{c.grid[1]}"
            identical[name] = bool(np.array_equal(r.run_patched(x), want))
            cfg[name] = (lambda r=r: r.run_patched(x))
    for tag, wu8 in kinds:
        r = OrtCnnRunner(g, q, weights_u8=wu8)
        cfg[f"{tag} layers"] = (lambda r=r: r.run_layers(x))
    med = cnn_speed.interleaved(cfg, a.rounds)
    res["latency_ms"] = {k: round(v * 1e3, 3) for k, v in med.items()}
    res["identical_to_numpy_int8"] = identical
    for k, v in sorted(med.items(), key=lambda kv: kv[1]):
        print(f"  {k:12s} {v * 1e3:7.2f} ms" + ("" if k not in identical else
                                                 f"  identical to numpy int8: {identical[k]}"))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "cnn_plan_search.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
