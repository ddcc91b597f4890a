"""Architectures written out as CNN graphs with RANDOM weights, for memory planning only (peak activation memory and
MACs depend on the layer shapes, not on weight values): EfficientNet-Lite0 and a BlazeFace-class 128x128 face
detector, both with TensorFlow-style "same" padding (stride-2 layers pad less on the top/left than on the
bottom/right), the padding TFLite models use.

* ``efficientnet_lite0_graph``: EfficientNet-B0's MBConv stages without squeeze-excite, ReLU6, stem and head not
  scaled (Google's EfficientNet-Lite definition): stem 3x3/2 -> 32, stages (expand, kernel, stride, channels,
  repeats) below, 1x1 head -> 1280, global pool, 1000-way classifier. 224x224: 4.65 M params, ~385 M MACs.
* ``blazeface_graph``: BlazeFace's front model (Bazarevsky et al. 2019, as in mediapipe's
  face_detection_short_range): 5x5/2 conv -> 24 at 64x64, single BlazeBlocks (3x3 depthwise + 1x1, residual add,
  ReLU), stride-2 blocks whose residual is a 2x2 max-pool plus zero channel padding, 88 channels at 16x16 and 96 at
  8x8, 2 + 6 anchors per cell with 1 score + 16 box values each. Differences forced by the IR: channel padding is a
  1x1 conv with an [I; 0] weight (same values and memory, a few extra MACs), and the IR's single output joins the
  16x16 head (2x2 max-pooled to 8x8) and the 8x8 head with a channel concat (an artefact, tiny).
"""
from __future__ import annotations

import numpy as np

from ...runtime.bundle.cnn_graph import CnnGraph, Node

LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
RELU6 = ("clip", 0.0, 6.0)
RELU = ("clip", 0.0, float("inf"))


def same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding along one axis: (before, after), the extra pixel after."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class _Net:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Node] = []
        self.hw: dict[str, tuple[int, int, int]] = {}

    def conv(self, name: str, x: str, cout: int, k: int, s: int, groups: int = 1, act=RELU6,
             w: np.ndarray | None = None) -> str:
        c, h, wd = self.hw[x]
        ph, pw = same_pads(h, k, s), same_pads(wd, k, s)
        if w is None:
            w = (self.rng.standard_normal((cout, c // groups, k, k)) * (2.0 / (k * k * c / groups)) ** 0.5)
        self.nodes.append(Node(name, "conv", [x], name, {"kernel": (k, k), "stride": (s, s),
                                                         "pads": (ph[0], pw[0], ph[1], pw[1]), "dilation": (1, 1),
                                                         "group": groups, "act": act},
                               {"w": w.astype(np.float32), "b": np.zeros(cout, np.float32)}))
        self.hw[name] = (cout, -(-h // s), -(-wd // s))
        return name

    def add(self, name: str, a: str, b: str, act=None) -> str:
        self.nodes.append(Node(name, "add", [a, b], name, {"act": act}))
        self.hw[name] = self.hw[a]
        return name


def efficientnet_lite0_graph(resolution: int = 224, num_classes: int = 1000, seed: int = 0) -> CnnGraph:
    """EfficientNet-Lite0 (random weights; see module docstring)."""
    n = _Net(seed)
    n.hw["input"] = (3, resolution, resolution)
    x = n.conv("stem", "input", 32, 3, 2)
    cin = 32
    for si, (e, k, s, c, reps) in enumerate(LITE0_STAGES):
        for r in range(reps):
            stride = s if r == 0 else 1
            p = f"blocks.{si}.{r}"
            h = n.conv(f"{p}.expand", x, cin * e, 1, 1) if e != 1 else x
            h = n.conv(f"{p}.dw", h, cin * e, k, stride, groups=cin * e)
            h = n.conv(f"{p}.project", h, c, 1, 1, act=None)
            x = n.add(f"{p}.add", x, h) if stride == 1 and cin == c else h
            cin = c
    x = n.conv("head", x, 1280, 1, 1)
    n.nodes.append(Node("pool", "gap", [x], "pool"))
    n.nodes.append(Node("flatten", "reshape", ["pool"], "flatten", {"shape": (1280,)}))
    n.nodes.append(Node("classifier", "gemm", ["flatten"], "logits", {"act": None},
                        {"w": (n.rng.standard_normal((num_classes, 1280)) * 0.01).astype(np.float32),
                         "b": np.zeros(num_classes, np.float32)}))
    return CnnGraph(f"efficientnet_lite0_r{resolution}_random", "input", (3, resolution, resolution), "logits",
                    n.nodes)


BLAZE_BLOCKS = ((24, 1), (28, 1), (32, 2), (36, 1), (42, 1), (48, 2), (56, 1), (64, 1), (72, 1), (80, 1), (88, 1),
                (96, 2), (96, 1), (96, 1), (96, 1), (96, 1))


def blazeface_graph(seed: int = 0) -> CnnGraph:
    """BlazeFace-class 128x128 face detector (random weights; see module docstring)."""
    n = _Net(seed)
    n.hw["input"] = (3, 128, 128)
    x = n.conv("stem", "input", 24, 5, 2, act=RELU)
    cin = 24
    head16 = ""
    for i, (c, s) in enumerate(BLAZE_BLOCKS):
        p = f"block{i}"
        r = x  # the residual path first, so the pointwise conv directly precedes the add (fusable)
        if s == 2:
            ci, hh, ww = n.hw[x]
            n.nodes.append(Node(f"{p}.pool", "maxpool", [x], f"{p}.pool",
                                {"kernel": (2, 2), "stride": (2, 2), "pads": (0, 0, 0, 0), "dilation": (1, 1)}))
            n.hw[f"{p}.pool"] = (ci, hh // 2, ww // 2)
            r = f"{p}.pool"
        if c != cin:  # zero channel padding of the residual, as a 1x1 conv with an [I; 0] weight
            eye = np.zeros((c, cin, 1, 1))
            eye[np.arange(cin), np.arange(cin)] = 1.0
            r = n.conv(f"{p}.chpad", r, c, 1, 1, act=None, w=eye)
        h = n.conv(f"{p}.dw", x, cin, 3, s, groups=cin, act=None)
        h = n.conv(f"{p}.pw", h, c, 1, 1, act=None)
        x = n.add(f"{p}.add", h, r, act=RELU)
        cin = c
        if n.hw[x][1] == 16 and BLAZE_BLOCKS[i + 1][1] == 2:
            head16 = x
    c16 = n.conv("head16", head16, 2 * 17, 1, 1, act=None)
    n.nodes.append(Node("head16.pool", "maxpool", [c16], "head16.pool",
                        {"kernel": (2, 2), "stride": (2, 2), "pads": (0, 0, 0, 0), "dilation": (1, 1)}))
    c8 = n.conv("head8", x, 6 * 17, 1, 1, act=None)
    n.nodes.append(Node("heads", "concat", ["head16.pool", c8], "heads"))
    # the 16x16 head's input stays alive across the 8x8 blocks (as in the real model, which outputs both heads)
    order = [nd for nd in n.nodes if nd.name not in ("head16", "head16.pool", "head8", "heads")]
    tail = [nd for nd in n.nodes if nd.name in ("head16", "head16.pool", "head8", "heads")]
    return CnnGraph("blazeface_128_random", "input", (3, 128, 128), "heads", order + tail)
