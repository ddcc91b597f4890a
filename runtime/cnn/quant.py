"""int8 post-training quantisation of a CNN graph (TFLite-style, integer inference).

* Weights: symmetric int8 per output channel: ``w = wq * w_scale[o]`` (conv ``[O, ...]``, gemm ``[N, K]``).
* Activations: asymmetric int8 per tensor: ``x = (q - zp) * scale``, ranges from calibration (min/max over the
  calibration inputs, widened to include 0). Maxpool and reshape outputs share their input's parameters.
* Bias: int32 ``round(b / (s_in * w_scale[o]))``. Requantisation multipliers are float32 (see
  :mod:`.executor` for the exact arithmetic). Elementwise activations (sigmoid, hardswish, a standalone clip...)
  are 256-entry int8 lookup tables (hard-swish / hard-sigmoid tables in ONNX's float32 steps, :func:`lut_f32`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import OptionError, UnsupportedModelError
from ..bundle.cnn_graph import CnnGraph, Node


@dataclass
class QuantCnn:
    """Quantisation parameters of a graph: per-tensor (scale, zero point) and per-node integer parameters."""

    tensors: dict[str, tuple[float, int]]
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def quantize_input(self, x: np.ndarray, name: str | None = None) -> np.ndarray:
        """float32 [C, H, W] network input -> int8 with the input tensor's parameters:
        ``clip(rint(float32(x) / float32(scale)) + zp)`` (float32 division: ONNX QuantizeLinear's arithmetic, so the
        onnxruntime path quantises its input inside the graph to the same int8 values)."""
        s, z = self.tensors[name] if name else next(iter(self.tensors.values()))
        return np.clip(np.rint(np.asarray(x, np.float32) / np.float32(s)) + z, -128, 127).astype(np.int8)

    # -- (de)serialisation: scalars as JSON, arrays separately ------------------------------------------------------
    ARRAY_KEYS = ("w", "w_scale", "bias", "mult", "lut")

    def to_parts(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-ready scalars, {"<node>/<key>": array}) -- the inverse of :meth:`from_parts`."""
        meta: dict[str, Any] = {"tensors": {k: [float(s), int(z)] for k, (s, z) in self.tensors.items()},
                                "nodes": {}}
        arrays: dict[str, np.ndarray] = {}
        for name, qn in self.nodes.items():
            m: dict[str, Any] = {}
            for k, v in qn.items():
                if k in self.ARRAY_KEYS and isinstance(v, np.ndarray) and v.ndim > 0:
                    arrays[f"{name}/{k}"] = v
                elif k == "mults":
                    m[k] = [float(x) for x in v]
                elif k == "clamp":
                    m[k] = [int(v[0]), int(v[1])]
                else:
                    m[k] = float(v)
            meta["nodes"][name] = m
        return meta, arrays

    @staticmethod
    def from_parts(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "QuantCnn":
        tensors = {k: (float(v[0]), int(v[1])) for k, v in meta["tensors"].items()}
        nodes: dict[str, dict[str, Any]] = {}
        for name, m in meta["nodes"].items():
            qn: dict[str, Any] = {}
            for k, v in m.items():
                if k == "mults":
                    qn[k] = [np.float32(x) for x in v]
                elif k == "clamp":
                    qn[k] = (int(v[0]), int(v[1]))
                else:
                    qn[k] = np.float32(v)
            nodes[name] = qn
        for key, arr in arrays.items():
            name, k = key.rsplit("/", 1)
            nodes.setdefault(name, {})[k] = arr
        return QuantCnn(tensors, nodes)


def act_params(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of an asymmetric int8 tensor covering [lo, hi] (widened to include 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = float(np.float32((hi - lo) / 255.0))
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return scale, zp


def _clamp(act: Any, s: float, z: int) -> tuple[int, int]:
    if act is None:
        return (-128, 127)
    lo, hi = float(act[1]), float(act[2])
    qlo = -128 if not math.isfinite(lo) else int(np.clip(z + round(lo / s), -128, 127))
    qhi = 127 if not math.isfinite(hi) else int(np.clip(z + round(hi / s), -128, 127))
    return (qlo, qhi)


def _act_f64(node: Node, x: np.ndarray) -> np.ndarray:
    k = node.attrs["kind"]
    if k == "clip":
        return np.clip(x, node.attrs["lo"], node.attrs["hi"])
    if k == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if k == "hardsigmoid":
        return np.clip(node.attrs["alpha"] * x + node.attrs["beta"], 0.0, 1.0)
    if k == "hardswish":
        return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    raise OptionError(f"node {node.name!r}: unknown activation {k!r}")


def lut_f32(node: Node, si: float, zi: int, so: float, zo: int) -> np.ndarray:
    """int8 table of a hard-swish / hard-sigmoid act in float32 steps, as ONNX DequantizeLinear -> HardSwish /
    HardSigmoid -> QuantizeLinear compute them: ``x = float32(q - zi) * si``; hard-swish ``x * clip(x * float32(1/6)
    + 0.5, 0, 1)``, hard-sigmoid ``clip(x * alpha + beta, 0, 1)`` (each product and sum rounded to float32, no fma);
    ``clip(rint(y / so) + zo)``. (The onnxruntime lowering checks its chain against this table, :mod:`.act_lower`.)"""
    f = np.float32
    x = (np.arange(-128, 128) - zi).astype(np.float32) * f(si)
    if node.attrs["kind"] == "hardswish":
        y = x * np.clip(x * f(1.0 / 6.0) + f(0.5), f(0), f(1))
    else:
        y = np.clip(x * f(node.attrs["alpha"]) + f(node.attrs["beta"]), f(0), f(1))
    return np.clip(np.rint(y.astype(np.float32) / f(so)) + zo, -128, 127).astype(np.int8)


def _weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    amax = np.abs(flat).max(axis=1)
    ws = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    wq = np.clip(np.rint(flat / ws.astype(np.float64)[:, None]), -127, 127).astype(np.int8)
    return wq.reshape(w.shape), ws


def quantize_cnn(graph: CnnGraph, ranges: dict[str, tuple[float, float]]) -> QuantCnn:
    """Derive int8 parameters of every tensor and node from calibration ``ranges``."""
    tensors: dict[str, tuple[float, int]] = {graph.input: act_params(*ranges[graph.input])}
    nodes: dict[str, dict[str, Any]] = {}
    for n in graph.nodes:
        if n.op in ("maxpool", "reshape"):
            tensors[n.output] = tensors[n.inputs[0]]
        else:
            tensors[n.output] = act_params(*ranges[n.output])
        so, zo = tensors[n.output]
        sin = [tensors[t][0] for t in n.inputs]
        qn: dict[str, Any] = {}
        if n.op in ("conv", "gemm"):
            wq, ws = _weights(n.weights["w"])
            acc_scale = sin[0] * ws.astype(np.float64)
            bias = np.clip(np.rint(n.weights["b"].astype(np.float64) / acc_scale), -2**31, 2**31 - 1)
            qn.update(w=wq, w_scale=ws, bias=bias.astype(np.int32),
                      mult=(acc_scale / so).astype(np.float32), clamp=_clamp(n.attrs.get("act"), so, zo))
        elif n.op == "add":
            qn.update(m1=np.float32(sin[0] / so), m2=np.float32(sin[1] / so),
                      clamp=_clamp(n.attrs.get("act"), so, zo))
        elif n.op == "mul":
            qn.update(mult=np.float32(sin[0] * sin[1] / so), clamp=_clamp(n.attrs.get("act"), so, zo))
        elif n.op in ("avgpool", "gap"):
            qn.update(mult=np.float32(sin[0] / so))
        elif n.op == "concat":
            qn.update(mults=[np.float32(s / so) for s in sin])
        elif n.op == "act":
            if n.attrs["kind"] == "softmax":
                raise UnsupportedModelError(f"{graph.name}: node {n.name!r}: SOFTMAX has no int8 path (not an "
                                            f"elementwise table); run this model in f32")
            si, zi = tensors[n.inputs[0]]
            if n.attrs["kind"] in ("hardswish", "hardsigmoid"):
                qn.update(lut=lut_f32(n, si, zi, so, zo))
            else:
                xs = (np.arange(-128, 128, dtype=np.float64) - zi) * si
                ys = _act_f64(n, xs)
                qn.update(lut=np.clip(np.rint(ys / so) + zo, -128, 127).astype(np.int8))
        if qn:
            nodes[n.name] = qn
    return QuantCnn(tensors, nodes)
