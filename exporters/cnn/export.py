"""``export_cnn``: ONNX / .pth CNN -> CNN bundle (graph, f32 or int8 weights, patch plan; C project for MCUs).

The bundle is a normal edgespool bundle directory (magic, schema version, ``weights.bin`` with CRC-checked tensor
records, so :class:`~edgespool.runtime.bundle.reader.Bundle` opens it) with ``"kind": "cnn"`` and a ``cnn`` manifest
section described in :mod:`edgespool.runtime.cnn.bundle`. For ``mcu-*`` targets the self-contained C project is
written to ``<bundle>/mcu/`` (see :mod:`.mcu_c`) and its flash/SRAM figures are checked and recorded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ... import __version__
from ...errors import BudgetError, OptionError
from ...runtime.bundle.constants import MAGIC, PART_ALIGNMENT, SCHEMA_VERSION, WEIGHTS
from ...runtime.cnn.api import IMAGENET_MEAN, IMAGENET_STD, preprocess
from ...runtime.cnn.bundle import attrs_to_json
from ...runtime.bundle.cnn_graph import CnnGraph
from ...runtime.cnn.calibrate import calibrate_and_quantize
from ...runtime.cnn.quant import QuantCnn
from ...schedulers.patch_plan import PatchPlan, plan_patches
from ...targets.profiles import TargetProfile, get_target
from ..bundle_writer import BundleFiles

CNN_SUFFIXES = (".onnx", ".pth", ".pt", ".tflite")
TFLITE_MEAN, TFLITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # TFLite float vision models: x / 127.5 - 1


def load_cnn(model_path: str | os.PathLike, *, input_shape: Sequence[int] | None = None, width: float = 1.0,
             resolution: int = 224) -> CnnGraph:
    """An ONNX file or a MobileNetV2 ``.pth`` state dict -> CnnGraph (``width``/``resolution`` for .pth only)."""
    p = Path(model_path)
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        from .from_onnx import load_onnx_cnn

        return load_onnx_cnn(p, input_shape)
    if suffix == ".tflite":
        from .from_tflite import load_tflite_cnn

        return load_tflite_cnn(p, input_shape)
    if suffix in (".pth", ".pt"):
        from .from_pth import load_torch_cnn

        if input_shape is not None:
            shp = [int(v) for v in input_shape]
            if shp[-1] != shp[-2] or shp[-3] != 3:
                raise OptionError(f"--input-shape {shp}: MobileNetV2 takes a square 3-channel image")
            resolution = shp[-1]
        return load_torch_cnn(p, width=width, resolution=resolution)
    raise OptionError(f"{p}: unknown CNN model format {suffix!r}; expected one of {', '.join(CNN_SUFFIXES)}")


def synthetic_calibration(shape: Sequence[int], n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """``n`` smooth random 'photos' (low-frequency colour fields + mild texture) normalised like ImageNet input.
    Used for int8 calibration when no calibration images are given (real images calibrate better)."""
    c, h, w = (int(v) for v in shape)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.uniform(0, 1, (c, 6, 6))
        ys = np.linspace(0, 5, h)
        xs = np.linspace(0, 5, w)
        y0 = np.minimum(ys.astype(int), 4)
        x0 = np.minimum(xs.astype(int), 4)
        fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
        img = (base[:, y0][:, :, x0] * (1 - fy) * (1 - fx) + base[:, y0 + 1][:, :, x0] * fy * (1 - fx)
               + base[:, y0][:, :, x0 + 1] * (1 - fy) * fx + base[:, y0 + 1][:, :, x0 + 1] * fy * fx)
        img = np.clip(img + rng.normal(0, 0.08, (c, h, w)), 0, 1)
        if c == 3:
            img = (img - np.asarray(IMAGENET_MEAN)[:, None, None]) / np.asarray(IMAGENET_STD)[:, None, None]
        out.append(img.astype(np.float32))
    return out


SAMPLE_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


def sample_photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled sample images (``"chelsea"``, ``"astronaut"``, ...) as an HxWxC uint8 array.

    Read straight from the file with Pillow: ``skimage.data`` finds its imread plugins with ``glob``, which reads
    brackets in the install path (a venv under ``/tmp/es [ci]``) as a character class and then fails with "No suitable
    plugin registered for imread". Raises ``ImportError`` without scikit-image, ``FileNotFoundError`` for a sample
    that is not bundled (those need a download) or an unknown name.
    """
    import skimage.data
    from PIL import Image

    folder = Path(skimage.data.__file__).parent
    for ext in (".png", ".jpg", ".jpeg", ".tif"):
        f = folder / f"{name}{ext}"
        if f.is_file():
            with Image.open(f) as im:
                return np.asarray(im)
    raise FileNotFoundError(f"scikit-image sample {name!r} is not bundled in {folder} (it needs a download)")


def sample_photos() -> list[np.ndarray]:
    """scikit-image's bundled sample colour photos (not the cat photos, which tests classify); [] without skimage."""
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return []
    out = []
    for name in SAMPLE_PHOTOS:
        try:
            img = sample_photo(name)
        except FileNotFoundError:  # some samples need a download (pooch); skip those
            continue
        if img.ndim == 3 and img.shape[2] >= 3:
            out.append(np.ascontiguousarray(img[..., :3]))
    return out


def _calibration_inputs(graph: CnnGraph, calibration: Sequence[Any] | None, mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD) -> tuple[list[np.ndarray], str]:
    if not calibration:
        photos = sample_photos() if graph.input_shape[0] == 3 else []
        if photos:
            return ([preprocess(p, graph.input_shape[1], mean=mean, std=std) for p in photos],
                    f"{len(photos)} scikit-image sample photos ({', '.join(SAMPLE_PHOTOS)})")
        return synthetic_calibration(graph.input_shape), "synthetic (8 smooth random images; pass calibration " \
                                                         "images for better int8 accuracy)"
    xs = []
    for item in calibration:
        if isinstance(item, np.ndarray) and item.ndim == 3 and item.shape[0] == graph.input_shape[0] \
                and item.dtype == np.float32:
            xs.append(item)
        else:
            xs.append(preprocess(item, graph.input_shape[1], mean=mean, std=std))
    return xs, f"{len(xs)} calibration images"


class _CnnWriter:
    """A CNN bundle on the one bundle writer (:class:`~edgespool.exporters.bundle_writer.BundleFiles`): every
    array is one tensor record of group ``cnn`` (64-byte aligned), the graph goes into the manifest's ``cnn``."""

    def __init__(self, out_dir: Path, overwrite: bool) -> None:
        self.files = BundleFiles(out_dir, overwrite)
        self.arrays: dict[str, Any] = {}

    def add(self, name: str, arr: np.ndarray) -> str:
        arr = np.ascontiguousarray(arr)
        stored = arr if arr.dtype.name in ("float32", "int8", "uint8") else arr.view(np.uint8)
        scheme = "int8" if stored.dtype == np.int8 else "f32"
        self.files.write_tensor(name, "cnn", scheme, tuple(arr.shape), [("data", stored)], align=PART_ALIGNMENT)
        self.arrays[name] = {"dtype": arr.dtype.name, "shape": list(arr.shape)}
        return name

    def finish(self, cnn: dict[str, Any], extra: dict[str, Any]) -> Path:
        tensors = self.files.tensors
        nbytes = self.files.close_weights(PART_ALIGNMENT)
        first = min((r["offset"] for r in tensors.values()), default=0)
        manifest = {"magic": MAGIC, "schema_version": SCHEMA_VERSION, "created_by": f"edgespool {__version__}",
                    "kind": "cnn", **extra,
                    "weights": {"file": WEIGHTS, "nbytes": nbytes, "alignment": PART_ALIGNMENT},
                    "groups": [{"name": "cnn", "offset": first, "nbytes": nbytes - first,
                                "tensors": list(tensors)}] if tensors else [],
                    "tensors": tensors, "cnn": {**cnn, "arrays": self.arrays}}
        return self.files.publish(manifest)

    def abort(self) -> None:
        self.files.abort()


def export_cnn(model_path: str | os.PathLike, target: str | TargetProfile, out_dir: str | os.PathLike, *,
               activation_budget: int | None = None, quant: str = "f32", input_shape: Sequence[int] | None = None,
               overwrite: bool = False, width: float = 1.0, resolution: int = 224,
               max_overhead: float | None = None, calibration: Sequence[Any] | None = None,
               labels: Sequence[str] | None = None, compile_c: bool = True) -> Path:
    """Export a CNN (``.onnx``, or a MobileNetV2 ``.pth`` with ``width``/``resolution``) into a bundle.

    ``activation_budget`` (bytes of activations: int8 = 1 byte/value, f32 = 4) picks the patch plan with the
    fewest extra MACs that fits (BudgetError with the smallest reachable peak otherwise); without it the plan with
    the smallest peak under ``max_overhead`` (default 15% extra MACs). MCU targets default the budget to the
    target's SRAM, force int8, and also emit the C project (BudgetError when weights exceed flash or the arena
    exceeds SRAM). ``calibration``: images (paths / HxWx3 uint8 arrays / preprocessed CHW float32) for int8;
    default: synthetic images (recorded in the manifest). Returns the bundle path.
    """
    profile = get_target(target) if isinstance(target, str) else target
    if quant not in ("f32", "int8"):
        raise OptionError(f"--quant {quant!r}: CNN bundles are 'f32' or 'int8'")
    if profile.kind == "mcu":
        quant = "int8"
    tfl = None
    if Path(model_path).suffix.lower() == ".tflite":  # keeps the TFLite outputs' layout for the manifest
        from .from_tflite import load_tflite

        tfl = load_tflite(model_path, input_shape)
        graph = tfl.graph
    else:
        graph = load_cnn(model_path, input_shape=input_shape, width=width, resolution=resolution)
    if profile.kind == "mcu":
        from .mcu_c import check_flash

        check_flash(graph, None, profile)  # fail before planning, calibrating or writing anything
    itemsize = 1 if quant == "int8" else 4
    budget = activation_budget
    if budget is None and profile.kind == "mcu":
        budget = profile.ram
    plan = plan_patches(graph, activation_budget=budget, max_overhead=max_overhead, itemsize=itemsize)
    q: QuantCnn | None = None
    calib_note = None
    if quant == "int8":
        norm = {"mean": TFLITE_MEAN, "std": TFLITE_STD} if tfl is not None else {}
        xs, calib_note = _calibration_inputs(graph, calibration, **norm)
        if tfl is not None and tfl.qparams:  # an int8 TFLite model: its own scales / zero points where it has them
            from ...runtime.cnn.calibrate import tensor_ranges
            from ...runtime.cnn.quant import quantize_cnn

            q = quantize_cnn(graph, {**tensor_ranges(graph, xs), **tfl.int8_ranges()})
            calib_note = f"the TFLite model's own int8 parameters ({len(tfl.qparams)} tensors); the rest: {calib_note}"
        else:
            q = calibrate_and_quantize(graph, xs)
    mcu_info: dict[str, Any] | None = None
    w = _CnnWriter(Path(out_dir), overwrite)
    try:
        nodes_json = []
        qmeta, qarrays = q.to_parts() if q is not None else (None, {})
        for n in graph.nodes:
            ws: dict[str, str] = {}
            if q is None:
                for k, arr in n.weights.items():
                    ws[k] = w.add(f"{n.name}/{k}", arr.astype(np.float32))
            nodes_json.append({"name": n.name, "op": n.op, "inputs": n.inputs, "output": n.output,
                               "attrs": attrs_to_json(n.attrs), "weights": ws})
        for key, arr in qarrays.items():
            w.add(f"q/{key}", arr)
        cnn: dict[str, Any] = {
            "graph": {"name": graph.name, "input": graph.input, "input_shape": list(graph.input_shape),
                      "output": graph.output, "nodes": nodes_json},
            "quant": quant,
            "quant_scheme": None if q is None else ("int8: per-output-channel symmetric weights, per-tensor "
                                                     "asymmetric activations, int32 bias, float32 requant"),
            "calibration": calib_note,
            "qparams": qmeta,
            "plan": plan.to_dict(with_regions=False),
            "preprocess": {"resolution": int(graph.input_shape[1]), "mean": list(IMAGENET_MEAN),
                           "std": list(IMAGENET_STD), "resize": "shorter side to resolution/0.875, centre crop"},
            "labels": list(labels) if labels is not None else None,
            "source": str(model_path),
            "macs": graph.total_macs(), "params": graph.param_count(),
        }
        if tfl is not None:  # TFLite float vision models take [-1, 1] input; outputs = index arrays into ours
            cnn["preprocess"].update(mean=list(TFLITE_MEAN), std=list(TFLITE_STD), crop=False,
                                     resize="whole image to resolution x resolution (bilinear, no crop)")
            cnn["tflite_outputs"] = [{"name": nm, "shape": list(shp), "index": w.add(f"tflite/outputs/{k}",
                                                                                   idx.astype(np.int32))}
                                     for k, (nm, shp, idx) in enumerate(tfl.outputs)]
        if profile.kind == "mcu":
            from .mcu_c import export_c_project

            assert q is not None
            proj = export_c_project(graph, q, plan, profile, w.files.stage_path("mcu"), compile_arm=compile_c)
            mcu_info = proj.to_dict()
            cnn["mcu"] = mcu_info
        return w.finish(cnn, {"target": profile.to_dict()})
    except BaseException:
        w.abort()
        raise


def plan_for(model_path: str | os.PathLike, *, activation_budget: int | None = None,
             max_overhead: float | None = None, input_shape: Sequence[int] | None = None, width: float = 1.0,
             resolution: int = 224, itemsize: int = 1) -> PatchPlan:
    """Load a model and plan it (what ``edgespool plan`` prints)."""
    graph = load_cnn(model_path, input_shape=input_shape, width=width, resolution=resolution)
    return plan_patches(graph, activation_budget=activation_budget, max_overhead=max_overhead, itemsize=itemsize)


__all__ = ["export_cnn", "load_cnn", "plan_for", "synthetic_calibration", "BudgetError"]
