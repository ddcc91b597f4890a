"""Calibration of an int8 CNN: run the float32 graph over sample inputs (the executor) to find every tensor's
range, then quantise with those ranges (:mod:`.quant`). The one module that needs both, so neither imports the
other."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ...errors import OptionError
from ..bundle.cnn_graph import CnnGraph
from .executor import CnnRunner
from .quant import QuantCnn, quantize_cnn


def tensor_ranges(graph: CnnGraph, inputs: Iterable[np.ndarray]) -> dict[str, tuple[float, float]]:
    """min/max of every tensor over the calibration ``inputs`` (float32 [C, H, W] each), float32 execution."""
    runner = CnnRunner(graph)
    ranges: dict[str, tuple[float, float]] = {}
    count = 0
    for x in inputs:
        seen: dict[str, np.ndarray] = {}
        runner.run_layers(x, collect=seen)
        for k, v in seen.items():
            lo, hi = float(v.min()), float(v.max())
            if k in ranges:
                lo, hi = min(lo, ranges[k][0]), max(hi, ranges[k][1])
            ranges[k] = (lo, hi)
        count += 1
    if count == 0:
        raise OptionError("int8 quantisation needs at least one calibration input")
    return ranges



def calibrate_and_quantize(graph: CnnGraph, inputs: Iterable[np.ndarray]) -> QuantCnn:
    """:func:`tensor_ranges` then :func:`quantize_cnn`."""
    return quantize_cnn(graph, tensor_ranges(graph, inputs))
