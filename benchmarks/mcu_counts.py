"""Instructions executed by the generated MCU C project on an emulated Cortex-M4 / M7 (qemu-system-arm MPS2 boards):
the CMSIS-NN-style s8 kernels vs the plain C loops, whole invoke and per kernel kind.

    python benchmarks/mcu_counts.py [--width 0.35 --resolution 96 --classes 10] [--cpus cortex-m4,cortex-m7]

Model: torchvision's MobileNetV2 (random weights: instruction counts do not depend on weight values beyond
clamping), int8, fits the mcu-m7 profile (320 KiB SRAM, 1 MiB flash). Plans: layer by layer and the default patch
plan. Checks on every run: qemu output = host gcc build = numpy int8 executor, bit for bit. **Instructions executed
under qemu (-icount), not cycles**: qemu models no pipeline, caches, wait states or dual issue. Writes
benchmarks/out/mcu_counts.json.
"""
from __future__ import annotations

import argparse
import collections
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
    args = ap.parse_args()
    why = qemu_available()
    if why:
        sys.exit(f"mcu_counts: {why}")
    r = args.resolution
    g = mobilenet_v2_graph(None, width=args.width, resolution=r, num_classes=args.classes)
    rng = np.random.default_rng(0)
    q = calibrate_and_quantize(g, [rng.standard_normal((3, r, r)).astype(np.float32) for _ in range(2)])
    x = rng.standard_normal((3, r, r)).astype(np.float32)
    xq = q.quantize_input(x)
    want = CnnRunner(g, q).run_layers(x).output
    s, z = q.tensors[g.output]
    prof = get_target("mcu-m7")
    plans = {"layers": make_plan(g, -1, (1, 1)), "patched": plan_patches(g)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pname, plan in plans.items():
            for kernels in ("plain", "s8"):
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
                                 "scratch_bytes": proj.scratch_bytes, "qemu_s": round(time.time() - t0, 2)})
                    print(f"{pname:8s} {kernels:5s} {cpu}: {run.invoke_insns / 1e6:8.2f} M instructions "
                          f"({run.invoke_insns / rows[-1]['macs']:.2f}/MAC), calib {run.calib_insns:.2f}/2001",
                          flush=True)
    print("\nper kernel kind (profiled build, Cortex-M7, layer by layer): M instructions (per MAC)")
    by = {(rw["kernels"]): rw for rw in rows if rw["plan"] == "layers" and rw["cpu"] == args.cpus.split(",")[-1]}
    for k in sorted(by["s8"]["per_kind"], key=lambda k: -by["plain"]["per_kind"][k]["insns"]):
        a, b = by["plain"]["per_kind"][k], by["s8"]["per_kind"][k]
        pm = f" ({a['insns'] / a['macs']:.2f} -> {b['insns'] / b['macs']:.2f}/MAC)" if a["macs"] else ""
        print(f"  {k:20s} plain {a['insns'] / 1e6:8.2f}  s8 {b['insns'] / 1e6:8.2f}  "
              f"ratio {a['insns'] / max(b['insns'], 1):5.1f}x{pm}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": g.name, "width": args.width, "resolution": r,
                                          "note": "instructions executed under qemu -icount, not cycles",
                                          "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
