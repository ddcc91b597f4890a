"""Where the patch-based CNN time goes on the onnxruntime path (MobileNetV2 w1.0 @224, the min-memory 4x4 plan).

Two parts, 1 thread:

* ``--nodes``: onnxruntime's node profiler over stage 1 lowered (a) per patch, all 16 patches in one session, and (b)
  whole-map; per IR node the summed patch time next to the whole-map time and the patches' output-area ratio
  (the halo recompute), plus per op type (Slice / Transpose / Reorder* are the patch path's extra steps).
* ``--batch``: per-call overhead vs kernel efficiency: the 4 interior patches (identical shapes and pads) as 4
  sequential runs of one session vs one batch-4 run, stage 1 whole-map, the fused patched network and layer by
  layer; int8 with uint8 weights (exact on x86 without VNNI), int8 weights (the peer's kernels) and f32;
  interleaved medians.

    python benchmarks/cnn_patch_profile.py [--nodes] [--batch] [--rounds 15]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _setup():
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "tests"))
    import cnn_speed
    import cnn_torch_ref as ref
    from edgespool.exporters.cnn.from_pth import load_torch_cnn
    from edgespool.runtime.cnn.calibrate import calibrate_and_quantize
    from edgespool.schedulers.patch_plan import plan_patches

    g = load_torch_cnn(ref.MBV2_PTH)
    x, cal = cnn_speed._inputs("mobilenet_v2")
    return cnn_speed, g, x, calibrate_and_quantize(g, cal), plan_patches(g, itemsize=1)


def _pernode(model, feed, work: Path, tag: str, runs: int = 10) -> tuple[dict, dict]:
    import onnxruntime as ort
    from edgespool.runtime.cnn.ort_runner import session_options
    so = session_options(1)
    so.enable_profiling = True
    so.profile_file_prefix = str(work / tag)
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for _ in range(3 + runs):
        s.run(None, feed)
    node: dict[str, float] = collections.defaultdict(float)
    op: dict[str, float] = collections.defaultdict(float)
    for ev in json.loads(Path(s.end_profiling()).read_text()):
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            node[ev["name"][: -len("_kernel_time")].split("__")[0]] += ev["dur"] / (3 + runs) / 1e3
            op[ev["args"]["op_name"]] += ev["dur"] / (3 + runs) / 1e3
    return node, op


def nodes(cnn_speed, g, x, q, plan) -> None:
    from edgespool.runtime.cnn.onnx_lower import full_box, lower_patches, lower_segment
    from edgespool.runtime.cnn.ort_runner import OrtCnnRunner
    work = Path(tempfile.mkdtemp(prefix="cnn_patch_prof_"))
    split, regs = plan.split_index, plan.patch_regions()
    t = g.nodes[split].output
    for tag, qq in (("int8", q), ("f32", None)):
        r = OrtCnnRunner(g, qq, None, 1)
        xi = r.prepare(x)
        mp = lower_patches(g, split, regs, full_box(g, g.input), qq, r.float_acts)
        mw = lower_segment(g, 0, split + 1, {g.input: full_box(g, g.input)}, {}, [t], qq, "s1", r.float_acts)
        a, ao = _pernode(mp, {"x": xi}, work, tag + "_p")
        b, bo = _pernode(mw, {mw.graph.input[0].name: xi}, work, tag + "_w")
        print(f"{tag}: stage 1 node time, 16 patches {sum(ao.values()):.2f} ms, whole map {sum(bo.values()):.2f} ms")
        print("  per op type (patches | whole):", {k: (round(v, 3), round(bo.get(k, 0.0), 3)) for k, v in ao.items()})
        for n in g.nodes[: split + 1]:
            k = n.name.replace("/", "_")
            full = int(np.prod(g.shapes[n.output][1:]))
            pa = sum((rg[n.output][1] - rg[n.output][0]) * (rg[n.output][3] - rg[n.output][2]) for rg in regs)
            print(f"  {k:26s} {n.op:5s} {g.shapes[n.output]!s:15s} k={n.attrs.get('kernel')} g={n.attrs.get('group')}"
                  f" patches {a.get(k, 0):6.3f} ms whole {b.get(k, 0):6.3f} ms = x{a.get(k, 0) / max(b.get(k, 0), 1e-9):4.2f}"
                  f" (area x{pa / full:4.2f})")


def batch(cnn_speed, g, x, q, plan, rounds: int) -> None:
    import onnxruntime as ort
    from edgespool.runtime.cnn.onnx_lower import full_box, lower_segment
    from edgespool.runtime.cnn.ort_runner import OrtCnnRunner, session_options
    split, regs = plan.split_index, plan.patch_regions()
    t = g.nodes[split].output
    gh, gw = plan.grid
    inner = [regs[i * gw + j] for i in range(1, gh - 1) for j in range(1, gw - 1)]

    def sess(m, n: int = 1):
        for v in list(m.graph.input) + list(m.graph.output):
            v.type.tensor_type.shape.dim[0].dim_value = n
        return ort.InferenceSession(m.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    cfg = {}
    for tag, qq, wu8 in (("int8 u8 weights", q, True), ("int8 s8 weights", q, False), ("f32", None, None)):
        r = OrtCnnRunner(g, qq, None, 1, weights_u8=wu8)
        xi = r.prepare(x)
        ib = inner[0][g.input]
        xin = [np.ascontiguousarray(xi[:, :, b[0]:b[1], b[2]:b[3]]) for b in (rg[g.input] for rg in inner)]
        if any(a.shape != xin[0].shape for a in xin):
            raise SystemExit("interior patches differ in shape: no batch experiment for this plan")
        s1 = sess(lower_segment(g, 0, split + 1, {g.input: ib}, inner[0], [t], qq, "p", r.float_acts, wu8))
        sb = sess(lower_segment(g, 0, split + 1, {g.input: ib}, inner[0], [t], qq, "p", r.float_acts, wu8), len(xin))
        sw = sess(lower_segment(g, 0, split + 1, {g.input: full_box(g, g.input)}, {}, [t], qq, "w", r.float_acts, wu8))
        xb = np.concatenate(xin, 0)
        n1, nb, nw = (s.get_inputs()[0].name for s in (s1, sb, sw))
        assert np.array_equal(np.concatenate([s1.run(None, {n1: a})[0] for a in xin], 0), sb.run(None, {nb: xb})[0])
        rp = OrtCnnRunner(g, qq, plan, 1, weights_u8=wu8)
        cfg[f"{tag}: {len(xin)} interior patches, {len(xin)} runs"] = (
            lambda s1=s1, n1=n1, xin=xin: [s1.run(None, {n1: a}) for a in xin])
        cfg[f"{tag}: {len(xin)} interior patches, one batch"] = lambda sb=sb, nb=nb, xb=xb: sb.run(None, {nb: xb})
        cfg[f"{tag}: stage 1 whole map"] = lambda sw=sw, nw=nw, xi=xi: sw.run(None, {nw: xi})
        cfg[f"{tag}: patched (fused session)"] = lambda rp=rp: rp.run_patched(x)
        cfg[f"{tag}: layers"] = lambda r=r: r.run_layers(x)
    for k, v in cnn_speed.interleaved(cfg, rounds).items():
        print(f"{k:48s} {v * 1e3:7.3f} ms", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", action="store_true")
    ap.add_argument("--batch", action="store_true")
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    cnn_speed, g, x, q, plan = _setup()
    print(f"plan: {plan.chosen.split_node} {plan.grid[0]}x{plan.grid[1]}, peak {plan.peak_bytes} B")
    if a.nodes or not a.batch:
        nodes(cnn_speed, g, x, q, plan)
    if a.batch:
        batch(cnn_speed, g, x, q, plan, a.rounds)


if __name__ == "__main__":
    main()
