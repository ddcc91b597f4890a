"""Bundle: open, validate and read a bundle directory (the read side of :mod:`edgespool.exporters.bundle_writer`).

Validation on open: the manifest parses, has the magic and a known schema version, the weights file exists and is
long enough for every tensor. Tensor payloads are checked against their CRC32 when read (``verify=True``).
Every error names the bundle file and, where there is one, the tensor. A malformed or corrupt bundle (including a
CRC mismatch) is a :class:`BundleError`; a failed read of the weights file (I/O error, short read, removed file)
is a :class:`StorageError` from the one checked-read primitive, :mod:`.checked_read`.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...errors import BundleError
from .checked_read import CheckedFile
from .constants import MAGIC, MANIFEST, MAX_MANIFEST_BYTES, MAX_SCHEMA_VERSION, PART_DTYPES
from .manifest_schema import CHECKSUM_KEY, check_file_digest, finite_json, manifest_digest, validate_manifest
from .config import ModelConfig
from .ffn_geometry import LAYOUT as NEURON_BUNDLES, LAYOUTS, MATRIX, BundleGeometry, NeuronBundles
from .schemes import QTensor


@dataclass(frozen=True)
class GroupInfo:
    """One contiguous streaming group in the weights file."""

    name: str
    offset: int
    nbytes: int
    tensors: tuple[str, ...]


class Bundle:
    """A validated bundle directory. Cheap to open: reads only manifest.json and stats the weights file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not self.path.exists():
            raise BundleError(f"{self.path}: no such bundle directory")
        if not mpath.exists():
            raise BundleError(f"{self.path}: not a bundle (no {MANIFEST}); create one with `edgespool export`")
        if not mpath.is_file():
            raise BundleError(f"{mpath}: not a regular file; not an edgespool bundle")
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath}: {mpath.stat().st_size} bytes, more than any manifest "
                              f"({MAX_MANIFEST_BYTES}); not an edgespool bundle")
        try:
            text = mpath.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise BundleError(f"{mpath}: manifest is not valid JSON ({e})") from None
        m = finite_json(text, str(mpath))
        if not isinstance(m, dict) or m.get("magic") != MAGIC:
            raise BundleError(f"{mpath}: wrong magic (expected {MAGIC!r}); not an edgespool bundle")
        ver = m.get("schema_version")
        if not isinstance(ver, int) or ver > MAX_SCHEMA_VERSION or ver < 1:
            raise BundleError(f"{mpath}: bundle schema version {ver!r} is not supported (this edgespool reads "
                              f"versions 1..{MAX_SCHEMA_VERSION}); upgrade edgespool or re-export the bundle")
        self.manifest: dict[str, Any] = m
        self.kind: str = m.get("kind", "decoder")
        if self.kind == "decoder" and not isinstance(m.get("model"), dict):
            raise BundleError(f"{mpath}: field model: is missing or not an object; re-export the bundle")
        self.config: ModelConfig | None = (
            ModelConfig.from_dict(m["model"], str(mpath)) if self.kind == "decoder" else None
        )
        validate_manifest(m, self.path, self.config, str(mpath))
        try:
            self.tensors: dict[str, dict[str, Any]] = m["tensors"]
            self.groups: dict[str, GroupInfo] = {
                g["name"]: GroupInfo(g["name"], int(g["offset"]), int(g["nbytes"]), tuple(g["tensors"]))
                for g in m["groups"]
            }
            self.weights_path = self.path / m["weights"]["file"]
        except (KeyError, TypeError) as e:
            raise BundleError(f"{mpath}: manifest is missing field {e}") from None
        self._check_weights_file()

    # -- validation ------------------------------------------------------------------------------------------
    def _check_weights_file(self) -> None:
        if not self.weights_path.exists():
            raise BundleError(f"{self.weights_path}: weights file is missing")
        size = self.weights_path.stat().st_size
        for name, rec in self.tensors.items():
            end = int(rec["offset"]) + int(rec["nbytes"])
            if end > size:
                raise BundleError(f"{self.weights_path}: truncated ({size} bytes) — tensor {name!r} needs bytes "
                                  f"up to {end}; re-export the bundle")
            layout = rec.get("layout", MATRIX)
            if layout not in LAYOUTS:
                raise BundleError(f"{self.path / MANIFEST}: tensor {name!r} has unknown layout {layout!r} (this "
                                  f"edgespool reads {', '.join(LAYOUTS)}); upgrade edgespool or re-export the bundle")
            if layout == NEURON_BUNDLES:
                BundleGeometry.from_record(name, rec, str(self.path / MANIFEST))
            for pname, p in rec["parts"].items():
                if p["dtype"] not in PART_DTYPES:
                    raise BundleError(f"{self.path / MANIFEST}: tensor {name!r} part {pname!r} has unknown dtype "
                                      f"{p['dtype']!r}")

    # -- reading ---------------------------------------------------------------------------------------------
    def tensor_from_buffer(self, name: str, buf: memoryview | bytes | np.ndarray, base: int,
                           verify: bool = True) -> QTensor | NeuronBundles:
        """Build the QTensor ``name`` from a buffer holding weights-file bytes starting at file offset ``base``
        (a :class:`NeuronBundles` for a ``neuron_bundles`` tensor). The arrays are views into ``buf`` (no copy)."""
        rec = self.tensors[name]
        off = int(rec["offset"]) - base
        mv = memoryview(buf).cast("B") if not isinstance(buf, np.ndarray) else memoryview(buf.view(np.uint8))
        raw = mv[off: off + int(rec["nbytes"])]
        if len(raw) != int(rec["nbytes"]):
            raise BundleError(f"{self.weights_path}: short read for tensor {name!r}")
        arrays: dict[str, np.ndarray] = {}
        crc = 0
        for pname, p in rec["parts"].items():
            seg = raw[int(p["offset"]): int(p["offset"]) + int(p["nbytes"])]
            if verify:
                crc = zlib.crc32(seg, crc)
            arrays[pname] = np.frombuffer(seg, dtype=np.dtype(p["dtype"])).reshape(p["shape"])
        if verify and crc != int(rec["crc32"]):
            raise BundleError(f"{self.weights_path}: checksum mismatch in tensor {name!r} (file corrupt or modified; "
                              "re-export the bundle)")
        if rec.get("layout") == NEURON_BUNDLES:
            return NeuronBundles(BundleGeometry.from_record(name, rec), arrays["data"])
        return QTensor(rec["scheme"], tuple(rec["shape"]), arrays["data"], arrays.get("scale"),
                       int(rec.get("group_size", 0)))

    @property
    def ffn_layout(self) -> str:
        """``bundled`` when the dense FFNs are stored as neuron bundles, else ``matrix``."""
        return "bundled" if any(r.get("layout") == NEURON_BUNDLES for r in self.tensors.values()) else "matrix"

    def read_group(self, group: str, verify: bool = True) -> dict[str, QTensor | NeuronBundles]:
        """Read one streaming group with one checked read (buffered, pages dropped after it; StorageError when the
        read fails); returns its tensors (views into one buffer; BundleError on a CRC mismatch when ``verify``)."""
        g = self.groups[group]
        buf = np.empty(g.nbytes, dtype=np.uint8)
        with CheckedFile(self.weights_path, direct=False) as f:
            f.read_into(g.offset, buf, f"group {group!r}", group=group, base=g.offset, check=False)
        return {name: self.tensor_from_buffer(name, buf, g.offset, verify) for name in g.tensors}

    def iter_groups(self) -> Iterator[str]:
        return iter(self.groups)

    @property
    def manifest_checksummed(self) -> bool:
        """Whether the manifest carries its own checksum (bundles exported before it existed do not)."""
        return CHECKSUM_KEY in self.manifest

    def verify_manifest(self) -> bool:
        """Check the manifest against its ``manifest_sha256`` (BundleError on a mismatch: the manifest was edited
        or corrupted after export). Returns False for an older bundle without a checksum (nothing to check)."""
        want = self.manifest.get(CHECKSUM_KEY)
        if want is None:
            return False
        if manifest_digest(self.manifest) != want:
            raise BundleError(f"{self.path / MANIFEST}: manifest checksum mismatch (the manifest was edited or "
                              "corrupted after export); re-export the bundle")
        return True

    def verify(self) -> None:
        """Check the manifest's checksum (when it has one) and every tensor's CRC32 (reads the whole weights
        file once)."""
        self.verify_manifest()
        tok = self.manifest.get("tokenizer") or {}
        if tok.get("file"):
            check_file_digest(self.path / tok["file"], tok.get("sha256"), "tokenizer.sha256")
        if tok.get("chat_template"):
            check_file_digest(self.path / tok["chat_template"], tok.get("chat_template_sha256"),
                              "tokenizer.chat_template_sha256")
        for g in self.groups:
            self.read_group(g, verify=True)

    @property
    def weights_nbytes(self) -> int:
        return int(self.manifest["weights"]["nbytes"])
