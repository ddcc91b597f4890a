"""Where edgespool's int8 CNN time goes: onnxruntime's own node profiler over the lowered int8 graph (layer by
layer, one session) of the real MobileNetV2 w1.0 @224, against the same profile of the f32 lowering and of the peer
(onnxruntime's own QDQ quantisation of the same ONNX file, uint8 and int8 activations); time summed
per ONNX op type (after ORT's graph optimisation, so fused kernels show under their fused names).

The int8 lowering reproduces the numpy int8 arithmetic exactly: QLinearConv, residual adds as one QLinearAdd,
hard-swish / hard-sigmoid as DequantizeLinear -> act -> QuantizeLinear (checked exact), the remaining requantising
steps as Mul / Round / Clip / Cast: this shows what those elementwise steps cost next to the convolutions. Single-process, ``--runs`` profiled calls after a warm-up; the machine is shared (noisy).

    python benchmarks/cnn_int8_profile.py [--threads 1] [--runs 20] [--ppocr-cls FILE.onnx]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def profile(model_bytes: bytes, feed_x, threads: int, runs: int, work: Path, tag: str) -> dict[str, float]:
    """op type -> total microseconds per inference, from onnxruntime's profiler."""
    import onnxruntime as ort
    from edgespool.runtime.cnn.ort_runner import session_options

    so = session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = str(work / tag)
    s = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: feed_x}
    for _ in range(3):
        s.run(None, feed)
    for _ in range(runs):
        s.run(None, feed)
    prof = json.loads(Path(s.end_profiling()).read_text())
    per: dict[str, float] = collections.defaultdict(float)
    for ev in prof:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            per[ev["args"]["op_name"]] += ev["dur"]
    n = runs + 3
    return {k: v / n for k, v in sorted(per.items(), key=lambda kv: -kv[1])}


def show(tag: str, per: dict[str, float], threads: int) -> None:
    tot = sum(per.values())
    print(f"{tag}: {tot / 1e3:.2f} ms of node time per image (threads={threads})")
    for k, v in list(per.items())[:10]:
        print(f"  {k:28s} {v / 1e3:8.3f} ms  {100 * v / tot:5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--ppocr-cls", type=Path, default=None,
                    help="profile PaddleOCR's ch_ppocr_mobile_v2.0_cls_infer.onnx instead (fixed to 1x3x48x192)")
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "tests"))
    import cnn_speed
    import cnn_torch_ref as ref
    from edgespool.runtime.cnn.calibrate import calibrate_and_quantize
    from edgespool.runtime.cnn.onnx_lower import full_box, lower_segment
    from edgespool.runtime.cnn.ort_runner import OrtCnnRunner

    work = Path(tempfile.mkdtemp(prefix="cnn_int8_prof_"))
    if a.ppocr_cls:
        import onnx
        mp = onnx.load(str(a.ppocr_cls))
        for d, v in zip(mp.graph.input[0].type.tensor_type.shape.dim, (1, 3, 48, 192)):
            d.ClearField("dim_param")
            d.dim_value = v
        path, model = work / "ppocr_cls_static.onnx", "ppocr_cls"
        onnx.save(mp, str(path))
    else:
        path, model = ref.export_onnx(ref.load_mbv2(), work / "mobilenet_v2.onnx"), "mobilenet_v2"
    g = cnn_speed._load(model, Path(path))
    x, cal = cnn_speed._inputs(model)
    q = calibrate_and_quantize(g, cal)
    out = {}
    for tag, qq in (("f32", None), ("int8", q)):
        r = OrtCnnRunner(g, qq, None, a.threads)  # for its input preparation (quantisation in int8)
        m = lower_segment(g, 0, len(g.nodes), {g.input: full_box(g, g.input)}, {}, [g.output], qq, g.name)
        per = profile(m.SerializeToString(), r.prepare(x), a.threads, a.runs, work, tag)
        tot = sum(per.values())
        out[tag] = {"total_ms": round(tot / 1e3, 3), "per_op_ms": {k: round(v / 1e3, 3) for k, v in per.items()}}
        show(tag, per, a.threads)
    feed = x[None].astype("float32")
    for act in ("u8", "s8"):  # the peer: onnxruntime's own static QDQ quantisation of the same file
        qp = cnn_speed._ort_int8(Path(path), cal, act, work / f"peer_{act}.onnx")
        tag = f"peer-ort-qdq-{act}"
        per = profile(qp.read_bytes(), feed, a.threads, a.runs, work, tag)
        out[tag] = {"total_ms": round(sum(per.values()) / 1e3, 3),
                    "per_op_ms": {k: round(v / 1e3, 3) for k, v in per.items()}}
        show(tag, per, a.threads)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
