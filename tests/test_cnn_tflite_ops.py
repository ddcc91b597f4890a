"""TFLite import, op by op: small models written with the LiteRT package's own generated schema (its object API
packs the flatbuffer), run by the LiteRT interpreter (the reference) and by edgespool's importer + executors.

Covers CONV_2D (SAME stride 2, VALID after an explicit spatial PAD, fused RELU6), DEPTHWISE_CONV_2D (multiplier 2,
dilation 2), RELU, AVERAGE_POOL_2D (SAME: padding excluded from the count), ADD (fused RELU), MAX_POOL_2D,
LOGISTIC, CONCATENATION (channels), channel PAD, MUL, MEAN (H, W), RESHAPE + FULLY_CONNECTED (NHWC flattening),
two outputs; f32 weights and f16 weights behind DEQUANTIZE; int8 weights and activations (QUANTIZE ... DEQUANTIZE);
and the errors: an unsupported op, truncated / mutated / non-TFLite files.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

litert = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert (the TFLite reference) missing")
from ai_edge_litert import schema_py_generated as S  # noqa: E402
import flatbuffers  # noqa: E402

from edgespool.errors import EdgespoolError, ModelFormatError, UnsupportedModelError  # noqa: E402
from edgespool.exporters.cnn.from_tflite import load_tflite  # noqa: E402
from edgespool.runtime.cnn.executor import CnnRunner  # noqa: E402
from edgespool.schedulers.patch_plan import plan_patches  # noqa: E402

BO = S.BuiltinOperator
OPT = S.BuiltinOptions


class Net:
    """Builds a TFLite model through LiteRT's generated object API."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.tensors: list = []
        self.buffers = [S.BufferT()]  # buffer 0: the empty one
        self.ops: list = []
        self.codes: list[int] = []

    def tensor(self, shape, dtype=S.TensorType.FLOAT32, data: np.ndarray | None = None, name: str | None = None,
               quant: tuple | None = None) -> int:
        t = S.TensorT()
        t.shape = list(shape)
        t.type = dtype
        t.name = name or f"t{len(self.tensors)}"
        t.buffer = 0
        if data is not None:
            b = S.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        if quant is not None:
            q = S.QuantizationParametersT()
            q.scale = [float(v) for v in np.atleast_1d(quant[0])]
            q.zeroPoint = [int(v) for v in np.atleast_1d(quant[1])]
            q.quantizedDimension = quant[2] if len(quant) > 2 else 0
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, arr: np.ndarray, f16: bool = False) -> int:
        if f16:  # f16 storage + DEQUANTIZE (what mediapipe's float models do)
            h = self.tensor(arr.shape, S.TensorType.FLOAT16, arr.astype(np.float16))
            return self.op(BO.DEQUANTIZE, [h], arr.shape)
        if arr.dtype == np.int32:
            return self.tensor(arr.shape, S.TensorType.INT32, arr)
        return self.tensor(arr.shape, S.TensorType.FLOAT32, arr.astype(np.float32))

    def op(self, code: int, ins: list[int], out_shape, opt_type: int = 0, opt=None, out: int | None = None) -> int:
        if code not in self.codes:
            self.codes.append(code)
        o = S.OperatorT()
        o.opcodeIndex = self.codes.index(code)
        o.inputs = list(ins)
        y = self.tensor(out_shape) if out is None else out
        o.outputs = [y]
        o.builtinOptionsType = opt_type
        o.builtinOptions = opt
        self.ops.append(o)
        return y

    def build(self, inputs: list[int], outputs: list[int]) -> bytes:
        sg = S.SubGraphT()
        sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = self.tensors, inputs, outputs, self.ops, "main"
        m = S.ModelT()
        m.version = 3
        codes = []
        for c in self.codes:
            oc = S.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = c, min(c, 127), 1
            codes.append(oc)
        m.operatorCodes, m.subgraphs, m.buffers, m.description = codes, [sg], self.buffers, "edgespool test"
        b = flatbuffers.Builder(1024)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    # -- layers ----------------------------------------------------------------------------------------------
    def conv(self, x: int, hw: tuple[int, int], cin: int, cout: int, k: int, s: int, same: bool, act: int = 0,
             f16: bool = False) -> tuple[int, tuple[int, int]]:
        w = self.const(self.rng.standard_normal((cout, k, k, cin)).astype(np.float32) * (2 / (k * k * cin)) ** .5,
                       f16)
        b = self.const(self.rng.standard_normal(cout).astype(np.float32) * 0.1, f16)
        o = S.Conv2DOptionsT()
        o.padding = S.Padding.SAME if same else S.Padding.VALID
        o.strideW = o.strideH = s
        o.fusedActivationFunction = act
        oh, ow = ((-(-hw[0] // s), -(-hw[1] // s)) if same else ((hw[0] - k) // s + 1, (hw[1] - k) // s + 1))
        return self.op(BO.CONV_2D, [x, w, b], [1, oh, ow, cout], OPT.Conv2DOptions, o), (oh, ow)

    def pool(self, code: int, x: int, shape, k: int, s: int, same: bool) -> int:
        o = S.Pool2DOptionsT()
        o.padding = S.Padding.SAME if same else S.Padding.VALID
        o.strideW = o.strideH = s
        o.filterWidth = o.filterHeight = k
        h, w, c = shape
        oh, ow = ((-(-h // s), -(-w // s)) if same else ((h - k) // s + 1, (w - k) // s + 1))
        return self.op(code, [x], [1, oh, ow, c], OPT.Pool2DOptions, o)


def all_ops_net(f16: bool = False, seed: int = 0) -> bytes:
    n = Net(seed)
    x = n.tensor([1, 16, 16, 3], name="image")
    t1, hw = n.conv(x, (16, 16), 3, 8, 3, 2, True, act=S.ActivationFunctionType.RELU6, f16=f16)  # 8x8x8
    o = S.DepthwiseConv2DOptionsT()
    o.padding, o.strideW, o.strideH, o.depthMultiplier = S.Padding.SAME, 1, 1, 2
    o.dilationWFactor = o.dilationHFactor = 2
    dw = n.const(n.rng.standard_normal((1, 3, 3, 16)).astype(np.float32) * 0.4, f16)
    db = n.const(n.rng.standard_normal(16).astype(np.float32) * 0.1, f16)
    t2 = n.op(BO.DEPTHWISE_CONV_2D, [t1, dw, db], [1, 8, 8, 16], OPT.DepthwiseConv2DOptions, o)
    t3 = n.op(BO.RELU, [t2], [1, 8, 8, 16])
    t4 = n.op(BO.PAD, [t3, n.const(np.array([[0, 0], [1, 1], [0, 1], [0, 0]], np.int32))], [1, 10, 9, 16])
    t5, _ = n.conv(t4, (10, 9), 16, 16, 3, 1, False, f16=f16)  # 8x7x16
    t6 = n.pool(BO.AVERAGE_POOL_2D, t5, (8, 7, 16), 3, 1, True)
    ao = S.AddOptionsT()
    ao.fusedActivationFunction = S.ActivationFunctionType.RELU
    t7 = n.op(BO.ADD, [t5, t6], [1, 8, 7, 16], OPT.AddOptions, ao)
    t8 = n.pool(BO.MAX_POOL_2D, t7, (8, 7, 16), 2, 2, False)  # 4x3x16
    t9 = n.op(BO.LOGISTIC, [t8], [1, 4, 3, 16])
    co = S.ConcatenationOptionsT()
    co.axis = 3
    t10 = n.op(BO.CONCATENATION, [t8, t9], [1, 4, 3, 32], OPT.ConcatenationOptions, co)
    t11 = n.op(BO.PAD, [t10, n.const(np.array([[0, 0], [0, 0], [0, 0], [2, 2]], np.int32))], [1, 4, 3, 36])
    t12 = n.op(BO.MUL, [t11, t11], [1, 4, 3, 36], OPT.MulOptions, S.MulOptionsT())
    ro = S.ReshapeOptionsT()
    ro.newShape = [1, 432]
    t13 = n.op(BO.RESHAPE, [t12, n.const(np.array([1, 432], np.int32))], [1, 432], OPT.ReshapeOptions, ro)
    fo = S.FullyConnectedOptionsT()
    fo.fusedActivationFunction = S.ActivationFunctionType.RELU
    fw = n.const(n.rng.standard_normal((10, 432)).astype(np.float32) * 0.05, f16)
    fb = n.const(n.rng.standard_normal(10).astype(np.float32) * 0.1, f16)
    t14 = n.op(BO.FULLY_CONNECTED, [t13, fw, fb], [1, 10], OPT.FullyConnectedOptions, fo)
    mo = S.ReducerOptionsT()
    mo.keepDims = True
    t15 = n.op(BO.MEAN, [t12, n.const(np.array([1, 2], np.int32))], [1, 1, 1, 36], OPT.ReducerOptions, mo)
    n.tensors[t14].name, n.tensors[t15].name = "logits", "pooled"
    return n.build([x], [t14, t15])


def reference(model: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    it = litert.Interpreter(model_content=model)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    xi = x
    if d["dtype"] != np.float32:
        s, z = d["quantization"]
        xi = np.clip(np.rint(x / s) + z, -128, 127).astype(d["dtype"])
    it.set_tensor(d["index"], xi[None])
    it.invoke()
    return {o["name"]: it.get_tensor(o["index"]) for o in it.get_output_details()}


@pytest.fixture(scope="module")
def image16() -> np.ndarray:
    return np.random.default_rng(7).uniform(-1, 1, (16, 16, 3)).astype(np.float32)


@pytest.mark.parametrize("f16", [False, True], ids=["f32", "f16"])
def test_all_ops_match_litert(tmp_path, image16, f16):
    model = all_ops_net(f16)
    p = tmp_path / "net.tflite"
    p.write_bytes(model)
    net = load_tflite(p)
    ref = reference(model, image16)
    r = CnnRunner(net.graph)
    y = r.run_layers(image16.transpose(2, 0, 1)).output
    got = net.split(y)
    assert set(got) == {"logits", "pooled"}
    for k in ref:
        assert got[k].shape == ref[k].shape
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
    plan = plan_patches(net.graph, itemsize=4, max_overhead=1.0)
    assert plan.is_patched
    # f32 patches compute the whole-map sums, up to the float summation order of differently shaped matmuls
    np.testing.assert_allclose(r.run_patched(image16.transpose(2, 0, 1), plan).output, y, rtol=1e-6, atol=1e-6)


def test_unsupported_op_names_file_and_op(tmp_path):
    n = Net()
    x = n.tensor([1, 8, 8, 3], name="image")
    y = n.op(BO.TANH, [x], [1, 8, 8, 3])
    n.tensors[y].name = "squashed"
    p = tmp_path / "tanh.tflite"
    p.write_bytes(n.build([x], [y]))
    with pytest.raises(UnsupportedModelError) as e:
        load_tflite(p)
    msg = str(e.value)
    assert str(p) in msg and "TANH" in msg and "operator #0" in msg and "'squashed'" in msg and "\n" not in msg


def test_truncated_mutated_and_foreign_files(tmp_path):
    model = all_ops_net()
    p = tmp_path / "cut.tflite"
    for n in (0, 3, 7, 8, 40, 200, len(model) // 3, len(model) // 2, len(model) - 9, len(model) - 1):
        p.write_bytes(model[:n])
        with pytest.raises(ModelFormatError) as e:
            load_tflite(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)
    p.write_bytes(b"\x08\x00\x00\x00ONNX" + bytes(64))
    with pytest.raises(ModelFormatError, match="not a TFLite model"):
        load_tflite(p)
    rng = np.random.default_rng(0)
    accepted = 0
    for _ in range(300):  # random byte mutations: a clean EdgespoolError or a model that loads and runs
        b = bytearray(model)
        for pos in rng.integers(8, len(b), rng.integers(1, 6)):
            b[pos] = int(rng.integers(0, 256))
        p.write_bytes(bytes(b))
        try:
            net = load_tflite(p)
        except EdgespoolError as e:
            assert "\n" not in str(e)
            continue
        accepted += 1
        with np.errstate(all="ignore"):  # mutated weights may overflow: any numbers, but no crash
            net.split(CnnRunner(net.graph).run_layers(np.zeros(net.graph.input_shape, np.float32)).output)
    assert accepted < 300


def test_cli_export_errors_are_one_line(tmp_path):
    p = tmp_path / "bad.tflite"
    p.write_bytes(all_ops_net()[:500])
    r = subprocess.run([sys.executable, "-m", "edgespool", "export", str(p), "--target", "rpi5", "-o",
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(p) in lines[0] and "truncated" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


# -- a fully int8 model (int8 weights per channel, int8 activations, float input/output) -------------------------
def _q8_params(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = (hi - lo) / 255.0
    return s, int(np.clip(round(-128 - lo / s), -128, 127))


def int8_net(ranges: dict[str, tuple[float, float]] | None, seed: int = 3) -> bytes:
    """input float [1,24,24,3] -> QUANTIZE -> CONV 3x3/2 SAME RELU6 -> DEPTHWISE 3x3 RELU -> CONV 1x1 -> ADD
    (residual) -> AVERAGE_POOL 3x3 SAME -> MAX_POOL 2x2/2 -> RESHAPE -> FULLY_CONNECTED -> DEQUANTIZE.
    ``ranges`` None: the same graph in float32 (every tensor named, to measure ranges); else int8 with
    activation parameters from ``ranges`` and per-channel symmetric weights."""
    n = Net(seed)
    q = ranges is not None
    r = n.rng
    w1 = r.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3
    b1 = r.standard_normal(16).astype(np.float32) * 0.1
    wd = r.standard_normal((1, 3, 3, 16)).astype(np.float32) * 0.4
    bd = r.standard_normal(16).astype(np.float32) * 0.1
    w2 = r.standard_normal((16, 1, 1, 16)).astype(np.float32) * 0.3
    b2 = r.standard_normal(16).astype(np.float32) * 0.1
    wf = r.standard_normal((10, 6 * 6 * 16)).astype(np.float32) * 0.05
    bf = r.standard_normal(10).astype(np.float32) * 0.1

    def act(shape, name):
        if not q:
            return n.tensor(shape, name=name)
        s, z = _q8_params(*ranges[name])
        return n.tensor(shape, S.TensorType.INT8, name=name, quant=(s, z))

    def weights(w, qdim, s_in):
        if not q:
            return n.const(w), None
        axes = tuple(i for i in range(w.ndim) if i != qdim)
        ws = np.abs(w).max(axis=axes) / 127.0
        shp = [1] * w.ndim
        shp[qdim] = -1
        wq = np.clip(np.rint(w / ws.reshape(shp)), -127, 127).astype(np.int8)
        return n.tensor(w.shape, S.TensorType.INT8, wq, quant=(ws, np.zeros(ws.size, np.int64), qdim)), ws * s_in

    def bias(b, bs):
        if not q:
            return n.const(b)
        return n.tensor(b.shape, S.TensorType.INT32, np.rint(b / bs).astype(np.int32),
                        quant=(bs, np.zeros(bs.size, np.int64)))

    def s_of(name):
        return _q8_params(*ranges[name])[0] if q else 1.0

    x = n.tensor([1, 24, 24, 3], name="image")
    xq = x
    if q:
        xq = act([1, 24, 24, 3], "image_q")
        n.op(BO.QUANTIZE, [x], None, out=xq)

    def conv(x_, xname, w, b, out_shape, name, stride, actf, depthwise=False):
        wt, bs = weights(w, 3 if depthwise else 0, s_of(xname))
        y = act(out_shape, name)
        if depthwise:
            o = S.DepthwiseConv2DOptionsT()
            o.depthMultiplier = 1
            o.fusedActivationFunction = actf
        else:
            o = S.Conv2DOptionsT()
            o.fusedActivationFunction = actf
        o.padding, o.strideW, o.strideH = S.Padding.SAME, stride, stride
        n.op(BO.DEPTHWISE_CONV_2D if depthwise else BO.CONV_2D, [x_, wt, bias(b, bs)], None,
             OPT.DepthwiseConv2DOptions if depthwise else OPT.Conv2DOptions, o, out=y)
        return y

    xn = "image_q" if q else "image"
    t1 = conv(xq, xn, w1, b1, [1, 12, 12, 16], "c1", 2, S.ActivationFunctionType.RELU6)
    t2 = conv(t1, "c1", wd, bd, [1, 12, 12, 16], "dw", 1, S.ActivationFunctionType.RELU, depthwise=True)
    t3 = conv(t2, "dw", w2, b2, [1, 12, 12, 16], "pw", 1, 0)
    t4 = act([1, 12, 12, 16], "add")
    n.op(BO.ADD, [t1, t3], None, OPT.AddOptions, S.AddOptionsT(), out=t4)
    ap = act([1, 12, 12, 16], "add") if q else act([1, 12, 12, 16], "avg")  # int8 AVERAGE_POOL keeps its scale
    n.tensors[ap].name = "avg"
    o = S.Pool2DOptionsT()
    o.padding, o.strideW, o.strideH, o.filterWidth, o.filterHeight = S.Padding.SAME, 1, 1, 3, 3
    n.op(BO.AVERAGE_POOL_2D, [t4], None, OPT.Pool2DOptions, o, out=ap)
    mp = act([1, 6, 6, 16], "add") if q else act([1, 6, 6, 16], "max")
    n.tensors[mp].name = "max"
    o = S.Pool2DOptionsT()
    o.padding, o.strideW, o.strideH, o.filterWidth, o.filterHeight = S.Padding.VALID, 2, 2, 2, 2
    n.op(BO.MAX_POOL_2D, [ap], None, OPT.Pool2DOptions, o, out=mp)
    rs = act([1, 576], "add") if q else act([1, 576], "flat")
    n.tensors[rs].name = "flat"
    ro = S.ReshapeOptionsT()
    ro.newShape = [1, 576]
    n.op(BO.RESHAPE, [mp, n.const(np.array([1, 576], np.int32))], None, OPT.ReshapeOptions, ro, out=rs)
    wt, bs = weights(wf, 0, s_of("add"))
    fc = act([1, 10], "logits_q" if q else "logits")
    n.op(BO.FULLY_CONNECTED, [rs, wt, bias(bf, bs)], None, OPT.FullyConnectedOptions,
         S.FullyConnectedOptionsT(), out=fc)
    out = fc
    if q:
        out = n.tensor([1, 10], name="logits")
        n.op(BO.DEQUANTIZE, [fc], None, out=out)
    return n.build([x], [out])


def _float_ranges(model: bytes, xs: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    it = litert.Interpreter(model_content=model, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    rng: dict[str, tuple[float, float]] = {}
    for x in xs:
        it.set_tensor(it.get_input_details()[0]["index"], x[None])
        it.invoke()
        for d in it.get_tensor_details():
            v = it.get_tensor(d["index"])
            if v.dtype == np.float32 and v.ndim >= 2 and v.shape[0] == 1:
                lo, hi = float(v.min()), float(v.max())
                old = rng.get(d["name"], (lo, hi))
                rng[d["name"]] = (min(lo, old[0]), max(hi, old[1]))
    rng["image_q"] = rng["image"]
    rng["logits_q"] = rng["logits"]
    return rng


def test_int8_model_uses_its_own_parameters(tmp_path):
    """A fully int8 TFLite model: imported as its dequantised float graph (f32 run within a few output steps of
    the interpreter's int8 run: it skips the activation rounding), and in int8 with the model's own scales / zero
    points (edgespool's float32 requantisation vs TFLite's fixed-point: at most 1 output step apart on 12
    inputs), patch-based = layer-by-layer bit for bit."""
    from edgespool.runtime.cnn.quant import quantize_cnn

    rng = np.random.default_rng(11)
    xs = [rng.uniform(-1, 1, (24, 24, 3)).astype(np.float32) for _ in range(6)]
    model = int8_net(_float_ranges(int8_net(None), xs))
    p = tmp_path / "int8.tflite"
    p.write_bytes(model)
    net = load_tflite(p)
    assert {"image", "c1", "dw", "add", "logits_q"} <= set(net.qparams)
    step = net.qparams[net.graph.output][0]
    q = quantize_cnn(net.graph, net.int8_ranges())
    for name, (s, z) in net.qparams.items():
        assert q.tensors[name][1] == z and abs(q.tensors[name][0] - s) <= 1e-6 * s, name
    r8, rf = CnnRunner(net.graph, q), CnnRunner(net.graph)
    plan = plan_patches(net.graph, itemsize=1, max_overhead=1.0)
    assert plan.is_patched
    worst_f32 = worst_i8 = 0.0
    for _ in range(12):
        x = rng.uniform(-1, 1, (24, 24, 3)).astype(np.float32)
        xc = x.transpose(2, 0, 1)
        ref = reference(model, x)["logits"]
        worst_f32 = max(worst_f32, float(np.abs(net.split(rf.run_layers(xc).output)["logits"] - ref).max()) / step)
        a = r8.run_layers(xc).output
        worst_i8 = max(worst_i8, float(np.abs(net.split(a)["logits"] - ref).max()) / step)
        assert np.array_equal(r8.run_patched(xc, plan).output, a)
    assert worst_i8 <= 1.0001, worst_i8  # the model's own int8 parameters: within one output step of TFLite
    assert worst_f32 <= 25, worst_f32  # the float graph skips TFLite's activation rounding (17.5 steps seen)


def test_int8_export_bundle_keeps_the_model_parameters(tmp_path):
    """export_cnn(quant="int8") of an int8 .tflite quantises with the file's own scales: the bundle's patch-based
    int8 run stays within one output step of LiteRT's int8 output."""
    from edgespool.exporters.cnn.export import export_cnn
    from edgespool.exporters.cnn.from_tflite import bundle_outputs
    from edgespool.runtime.cnn.bundle import CnnBundle

    rng = np.random.default_rng(5)
    xs = [rng.uniform(-1, 1, (24, 24, 3)).astype(np.float32) for _ in range(6)]
    model = int8_net(_float_ranges(int8_net(None), xs))
    p = tmp_path / "int8.tflite"
    p.write_bytes(model)
    out = export_cnn(p, "rpi5", tmp_path / "b", quant="int8", max_overhead=1.0,
                     calibration=[np.ascontiguousarray(x.transpose(2, 0, 1)) for x in xs])
    b = CnnBundle(out)
    assert "own int8 parameters" in b.manifest["cnn"]["calibration"] and b.plan.is_patched
    step = load_tflite(p).qparams[b.graph.output][0]
    for _ in range(4):
        x = rng.uniform(-1, 1, (24, 24, 3)).astype(np.float32)
        got = bundle_outputs(b, b.run(np.ascontiguousarray(x.transpose(2, 0, 1)), patched=True).output)["logits"]
        assert np.abs(got - reference(model, x)["logits"]).max() <= 1.0001 * step


def test_prelu_per_channel_and_scalar(tmp_path, image16):
    """PRELU (written as relu(x) + (-alpha) * relu(-x) in the IR) = LiteRT's, exactly up to float rounding."""
    for alpha in (np.linspace(-0.5, 0.75, 8).astype(np.float32).reshape(1, 1, 8), np.array([0.2], np.float32)):
        n = Net(1)
        x = n.tensor([1, 16, 16, 3], name="image")
        t1, _ = n.conv(x, (16, 16), 3, 8, 3, 1, True)
        y = n.op(BO.PRELU, [t1, n.const(alpha if alpha.size > 1 else alpha.reshape(1, 1, 1))], [1, 16, 16, 8])
        n.tensors[y].name = "out"
        model = n.build([x], [y])
        p = tmp_path / "prelu.tflite"
        p.write_bytes(model)
        net = load_tflite(p)
        got = net.split(CnnRunner(net.graph).run_layers(image16.transpose(2, 0, 1)).output)["out"]
        np.testing.assert_allclose(got, reference(model, image16)["out"], rtol=1e-6, atol=1e-6)
