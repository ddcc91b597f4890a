"""BundleWriter: a state machine that writes a bundle directory and refuses out-of-order calls.

Order: ``BundleWriter(out_dir, ...)`` -> ``add_tensor`` for every tensor in the config's layout order
(:func:`expected_tensors`; ``ffn_layout="bundled"`` stores dense FFNs as row-column neuron bundles, see
:mod:`edgespool.runtime.bundle.ffn_geometry`) ->
``set_tokenizer`` -> ``add_file`` (optional extras, e.g. ONNX) -> ``finish`` (writes manifest.json last and moves the
finished directory into place). Nothing is written into ``out_dir`` until ``finish``; an existing directory is only
replaced when it is itself a bundle and ``overwrite`` is set, so nothing a user owns is lost.
"""
from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import BundleError, OptionError
from ..kernels.quant import QTensor
from ..runtime.bundle.constants import (
    ALIGNMENT, MAGIC, MANIFEST, NEURON_BUNDLES_SCHEMA_VERSION, PART_ALIGNMENT, SCHEMA_VERSION, TOKENIZER, WEIGHTS,
    align_up,
)
from ..runtime.bundle.config import ModelConfig
from ..runtime.bundle.names import group_of, layer_of
from ..runtime.bundle.ffn_geometry import LAYOUT as BUNDLED, BundleGeometry, NeuronBundles, ffn_group, ffn_tensor

FFN_LAYOUTS = ("matrix", "bundled")  # --ffn-layout: dense FFNs as three matrices, or row-column neuron bundles


def expected_tensors(config: ModelConfig, ffn_layout: str = "matrix") -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor a bundle of ``config`` holds, in layout order: the config's canonical tensors,
    with each dense layer's ``ffn.gate/up/down`` replaced by ``ffn.bundles`` ``[I, H]`` when ``ffn_layout`` is
    ``bundled``."""
    out = []
    for name, shape in config.tensor_shapes().items():
        if ffn_layout == "bundled" and ".ffn." in name:
            if name.endswith(".ffn.gate"):
                out.append((ffn_tensor(int(name.split(".")[1])), shape))
            continue
        out.append((name, shape))
    return out


def _parts(t: QTensor) -> list[tuple[str, np.ndarray]]:
    out = [("data", np.ascontiguousarray(t.data))]
    if t.scale is not None:
        out.append(("scale", np.ascontiguousarray(t.scale)))
    return out


def prepare_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to clobber anything that is not a bundle; refuse an existing bundle unless ``overwrite``."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OptionError(f"output {out_dir} exists and is not a directory; choose another -o")
        if any(out_dir.iterdir()):
            if not (out_dir / MANIFEST).exists():
                raise OptionError(f"output {out_dir} is a non-empty directory that is not a bundle; refusing to "
                                  "overwrite it (choose another -o)")
            if not overwrite:
                raise OptionError(f"output {out_dir} already holds a bundle; pass --force to replace it")


class BundleWriter:
    """Writes tensors in layout order into a staging directory, then publishes it atomically on :meth:`finish`."""

    def __init__(self, out_dir: str | os.PathLike, config: ModelConfig, *, overwrite: bool = False,
                 meta: dict[str, Any] | None = None, ffn_layout: str = "matrix") -> None:
        if ffn_layout not in FFN_LAYOUTS:
            raise OptionError(f"FFN layout {ffn_layout!r} is unknown; valid: {', '.join(FFN_LAYOUTS)}")
        self.out_dir = Path(out_dir)
        prepare_output_dir(self.out_dir, overwrite)
        self.ffn_layout = ffn_layout
        self.config = config
        self.meta = dict(meta or {})
        self.stage = self.out_dir.parent / f".{self.out_dir.name}.partial-{os.getpid()}"
        if self.stage.exists():
            shutil.rmtree(self.stage)
        self.stage.mkdir(parents=True)
        self._expected = expected_tensors(config, ffn_layout)
        self._next = 0
        self._f = open(self.stage / WEIGHTS, "wb")
        self._pos = 0
        self.tensors: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self._tokenizer: dict[str, Any] | None = None
        self._extras: dict[str, Any] = {}
        self._state = "tensors"

    # -- tensors ----------------------------------------------------------------------------------------------
    def expected_names(self) -> list[str]:
        """All tensor names still to be written, in order."""
        return [n for n, _ in self._expected[self._next:]]

    def add_tensor(self, name: str, t: QTensor | NeuronBundles) -> None:
        """Append tensor ``name``; it must be the next one in layout order and have the config's shape (with
        ``ffn_layout="bundled"`` each dense layer's FFN is one :class:`NeuronBundles` ``layers.{i}.ffn.bundles``
        in place of ``ffn.gate/up/down``)."""
        if self._state != "tensors":
            raise BundleError(f"add_tensor({name!r}) after the tensor table was closed")
        if self._next >= len(self._expected):
            raise BundleError(f"add_tensor({name!r}): the model has no more tensors")
        want, shape = self._expected[self._next]
        if name != want:
            raise BundleError(f"add_tensor: expected tensor {want!r} next, got {name!r}")
        if tuple(t.shape) != tuple(shape):
            raise BundleError(f"tensor {name!r}: shape {tuple(t.shape)} does not match the config's {tuple(shape)}")
        self._next += 1
        start = align_up(self._pos, ALIGNMENT)
        self._pad_to(start)
        crc = 0
        parts: dict[str, Any] = {}
        for pname, arr in _parts(t):
            rel = align_up(self._pos - start, PART_ALIGNMENT)
            self._pad_to(start + rel)
            buf = arr.tobytes()
            self._f.write(buf)
            self._pos += len(buf)
            crc = zlib.crc32(buf, crc)
            parts[pname] = {"offset": rel, "nbytes": len(buf), "dtype": arr.dtype.name, "shape": list(arr.shape)}
        bundled = isinstance(t, NeuronBundles)
        if bundled != name.endswith(".ffn.bundles"):
            raise BundleError(f"tensor {name!r}: {'neuron bundles' if bundled else 'a matrix'} given, expected "
                              f"{'a matrix' if bundled else 'neuron bundles'}")
        g = ffn_group(int(name.split(".")[1])) if bundled else group_of(name)
        rec = {"group": g, "scheme": t.scheme, "shape": list(t.shape), "offset": start,
               "nbytes": self._pos - start, "crc32": crc, "parts": parts}
        if bundled:
            rec["layout"] = BUNDLED
            rec["bundle"] = t.geometry.to_dict()
        if t.scheme == "int4":
            rec["group_size"] = t.group_size
        self.tensors[name] = rec
        grp = self.groups.get(g)
        if grp is None:
            self.groups[g] = {"name": g, "offset": start, "nbytes": self._pos - start, "tensors": [name]}
        else:
            if list(self.groups)[-1] != g:
                raise BundleError(f"tensor {name!r}: group {g!r} would not be contiguous in the weights file")
            grp["nbytes"] = self._pos - grp["offset"]
            grp["tensors"].append(name)

    def _pad_to(self, pos: int) -> None:
        if pos > self._pos:
            self._f.write(b"\0" * (pos - self._pos))
            self._pos = pos

    # -- other files ------------------------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer_json: str, *, bos_token_id: int | None, eos_token_ids: list[int],
                      add_bos: bool) -> None:
        """Store the tokenizer (HF `tokenizers` JSON text) and its special-token settings."""
        self._close_tensors()
        (self.stage / TOKENIZER).write_text(tokenizer_json, encoding="utf-8")
        self._tokenizer = {"file": TOKENIZER, "bos_token_id": bos_token_id, "eos_token_ids": list(eos_token_ids),
                           "add_bos": bool(add_bos)}

    def stage_path(self, rel: str) -> Path:
        """Path inside the staging directory where an extra file (ONNX, kernels) may be written."""
        if self._state == "done":
            raise BundleError("stage_path() after finish()")
        p = self.stage / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def read_back(self, name: str) -> QTensor | NeuronBundles:
        """Read a written tensor back from the staged weights file (for lowerings that run after the weights,
        e.g. ONNX). Only valid once every tensor has been added."""
        self._close_tensors()
        rec = self.tensors[name]
        if not hasattr(self, "_mm"):
            self._mm = np.memmap(self.stage / WEIGHTS, dtype=np.uint8, mode="r")
        base = int(rec["offset"])
        raw = self._mm[base: base + int(rec["nbytes"])]
        arrays = {p: np.asarray(raw[int(m["offset"]): int(m["offset"]) + int(m["nbytes"])]).view(m["dtype"])
                  .reshape(m["shape"]) for p, m in rec["parts"].items()}
        if rec.get("layout") == BUNDLED:
            return NeuronBundles(BundleGeometry.from_record(name, rec), arrays["data"])
        return QTensor(rec["scheme"], tuple(rec["shape"]), arrays["data"], arrays.get("scale"),
                       int(rec.get("group_size", 0)))

    def add_section(self, key: str, value: Any) -> None:
        """Add a manifest section (e.g. ``onnx``, ``kernels``, ``report``)."""
        if key in ("magic", "schema_version", "tensors", "groups", "model", "tokenizer", "weights"):
            raise BundleError(f"manifest section {key!r} is reserved")
        self._extras[key] = value

    def _close_tensors(self) -> None:
        if self._state != "tensors":
            return
        if self._next != len(self._expected):
            raise BundleError(f"bundle is missing tensors, next expected {self._expected[self._next][0]!r}")
        end = align_up(self._pos, ALIGNMENT)
        self._pad_to(end)
        self._f.close()
        self._state = "files"

    def finish(self) -> Path:
        """Write manifest.json and publish the bundle at ``out_dir``; returns its path."""
        self._close_tensors()
        if self._tokenizer is None:
            raise BundleError("finish() before set_tokenizer(): a bundle needs its tokenizer")
        bundled = any(r.get("layout") == BUNDLED for r in self.tensors.values())
        manifest = {
            "magic": MAGIC,
            # version 1 readers would read neuron bundles as a matrix: only bundles that hold them say 2
            "schema_version": NEURON_BUNDLES_SCHEMA_VERSION if bundled else SCHEMA_VERSION,
            "created_by": f"edgespool {__version__}",
            "kind": "decoder",
            "model": self.config.to_dict(),
            **self.meta,
            "weights": {"file": WEIGHTS, "nbytes": self._pos, "alignment": ALIGNMENT},
            **({"ffn_layout": "bundled"} if bundled else {}),
            "tokenizer": self._tokenizer,
            "groups": list(self.groups.values()),
            "tensors": self.tensors,
            **self._extras,
        }
        (self.stage / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        if hasattr(self, "_mm"):
            del self._mm
        if self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        os.replace(self.stage, self.out_dir)
        self._state = "done"
        return self.out_dir

    def abort(self) -> None:
        """Remove the staging directory (used when an export fails half-way)."""
        try:
            self._f.close()
        except Exception:
            pass
        shutil.rmtree(self.stage, ignore_errors=True)
        self._state = "done"
