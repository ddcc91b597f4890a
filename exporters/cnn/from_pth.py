"""PyTorch CNN path without torch: read a ``.pth`` state dict with a restricted unpickler, build MobileNetV2.

``read_state_dict`` understands both torch serialisation formats:

* the zip format (torch >= 1.6): ``<root>/data.pkl`` + ``<root>/data/<key>`` raw storages;
* the legacy format (what torchvision's ``mobilenet_v2-b0353104.pth`` uses): magic, protocol and sys-info pickles,
  the state-dict pickle, the list of storage keys, then each storage as an int64 element count + raw bytes.

Only ``collections.OrderedDict``, ``torch._utils._rebuild_tensor(_v2)`` / ``_rebuild_parameter`` and the torch
storage types are allowed in the pickle; anything else raises ModelFormatError (no arbitrary code runs).

``mobilenet_v2_graph`` defines torchvision's MobileNetV2 (inverted residuals, ReLU6, width multiplier with
``_make_divisible``) directly as a :class:`CnnGraph`, folding every BatchNorm into its conv.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelFormatError, OptionError
from ...runtime.bundle.cnn_graph import CnnGraph, Node

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16, "LongStorage": np.int64,
    "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "BFloat16Storage": np.uint16,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage whose bytes may arrive after the pickle (legacy format)."""

    def __init__(self, stype: _StorageType, numel: int) -> None:
        self.stype = stype
        self.numel = numel
        self.array: np.ndarray | None = None


class _LazyTensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self, where: str) -> np.ndarray:
        arr = self.storage.array
        if arr is None:
            raise ModelFormatError(f"{where}: storage data missing for a tensor")
        n_needed = self.offset + (1 + sum((s - 1) * st for s, st in zip(self.size, self.stride)) if self.size else 1)
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, arr.dtype)
        if n_needed > arr.size:
            raise ModelFormatError(f"{where}: tensor view exceeds its storage ({n_needed} > {arr.size} elements)")
        it = arr.dtype.itemsize
        out = np.lib.stride_tricks.as_strided(arr[self.offset:], shape=self.size,
                                              strides=[s * it for s in self.stride])
        out = np.array(out)  # own, contiguous copy
        if self.storage.stype.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor(storage, storage_offset, size, stride, *args):  # noqa: ANN001 - pickle callback
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):  # noqa: ANN001
    return data


class _Unpickler(pickle.Unpickler):
    """Restricted unpickler: state-dict building blocks only; storages resolved through ``storages``."""

    def __init__(self, f: Any, where: str, load_storage) -> None:  # noqa: ANN001
        super().__init__(f)
        self.where = where
        self.load_storage = load_storage
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise ModelFormatError(f"{self.where}: refusing to unpickle {module}.{name} (only plain state dicts of "
                               "tensors are supported)")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise ModelFormatError(f"{self.where}: unsupported persistent id {pid!r}")
        stype, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(stype, _StorageType):
            raise ModelFormatError(f"{self.where}: unsupported storage type {stype!r}")
        if key not in self.storages:
            st = _Storage(stype, numel)
            self.storages[key] = st
            self.load_storage(key, st)
        st = self.storages[key]
        if len(pid) > 5 and pid[5] is not None:  # legacy view: (view_key, offset, size)
            raise ModelFormatError(f"{self.where}: storage views are not supported")
        return st


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch ``.pth``/``.pt`` state dict (zip or legacy format) into numpy arrays, without torch."""
    p = Path(path)
    if not p.exists():
        raise ModelFormatError(f"{p}: no such file")
    where = str(p)
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
            pkl = [n for n in names if n.endswith("data.pkl")]
            if not pkl:
                raise ModelFormatError(f"{where}: zip without data.pkl; not a torch checkpoint")
            root = pkl[0][: -len("data.pkl")]

            def load(key: str, st: _Storage) -> None:
                name = f"{root}data/{key}"
                if name not in names:
                    raise ModelFormatError(f"{where}: storage {name!r} is missing")
                raw = z.read(name)
                st.array = np.frombuffer(raw, dtype=st.stype.dtype.newbyteorder("<"))[: st.numel]

            up = _Unpickler(io.BytesIO(z.read(pkl[0])), where, load)
            obj = up.load()
    else:
        with open(p, "rb") as f:
            try:
                magic = pickle.load(f)
            except Exception:
                raise ModelFormatError(f"{where}: not a torch checkpoint (neither zip nor legacy pickle)") from None
            if magic != _LEGACY_MAGIC:
                raise ModelFormatError(f"{where}: not a torch checkpoint (bad magic {magic!r})")
            pickle.load(f)  # protocol version
            pickle.load(f)  # sys info
            up = _Unpickler(f, where, lambda key, st: None)
            obj = up.load()
            keys = pickle.load(f)
            for key in keys:
                st = up.storages[str(key)]
                (n,) = struct.unpack("<q", f.read(8))
                nbytes = n * st.stype.dtype.itemsize
                raw = f.read(nbytes)
                if len(raw) != nbytes:
                    raise ModelFormatError(f"{where}: truncated storage {key!r} ({len(raw)} of {nbytes} bytes)")
                st.array = np.frombuffer(raw, dtype=st.stype.dtype)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelFormatError(f"{where}: expected a state dict, found {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if isinstance(v, _LazyTensor):
            out[str(k)] = v.materialize(f"{where}: {k}")
    return out


# -- MobileNetV2 (torchvision's definition) -------------------------------------------------------------------------
def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round channels to a multiple of 8, never down by more than 10%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


MBV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))  # expansion t, channels c, repeats n, first stride s


def mobilenet_v2_layout(width: float = 1.0, num_classes: int = 1000) -> list[tuple[str, tuple[int, ...]]]:
    """(state-dict name, shape) of every parameter/buffer torchvision's MobileNetV2 has (BN: weight, bias,
    running_mean, running_var)."""
    out: list[tuple[str, tuple[int, ...]]] = []

    def conv_bn(prefix: str, bn_prefix: str, cin: int, cout: int, k: int, groups: int) -> None:
        out.append((f"{prefix}.weight", (cout, cin // groups, k, k)))
        for s in ("weight", "bias", "running_mean", "running_var"):
            out.append((f"{bn_prefix}.{s}", (cout,)))

    inp = make_divisible(32 * width)
    last = make_divisible(1280 * max(1.0, width))
    conv_bn("features.0.0", "features.0.1", 3, inp, 3, 1)
    idx = 1
    for t, c, n, s in MBV2_SETTING:
        oup = make_divisible(c * width)
        for i in range(n):
            hidden = int(round(inp * t))
            pre = f"features.{idx}.conv"
            j = 0
            if t != 1:
                conv_bn(f"{pre}.0.0", f"{pre}.0.1", inp, hidden, 1, 1)
                j = 1
            conv_bn(f"{pre}.{j}.0", f"{pre}.{j}.1", hidden, hidden, 3, hidden)
            conv_bn(f"{pre}.{j + 1}", f"{pre}.{j + 2}", hidden, oup, 1, 1)
            inp = oup
            idx += 1
    conv_bn(f"features.{idx}.0", f"features.{idx}.1", inp, last, 1, 1)
    out.append(("classifier.1.weight", (num_classes, last)))
    out.append(("classifier.1.bias", (num_classes,)))
    return out


def _random_state(width: float, num_classes: int, seed: int) -> dict[str, np.ndarray]:
    """He-initialised weights and identity BatchNorm (for architecture-only work: memory figures, MCU size)."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    for name, shape in mobilenet_v2_layout(width, num_classes):
        if name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
            sd[name] = np.ones(shape, np.float32)
        elif len(shape) == 1:
            sd[name] = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            sd[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return sd


def mobilenet_v2_graph(state: dict[str, np.ndarray] | None, *, width: float = 1.0, resolution: int = 224,
                       num_classes: int | None = None, seed: int = 0, name: str | None = None,
                       source: str = "state dict") -> CnnGraph:
    """torchvision's MobileNetV2 as a CnnGraph (BatchNorm folded, eps 1e-5). ``state`` None = random weights."""
    if width <= 0 or resolution < 32:
        raise OptionError(f"MobileNetV2 needs width > 0 and resolution >= 32 (got {width}, {resolution})")
    if state is None:
        state = _random_state(width, num_classes or 1000, seed)
    if num_classes is None:
        num_classes = int(state["classifier.1.weight"].shape[0]) if "classifier.1.weight" in state else 1000
    for key, shape in mobilenet_v2_layout(width, num_classes):
        if key not in state:
            raise ModelFormatError(f"{source}: tensor {key!r} is missing for MobileNetV2 width {width} "
                                   "(wrong --width?)")
        if tuple(state[key].shape) != shape:
            raise ModelFormatError(f"{source}: tensor {key!r} has shape {list(state[key].shape)}, MobileNetV2 width "
                                   f"{width} needs {list(shape)} (wrong --width?)")
    nodes: list[Node] = []
    relu6 = ("clip", 0.0, 6.0)

    def conv(prefix: str, bn: str, src: str, out: str, k: int, stride: int, groups: int, act: Any) -> str:
        w = state[f"{prefix}.weight"].astype(np.float64)
        g, b, m, v = (state[f"{bn}.{s}"].astype(np.float64) for s in ("weight", "bias", "running_mean",
                                                                       "running_var"))
        kk = g / np.sqrt(v + 1e-5)
        p = (k - 1) // 2
        nodes.append(Node(prefix, "conv", [src], out,
                          {"kernel": (k, k), "stride": (stride, stride), "pads": (p, p, p, p), "dilation": (1, 1),
                           "group": groups, "act": act},
                          {"w": (w * kk[:, None, None, None]).astype(np.float32),
                           "b": (b - m * kk).astype(np.float32)}))
        return out

    x = conv("features.0.0", "features.0.1", "input", "features.0", 3, 2, 1, relu6)
    inp = make_divisible(32 * width)
    idx = 1
    for t, c, n, s in MBV2_SETTING:
        oup = make_divisible(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = int(round(inp * t))
            pre = f"features.{idx}.conv"
            h = x
            j = 0
            if t != 1:
                h = conv(f"{pre}.0.0", f"{pre}.0.1", h, f"{pre}.0", 1, 1, 1, relu6)
                j = 1
            h = conv(f"{pre}.{j}.0", f"{pre}.{j}.1", h, f"{pre}.{j}", 3, stride, hidden, relu6)
            res = stride == 1 and inp == oup
            h = conv(f"{pre}.{j + 1}", f"{pre}.{j + 2}", h, f"{pre}.{j + 1}" if res else f"features.{idx}", 1, 1, 1,
                     None)
            if res:
                nodes.append(Node(f"features.{idx}.add", "add", [x, h], f"features.{idx}", {"act": None}))
                h = f"features.{idx}"
            x = h
            inp = oup
            idx += 1
    x = conv(f"features.{idx}.0", f"features.{idx}.1", x, f"features.{idx}", 1, 1, 1, relu6)
    nodes.append(Node("avgpool", "gap", [x], "avgpool"))
    nodes.append(Node("flatten", "reshape", ["avgpool"], "flatten",
                      {"shape": (make_divisible(1280 * max(1.0, width)),)}))
    nodes.append(Node("classifier.1", "gemm", ["flatten"], "logits", {"act": None},
                      {"w": state["classifier.1.weight"].astype(np.float32),
                       "b": state["classifier.1.bias"].astype(np.float32)}))
    return CnnGraph(name or f"mobilenet_v2_w{width:g}_r{resolution}", "input", (3, resolution, resolution), "logits",
                    nodes)


def load_torch_cnn(path: str | os.PathLike, *, arch: str = "mobilenet_v2", width: float = 1.0,
                   resolution: int = 224) -> CnnGraph:
    """Read a ``.pth`` state dict and build the named architecture (only ``mobilenet_v2``) from it."""
    if arch != "mobilenet_v2":
        raise OptionError(f"--arch {arch!r}: only 'mobilenet_v2' is defined for .pth state dicts")
    sd = read_state_dict(path)
    return mobilenet_v2_graph(sd, width=width, resolution=resolution, name=f"{Path(path).stem}_r{resolution}",
                              source=str(path))
