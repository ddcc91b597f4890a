"""The fast CPU executor: the CNN graph IR lowered to onnxruntime sessions (:mod:`.onnx_lower`).

* layer by layer: one session for the whole graph.
* patch-based (a :class:`PatchPlan`), ``fused`` (the default): the whole patched network as one session
  (:func:`.onnx_lower.lower_patched`): stage 1 for every patch in turn from the image, the patch outputs joined
  into the stage-1 output by a spatial ``Concat``, stage 2; one call, and onnxruntime keeps its NHWC (int8) /
  NCHWc (f32) layouts across the join instead of converting each patch back to NCHW for a numpy copy.
* ``fused=False``: stage 1 as one session computing every patch in turn from the image
  (``merged``: one call, weights shared; onnxruntime runs the nodes in patch order and frees each
  patch's tensors before the next, but the patch outputs stay until the call returns), or one small session per
  patch (``merged=False``: its input is the patch's input region, or the whole image when the plan keeps the
  input resident); the patch outputs are written into the stage-1 output buffer (numpy), then one session runs
  stage 2 over that buffer.

Same numbers as the numpy executor (:class:`.executor.CnnRunner`): f32 to float rounding, int8 bit-identical (the
lowering reproduces its integer arithmetic). Memory: the activations held between sessions are the plan's (the
stage-1 buffer, the input); inside a session onnxruntime allocates the patch's tensors in float32 (f32) or int8
plus its own scratch (e.g. float32 copies in the int8 elementwise steps, NCHWc reorders): see
``benchmarks/cnn_speed.py`` for the measured process memory.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import OptionError
from ..bundle.cnn_graph import CnnGraph
from .executor import CnnRunner
from .act_lower import exact_float_acts
from .onnx_lower import full_box, input_quantizer, lower_patched, lower_patches, lower_segment

if TYPE_CHECKING:
    from ...schedulers.patch_plan import PatchPlan
    from .quant import QuantCnn


def session_options(threads: int) -> Any:
    """onnxruntime options for ``threads`` intra-op threads (sequential execution, full graph optimisation)."""
    import onnxruntime as ort

    if threads < 1:
        raise OptionError(f"--threads {threads}: must be >= 1")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


class _Session:
    """One onnxruntime session over a lowered segment (one input, one output)."""

    def __init__(self, model: Any, threads: int) -> None:
        import onnxruntime as ort

        self.sess = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                         providers=["CPUExecutionProvider"])
        self.inp = self.sess.get_inputs()[0].name
        self.out = [self.sess.get_outputs()[0].name]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(self.out, {self.inp: x})[0]


class OrtCnnRunner:
    """Runs a :class:`CnnGraph` through onnxruntime: f32, or int8 with a :class:`QuantCnn`; layer by layer, and
    patch-based when given a patched ``plan``. ``weights_u8``: see :func:`.onnx_lower.lower_segment` (default:
    uint8 weights on x86 CPUs without VNNI, where that is what keeps int8 bit-exact)."""

    def __init__(self, graph: CnnGraph, quant: "QuantCnn | None" = None, plan: "PatchPlan | None" = None,
                 threads: int = 1, merged: bool = True, fused: bool = True, weights_u8: bool | None = None) -> None:
        self.graph, self.quant, self.plan, self.threads = graph, quant, plan, threads
        self._ref = CnnRunner(graph, quant)  # input checks / quantisation and output dequantisation
        g = graph
        fa = exact_float_acts(g, quant) if quant is not None else frozenset()  # checked once, all 256 codes
        self.float_acts = fa
        self.whole = _Session(lower_segment(g, 0, len(g.nodes), {g.input: full_box(g, g.input)}, {}, [g.output],
                                            quant, g.name, fa, weights_u8), threads)
        # the input's QuantizeLinear on one thread: a second session with its own intra-op pool spins its workers
        # after each run, against the network session's threads (2 threads, 2 cores: MobileNetV2's first conv
        # and depthwise ran 2-4x slower behind it); one elementwise op gains nothing from threads
        self.quantizer = _Session(input_quantizer(g, quant), 1) if quant is not None else None
        self.patches: list[tuple[dict[str, tuple[int, int, int, int]], _Session]] = []
        self.stage2: _Session | None = None
        self.merged: Any = None
        self.fused: _Session | None = None
        if plan is not None and plan.is_patched and fused:
            if plan.model != g.name or plan.split_index >= len(g.nodes):
                raise OptionError(f"patch plan for {plan.model!r} does not match graph {g.name!r}")
            self.fused = _Session(lower_patched(g, plan.split_index, plan.patch_regions(), quant, fa, weights_u8),
                                  threads)
        elif plan is not None and plan.is_patched:
            if plan.model != g.name or plan.split_index >= len(g.nodes):
                raise OptionError(f"patch plan for {plan.model!r} does not match graph {g.name!r}")
            split = plan.split_index
            t = g.nodes[split].output
            regions = plan.patch_regions()
            if merged:
                import onnxruntime as ort

                m = lower_patches(g, split, regions, full_box(g, g.input), quant, fa, weights_u8)
                self.merged = ort.InferenceSession(m.SerializeToString(), session_options(threads),
                                                   providers=["CPUExecutionProvider"])
                self.regions = regions
            for reg in ([] if merged else regions):
                ib = full_box(g, g.input) if plan.input_resident else reg[g.input]
                m = lower_segment(g, 0, split + 1, {g.input: ib}, reg, [t], quant, f"{g.name}_patch", fa, weights_u8)
                self.patches.append((reg, _Session(m, threads)))
            self.stage2 = _Session(lower_segment(g, split + 1, len(g.nodes), {t: full_box(g, t)}, {}, [g.output],
                                                 quant, f"{g.name}_stage2", fa, weights_u8), threads)

    @property
    def mode(self) -> str:
        return "int8" if self.quant is not None else "f32"

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """float32 [C, H, W] (or [1, C, H, W]) -> the session's [1, C, H, W] input (int8-quantised, carried as uint8, in int8 mode)."""
        xf = np.asarray(x, dtype=np.float32)
        if xf.ndim == 3:
            xf = xf[None]
        if tuple(xf.shape) != (1,) + tuple(self.graph.input_shape):
            self._ref._prep_input(xf)  # raises the executor's OptionError naming both shapes
        xf = np.ascontiguousarray(xf)
        if self.quantizer is not None:  # int8: quantised by onnxruntime, carried as uint8 = int8 + 128
            return self.quantizer(xf)
        return xf

    def finish(self, y: np.ndarray) -> np.ndarray:
        """Session output -> float32 in the graph output's shape (dequantised in int8 mode)."""
        if self.quant is not None:
            y = (y.astype(np.int16) - 128).astype(np.int8)
        return self._ref._finish(y.reshape(self.graph.shapes[self.graph.output]))

    def run_layers(self, x: np.ndarray) -> np.ndarray:
        """Whole graph in one session; float32 output."""
        return self.finish(self.whole(self.prepare(x)))

    def run_patched(self, x: np.ndarray) -> np.ndarray:
        """Stage 1 patch by patch into the stage-1 buffer, then stage 2; float32 output."""
        if self.fused is not None:
            return self.finish(self.fused(self.prepare(x)))
        if self.stage2 is None or self.plan is None:
            return self.run_layers(x)
        g = self.graph
        xi = self.prepare(x)
        t = g.nodes[self.plan.split_index].output
        tbuf = np.empty((1,) + tuple(g.shapes[t]), dtype=xi.dtype)
        if self.merged is not None:
            for reg, y in zip(self.regions, self.merged.run(None, {"x": xi})):
                y0, y1, x0, x1 = reg[t]
                tbuf[:, :, y0:y1, x0:x1] = y
            return self.finish(self.stage2(tbuf))
        for reg, sess in self.patches:
            if self.plan.input_resident:
                xin = xi
            else:
                y0, y1, x0, x1 = reg[g.input]
                xin = np.ascontiguousarray(xi[:, :, y0:y1, x0:x1])
            y0, y1, x0, x1 = reg[t]
            tbuf[:, :, y0:y1, x0:x1] = sess(xin)
        return self.finish(self.stage2(tbuf))
