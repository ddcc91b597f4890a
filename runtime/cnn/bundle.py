"""CnnBundle: read a CNN bundle (``"kind": "cnn"``) written by :func:`edgespool.exporters.cnn.export.export_cnn`.

Layout (on top of the common bundle: magic, schema version, ``weights.bin`` with the usual tensor records that
:class:`~edgespool.runtime.bundle.reader.Bundle` validates and CRC-checks)::

    manifest["cnn"] = {
      "graph":   {"name", "input", "input_shape", "output", "nodes": [{"name", "op", "inputs", "output", "attrs",
                  "weights": {key: tensor name}}]},
      "quant":   "f32" | "int8",
      "qparams": int8 only: per-tensor [scale, zero point] and per-node scalars (arrays are tensors "q/<node>/<key>"),
      "arrays":  {tensor name: {"dtype", "shape"}}  (int32 arrays are stored as uint8 bytes),
      "plan":    the PatchPlan (split index, grid, peak bytes, per-layer memory; regions are recomputed),
      "preprocess": {"resolution", "mean", "std"}, "labels": optional list of class names,
      "mcu":     for mcu-* targets: the C project directory and its sizes }
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BundleError, OptionError
from ..bundle.reader import Bundle
from .executor import CnnRunner, RunResult
from ..bundle.cnn_graph import CnnGraph, Node
from .quant import QuantCnn
from .api import IMAGENET_MEAN, IMAGENET_STD


def attrs_to_json(attrs: dict[str, Any]) -> dict[str, Any]:
    """Node attributes -> JSON-safe values (tuples -> lists, +-inf -> None)."""
    def conv(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None if v > 0 else "-inf"
        if isinstance(v, np.generic):
            return v.item()
        return v
    return {k: conv(v) for k, v in attrs.items()}


def attrs_from_json(op: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`attrs_to_json`."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if k in ("kernel", "stride", "pads", "dilation", "shape"):
            out[k] = tuple(int(x) for x in v)
        elif k == "act":
            out[k] = None if v is None else (v[0], -math.inf if v[1] == "-inf" else float(v[1]),
                                             math.inf if v[2] is None else float(v[2]))
        elif k in ("lo", "hi"):
            out[k] = (math.inf if k == "hi" else -math.inf) if v is None or v == "-inf" else float(v)
        else:
            out[k] = v
    return out


class CnnBundle:
    """A loaded CNN bundle: graph, weights, int8 parameters and patch plan; :meth:`run` executes it."""

    def __init__(self, path: str | os.PathLike | Bundle) -> None:
        self.bundle = path if isinstance(path, Bundle) else Bundle(path)
        b = self.bundle
        if b.kind != "cnn" or "cnn" not in b.manifest:
            raise BundleError(f"{b.path}: not a CNN bundle (kind {b.kind!r}); export one from an .onnx/.pth model")
        c = b.manifest["cnn"]
        arrays: dict[str, np.ndarray] = {}
        for gname in b.iter_groups():
            for name, qt in b.read_group(gname).items():
                info = c["arrays"][name]
                arrays[name] = np.array(qt.data).view(np.dtype(info["dtype"])).reshape(info["shape"])
        self.quant_mode: str = c["quant"]
        g = c["graph"]
        nodes = []
        qarrays: dict[str, np.ndarray] = {}
        for nd in g["nodes"]:
            nodes.append(Node(nd["name"], nd["op"], list(nd["inputs"]), nd["output"],
                              attrs_from_json(nd["op"], nd["attrs"]),
                              {k: arrays[t] for k, t in nd.get("weights", {}).items()}))
        for name, arr in arrays.items():
            if name.startswith("q/"):
                qarrays[name[2:]] = arr
        self.quant: QuantCnn | None = None
        if self.quant_mode == "int8":
            self.quant = QuantCnn.from_parts(c["qparams"], qarrays)
            for n in nodes:  # int8 bundles keep only int8 weights: the graph sees them dequantised
                qn = self.quant.nodes.get(n.name, {})
                if "w" in qn:
                    w = qn["w"].astype(np.float32)
                    n.weights = {"w": w * qn["w_scale"].reshape((-1,) + (1,) * (w.ndim - 1)),
                                 "b": qn["bias"].astype(np.float32)}
        self.graph = CnnGraph(g["name"], g["input"], tuple(g["input_shape"]), g["output"], nodes)
        from ...schedulers.patch_plan import PatchPlan

        self.plan = PatchPlan.from_dict(c["plan"], self.graph)
        pre = c.get("preprocess", {})
        self.resolution: int = int(pre.get("resolution", self.graph.input_shape[1]))
        self.mean: tuple[float, ...] = tuple(pre.get("mean", IMAGENET_MEAN))
        self.std: tuple[float, ...] = tuple(pre.get("std", IMAGENET_STD))
        self.crop: bool = bool(pre.get("crop", True))
        self.labels: list[str] | None = c.get("labels")
        self.manifest = b.manifest

    def preprocess(self, image: Any) -> np.ndarray:
        """An image file or HxWx3 array -> this bundle's float32 [C, H, W] input, with the normalisation and
        resize the bundle records (ImageNet's for torch / ONNX classifiers, [-1, 1] and no crop for TFLite)."""
        from .api import preprocess

        return preprocess(image, self.resolution, mean=self.mean, std=self.std, crop=self.crop)

    def tflite_outputs(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """The TFLite output tensors of a bundle exported from a ``.tflite`` (name -> array), cut out of the IR's one
        output ``y`` by the index arrays the manifest's ``cnn.tflite_outputs`` names."""
        c = self.manifest["cnn"]
        spec = c.get("tflite_outputs")
        if not spec:
            raise OptionError(f"{self.path}: not exported from a .tflite model (no tflite_outputs in its manifest)")
        want = {o["index"] for o in spec}
        found: dict[str, np.ndarray] = {}
        for g in self.bundle.iter_groups():
            for name, qt in self.bundle.read_group(g).items():
                if name in want:
                    info = c["arrays"][name]
                    found[name] = np.array(qt.data).view(np.dtype(info["dtype"])).reshape(info["shape"])
        flat = np.asarray(y).reshape(-1)
        return {o["name"]: flat[found[o["index"]]].reshape(o["shape"]) for o in spec}

    def runner(self) -> CnnRunner:
        return CnnRunner(self.graph, self.quant)

    def run(self, x: np.ndarray, patched: bool = True, engine: str = "numpy", threads: int = 1) -> RunResult:
        """Run one preprocessed float32 [C, H, W] input; patch-based per the bundle's plan when ``patched``.

        ``engine``: "numpy" (the reference executor; ``peak_bytes`` = activation bytes it actually held) or
        "onnxruntime" (the fast CPU path, same numbers: f32 to rounding, int8 bit-identical; ``peak_bytes`` = the
        plan's figure, not a measurement)."""
        use_plan = patched and self.plan.is_patched
        if engine == "onnxruntime":
            key = (use_plan, threads)
            if getattr(self, "_ort", None) is None or self._ort[0] != key:
                from .ort_runner import OrtCnnRunner

                self._ort = (key, OrtCnnRunner(self.graph, self.quant, self.plan if use_plan else None, threads))
            r = self._ort[1]
            out = r.run_patched(x) if use_plan else r.run_layers(x)
            peak = self.plan.peak_bytes if use_plan else self.plan.layer_peak_bytes
            return RunResult(out, peak, [], self.graph.total_macs())
        if engine != "numpy":
            raise OptionError(f"--cnn-engine {engine!r}: expected 'numpy' or 'onnxruntime'")
        r = self.runner()
        return r.run_patched(x, self.plan) if use_plan else r.run_layers(x)

    @property
    def path(self) -> Path:
        return self.bundle.path
