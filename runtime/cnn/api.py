"""Public CNN API: image preprocessing and ``run_image(bundle_dir, image) -> top-k classes``.

Preprocessing is torchvision's ImageNet evaluation transform: resize the shorter side to ``resolution / 0.875``
(bilinear, PIL), centre-crop ``resolution`` x ``resolution``, scale to [0, 1], normalise with the ImageNet
mean/std, CHW float32. ImageNet class names are not shipped with edgespool (no offline source with a compatible
licence): results carry class ids, and a label only when the bundle or the caller provides a label list.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import ModelFormatError, OptionError
from ..bundle.reader import Bundle

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CAT_CLASSES = {281: "tabby cat", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat",
                        285: "Egyptian cat"}  # the ids the tests check against (ImageNet-1k order)


def preprocess(image: str | os.PathLike | np.ndarray, resolution: int = 224, *,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               crop: bool = True) -> np.ndarray:
    """An image file or an HxWx3 uint8 array -> float32 [3, resolution, resolution] (see module docstring);
    ``crop=False`` resizes the whole image to resolution x resolution instead (TFLite vision models' input)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        img = Image.fromarray(arr[..., :3])
    else:
        p = Path(image)
        if not p.exists():
            raise OptionError(f"--image {p}: no such file")
        try:
            img = Image.open(p).convert("RGB")
        except Exception as e:
            raise ModelFormatError(f"{p}: not a readable image ({type(e).__name__}: {e})") from None
    if not crop:
        img = img.resize((resolution, resolution), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32) / 255.0
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))
    short = int(resolution / 0.875)
    w, h = img.size
    if w <= h:
        nw, nh = short, int(short * h / w)
    else:
        nw, nh = int(short * w / h), short
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - resolution) / 2.0)), int(round((nh - resolution) / 2.0))
    img = img.crop((left, top, left + resolution, top + resolution))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64).reshape(-1)
    e = np.exp(z - z.max())
    return e / e.sum()


def top_k(logits: np.ndarray, k: int = 5, labels: Sequence[str] | None = None) -> list[tuple[int, str | None, float]]:
    """(class id, label or None, probability) of the ``k`` most likely classes."""
    p = softmax(logits)
    idx = np.argsort(-p, kind="stable")[:k]
    return [(int(i), (labels[i] if labels is not None and i < len(labels) else None), float(p[i])) for i in idx]


def run_image(bundle_dir: str | os.PathLike, image_path: str | os.PathLike | np.ndarray, top: int = 5, *,
              patched: bool = True, labels: Sequence[str] | None = None,
              engine: str = "numpy") -> list[tuple[int, str | None, float]]:
    """Classify one image with a CNN bundle; patch-based when the bundle has a patch plan and ``patched``;
    ``engine`` "numpy" (reference) or "onnxruntime" (fast CPU path, same numbers).

    Returns ``[(class_id, label or None, probability), ...]`` best first."""
    from .bundle import CnnBundle

    b = CnnBundle(bundle_dir)
    if b.manifest["cnn"].get("tflite_outputs"):
        raise OptionError(f"{bundle_dir}: exported from a .tflite model with its own outputs (not a classifier): "
                          "use CnnBundle.run + exporters.cnn.from_tflite.bundle_outputs")
    x = b.preprocess(image_path)
    res = b.run(x, patched=patched, engine=engine)
    return top_k(res.output, top, labels if labels is not None else b.labels)


def print_classification(bundle: "str | os.PathLike | object", image: str | os.PathLike | None, top: int = 5,
                         as_json: bool = False, *, patched: bool = True,
                         engine: str = "numpy") -> list[tuple[int, str | None, float]]:
    """What ``edgespool run <cnn bundle> --image X --top K [--json]`` prints: one line per class
    (``rank  class_id  probability  label``) and the peak activation memory held, or a JSON object."""
    import json

    from .bundle import CnnBundle

    if image is None:
        raise OptionError("--image is required to run a CNN bundle")
    b = CnnBundle(bundle)  # accepts a path or an opened Bundle
    x = b.preprocess(image)
    res = b.run(x, patched=patched, engine=engine)
    held = "activation memory held" if engine == "numpy" else "planned activation memory (onnxruntime engine)"
    mode = (f"patch-based {b.plan.grid[0]}x{b.plan.grid[1]} after {b.plan.chosen.split_node!r}"
            if patched and b.plan.is_patched else "layer-by-layer")
    if b.manifest["cnn"].get("tflite_outputs"):  # a detector / regressor: its own output tensors, not classes
        _print_tflite_outputs(b, image, res, mode, held, engine, as_json)
        return []
    rows = top_k(res.output, top, b.labels)
    if as_json:
        print(json.dumps({"image": str(image), "quant": b.quant_mode, "mode": mode,
                          "peak_activation_bytes": res.peak_bytes, "engine": engine,
                          "top": [{"class_id": c, "label": lab, "prob": p} for c, lab, p in rows]}, indent=1))
    else:
        for i, (c, lab, p) in enumerate(rows, 1):
            print(f"{i}. class {c:4d}  p={p:.4f}" + (f"  {lab}" if lab else ""))
        print(f"({b.quant_mode}, {mode}; {held}: {res.peak_bytes / 1024:.1f} KiB)")
    return rows


def _print_tflite_outputs(b: Any, image: Any, res: Any, mode: str, held: str, engine: str, as_json: bool) -> None:
    """The output tensors of a bundle exported from a ``.tflite`` (e.g. BlazeFace's box regressors and scores):
    shape and range per tensor, or with ``as_json`` the full values."""
    outs = b.tflite_outputs(res.output)
    if as_json:
        print(json.dumps({"image": str(image), "quant": b.quant_mode, "mode": mode, "engine": engine,
                          "peak_activation_bytes": res.peak_bytes,
                          "outputs": {k: {"shape": list(v.shape), "values": v.reshape(-1).tolist()}
                                      for k, v in outs.items()}}))
        return
    for k, v in outs.items():
        print(f"output {k!r}: shape {list(v.shape)}, min {float(v.min()):.4g}, max {float(v.max()):.4g}")
    print(f"({b.quant_mode}, {mode}; {held}: {res.peak_bytes / 1024:.1f} KiB; --json for the values)")


def summarize_cnn(bundle: Bundle) -> dict[str, Any]:
    """A JSON-ready summary of a CNN bundle for `edgespool inspect`, with a human ``text`` rendering."""
    c = bundle.manifest["cnn"]
    plan = c.get("plan") or {}
    nodes = c["graph"]["nodes"]
    ops: dict[str, int] = {}
    for n in nodes:
        ops[n["op"]] = ops.get(n["op"], 0) + 1
    files = {p.name: p.stat().st_size for p in sorted(bundle.path.rglob("*")) if p.is_file()}
    s: dict[str, Any] = {
        "path": str(bundle.path), "kind": "cnn", "model": c["graph"]["name"],
        "input_shape": c["graph"]["input_shape"], "nodes": len(nodes), "ops": ops,
        "quant": c.get("quant"), "params": c.get("params"), "macs": c.get("macs"),
        "target": (bundle.manifest.get("target") or {}).get("name"), "weights_bytes": bundle.weights_nbytes,
        "plan": {k: plan.get(k) for k in ("split_node", "grid", "peak_bytes", "layer_peak_bytes", "reduction",
                                          "extra_macs_pct", "input_resident")},
        "mcu": c.get("mcu"), "files": files, "total_bytes": sum(files.values()),
    }
    p = s["plan"]
    grid = "x".join(map(str, p["grid"])) if p.get("grid") else "-"
    lines = [
        f"bundle   {s['path']}  (CNN, schema v{bundle.manifest['schema_version']})",
        f"model    {s['model']}  input {s['input_shape']}  {s['nodes']} nodes  "
        f"{(s['params'] or 0) / 1e6:.2f} M params  {(s['macs'] or 0) / 1e6:.0f} M MACs",
        "ops      " + ", ".join(f"{k}: {v}" for k, v in sorted(ops.items())),
        f"target   {s['target']}   quant {s['quant']}   weights {s['weights_bytes'] / 2**20:.2f} MiB",
    ]
    if p.get("peak_bytes"):
        lines.append(f"plan     patch-based {grid} up to '{p['split_node']}': peak activations "
                     f"{p['peak_bytes'] / 1024:.1f} KiB vs {(p['layer_peak_bytes'] or 0) / 1024:.1f} KiB layer by "
                     f"layer ({p['reduction']}x), +{p['extra_macs_pct']}% MACs")
    if s["mcu"]:
        lines.append(f"mcu      {json.dumps(s['mcu'])}")
    lines.append("files    " + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in files.items()))
    s["text"] = "\n".join(lines)
    return s
